"""The event log with filters, and the lock history of one resource (the Gantt chart),
with the folders above a path or the paths under a folder (core/paths.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q, QuerySet

from orchestrator.core import paths
from orchestrator.core.errors import Invalid, NotFound
from orchestrator.core.events import last_event_id
from orchestrator.core.models import Agent, Event, Lock, LockRequest, Resource, Team
from orchestrator.core.queue import lookup_filter, resource_lookup, storable_text
from orchestrator.core.tenancy import qualify, split_name

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
class Wait:
    """A lock request on the chart's resource, from its asking to its end (granted,
    cancelled, aborted) or to now while it waits."""

    request: LockRequest
    start: datetime
    end: datetime
    live: bool


@dataclass
class Row:
    agent: str
    bars: list[Bar] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)


# How a section's resource relates to the chart's (core/paths.py).
SELF = "self"  # the resource picked
ABOVE = "above"  # a folder above it: its locks cover the resource
UNDER = "under"  # a path under the folder picked: its locks and the folder's exclude each other


@dataclass
class Section:
    """The holds of one resource: the one picked, a folder above it or a path under it."""

    name: str
    relation: str
    rows: list[Row]


@dataclass
class Subject:
    """What the chart is of: a resource, or a folder that is no resource itself but is
    implied by the paths under it (``resource`` None)."""

    team_id: int
    name: str
    resource: Resource | None = None

    @property
    def is_path(self) -> bool:
        return paths.is_path(self.name)


@dataclass
class Gantt:
    subject: Subject
    start: datetime
    end: datetime
    sections: list[Section]  # the subject's first, then the folders above, the paths under

    @property
    def rows(self) -> list[Row]:
        """The rows of the subject's own section (agents in order of first hold or wait)."""
        return self.sections[0].rows


FIT_LOOKBACK = timedelta(days=1)
FIT_MINIMUM = timedelta(seconds=10)


def _related(subject: Subject) -> QuerySet[Resource]:
    """The subject's resource and, for a path, the folders above it and, for a folder,
    the paths under it (one subquery, served by the team's name prefix index)."""
    related = Q(pk=subject.resource.pk) if subject.resource is not None else Q(pk__in=[])
    if subject.is_path:
        related |= paths.related_filter(subject.team_id, subject.name)
    return Resource.objects.filter(related)


def lock_history(*, subject: Subject, now: datetime, window: timedelta | None) -> Gantt:
    """Who held ``subject`` when, over the ``window`` before ``now``, and who waited for it.

    For a path, the holds of the folders above it come too (a folder's lock covers it,
    so they explain a wait), and for a folder the holds of the paths under it: each
    resource in a section of its own. ``window`` None fits the chart to the holds of the
    last day (a little margin before the first one). A live lock's bar runs to ``now``
    (or to its lease's end if that came first). At most ``GANTT_LOCKS_LIMIT`` holds and
    as many waits, the oldest first; three queries whatever the number of paths.
    """
    related = _related(subject)
    if window is None:
        first = (
            Lock.objects.filter(resource__in=related, acquired_at__gte=now - FIT_LOOKBACK)
            .order_by("acquired_at")
            .values_list("acquired_at", flat=True)
            .first()
        )
        span = max(FIT_MINIMUM, now - first) if first else FIT_MINIMUM * 60
        window = span * 1.05
    start = now - window
    locks = (
        Lock.objects.filter(resource__in=related, acquired_at__lt=now)
        .exclude(released_at__lt=start)
        .select_related("agent", "resource")
        .order_by("acquired_at", "pk")[:GANTT_LOCKS_LIMIT]
    )
    sections: dict[str, dict[str, Row]] = {subject.name: {}}
    for lock in locks:
        live = lock.released_at is None
        end = min(now, lock.expires_at) if live else lock.released_at
        bar = Bar(lock=lock, start=max(lock.acquired_at, start), end=max(end, start), live=live)
        rows = sections.setdefault(lock.resource.name, {})
        rows.setdefault(lock.agent.name, Row(lock.agent.name)).bars.append(bar)
    if subject.resource is not None:
        own = sections[subject.name]
        for wait in _waits(subject.resource, start=start, now=now):
            own.setdefault(wait.request.agent.name, Row(wait.request.agent.name)).waits.append(wait)
        # Agents in order of their first hold or wait.
        sections[subject.name] = dict(sorted(own.items(), key=lambda item: _first(item[1])))
    return Gantt(subject=subject, start=start, end=now, sections=_ordered(subject, sections))


def _waits(resource: Resource, *, start: datetime, now: datetime) -> list[Wait]:
    requests = (
        LockRequest.objects.filter(resource=resource, requested_at__lt=now)
        .exclude(resolved_at__lt=start)
        .select_related("agent")
        .order_by("requested_at", "pk")[:GANTT_LOCKS_LIMIT]
    )
    return [
        Wait(
            request=request,
            start=max(request.requested_at, start),
            end=max(request.resolved_at or now, start),
            live=request.resolved_at is None,
        )
        for request in requests
    ]


def _first(row: Row) -> datetime:
    return min(item.start for item in [*row.bars, *row.waits])


def _ordered(subject: Subject, sections: dict[str, dict[str, Row]]) -> list[Section]:
    """The subject's section, then the folders above it outermost first, then the paths
    under it by name."""
    above = paths.folders_above(subject.name)
    result = [Section(subject.name, SELF, list(sections.pop(subject.name).values()))]
    for name in above:
        if name in sections:
            result.append(Section(name, ABOVE, list(sections.pop(name).values())))
    for name in sorted(sections):
        result.append(Section(name, UNDER, list(sections[name].values())))
    return result


def resource_names(*, limit: int = 2000) -> list[str]:
    """Resource names for the Gantt chart's picker, as ``team::name`` (names are
    unique within a team only), with the folders that the paths imply (``team::src/``
    when only ``src/a.py`` is a resource): a folder's chart shows the paths under it."""
    rows = Resource.objects.order_by("team__name", "name").values_list("team__name", "name")
    names: dict[str, None] = {}
    for team, name in rows[:limit]:
        for folder in paths.folders_above(name):
            names.setdefault(qualify(team, folder))
        names[qualify(team, name)] = None
    return sorted(names)[:limit]


def resource_by_name(*, name: str) -> Resource | None:
    """The resource ``team::name`` names, or a plain name that only one team has (the
    core's lookup without an agent)."""
    try:
        lookup = resource_lookup(name)
    except (NotFound, Invalid):  # no such name, or several teams have it
        return None
    return Resource.objects.filter(lookup_filter(lookup)).first()


def gantt_subject(*, name: str) -> Subject | None:
    """What the picker's ``name`` names: a resource (as :func:`resource_by_name`), or a
    folder that the paths of one team imply (``team::src/``, or ``src/`` if only one
    team has paths under it); None for anything else."""
    resource = resource_by_name(name=name)
    if resource is not None:
        return Subject(team_id=resource.team_id, name=resource.name, resource=resource)
    team, folder = split_name(name)
    if not paths.is_folder(folder) or not storable_text(name):
        return None
    under = Resource.objects.filter(name__startswith=folder)
    if team is not None:
        under = under.filter(team__name=team)
    teams = list(under.order_by().values_list("team_id", flat=True).distinct()[:2])
    return Subject(team_id=teams[0], name=folder) if len(teams) == 1 else None
