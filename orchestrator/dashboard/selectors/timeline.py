"""The event log with filters, and the lock history of one resource (the Gantt chart)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet

from orchestrator.core.errors import Invalid, NotFound
from orchestrator.core.events import last_event_id
from orchestrator.core.models import Agent, Event, Lock, Resource, Team
from orchestrator.core.queue import lookup_filter, resource_lookup
from orchestrator.core.tenancy import qualify

EVENTS_LIMIT = 200
GANTT_LOCKS_LIMIT = 500


def events_filtered(
    *,
    kind: str = "",
    team: Team | None = None,
    agent: Agent | None = None,
    actor: str = "",
    limit: int = EVENTS_LIMIT,
) -> list[Event]:
    """The newest ``limit`` matching events, newest first, up to the
    :func:`~orchestrator.core.events.last_event_id`: no event will later commit
    below the newest one shown, so the page's live feed can go on from it.

    ``kind`` matches a prefix ("lock." is every lock event); ``actor`` a substring.
    """
    queryset: QuerySet[Event] = Event.objects.filter(id__lte=last_event_id())
    if kind:
        queryset = queryset.filter(kind__startswith=kind)
    if team is not None:
        queryset = queryset.filter(team=team)
    if agent is not None:
        queryset = queryset.filter(agent=agent)
    if actor:
        queryset = queryset.filter(actor__icontains=actor)
    return list(queryset.select_related("team").order_by("-id")[:limit])


@dataclass
class Bar:
    lock: Lock
    start: datetime
    end: datetime
    live: bool


@dataclass
class Gantt:
    resource: Resource
    start: datetime
    end: datetime
    rows: list[tuple[str, list[Bar]]]  # (agent name, its holds), in order of first hold


FIT_LOOKBACK = timedelta(days=1)
FIT_MINIMUM = timedelta(seconds=10)


def lock_history(*, resource: Resource, now: datetime, window: timedelta | None) -> Gantt:
    """Who held ``resource`` when, over the ``window`` before ``now``.

    ``window`` None fits the chart to the holds of the last day (a little margin
    before the first one). A live lock's bar runs to ``now`` (or to its lease's
    end if that came first).
    """
    if window is None:
        first = (
            Lock.objects.filter(resource=resource, acquired_at__gte=now - FIT_LOOKBACK)
            .order_by("acquired_at")
            .values_list("acquired_at", flat=True)
            .first()
        )
        span = max(FIT_MINIMUM, now - first) if first else FIT_MINIMUM * 60
        window = span * 1.05
    start = now - window
    locks = (
        Lock.objects.filter(resource=resource, acquired_at__lt=now)
        .exclude(released_at__lt=start)
        .select_related("agent")
        .order_by("acquired_at", "pk")[:GANTT_LOCKS_LIMIT]
    )
    rows: dict[str, list[Bar]] = {}
    for lock in locks:
        live = lock.released_at is None
        end = min(now, lock.expires_at) if live else lock.released_at
        bar = Bar(lock=lock, start=max(lock.acquired_at, start), end=max(end, start), live=live)
        rows.setdefault(lock.agent.name, []).append(bar)
    return Gantt(resource=resource, start=start, end=now, rows=list(rows.items()))


def resource_names(*, limit: int = 2000) -> list[str]:
    """Resource names for the Gantt chart's picker, as ``team::name`` (names are
    unique within a team only)."""
    rows = Resource.objects.order_by("team__name", "name").values_list("team__name", "name")
    return [qualify(team, name) for team, name in rows[:limit]]


def resource_by_name(*, name: str) -> Resource | None:
    """The resource ``team::name`` names, or a plain name that only one team has (the
    core's lookup without an agent)."""
    try:
        lookup = resource_lookup(name)
    except (NotFound, Invalid):  # no such name, or several teams have it
        return None
    return Resource.objects.filter(lookup_filter(lookup)).first()
