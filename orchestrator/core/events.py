"""The event log: append-only, written in the transaction it describes.

Every service runs inside :func:`service`, a durable transaction that
buffers the events the service emits and writes them as its very last
statements. On PostgreSQL the flush first takes a transaction-level
advisory lock, held until commit, so that event ids are handed out and made
visible in the same order: a reader that has seen id N never later sees a
new id below N appear. Because the advisory lock is taken after every row
lock the transaction needs, it cannot take part in a deadlock, and it is held
only for the insert and the commit itself. On SQLite (laptop mode) write
transactions are serialized by ``BEGIN IMMEDIATE`` already.

After commit each event is pushed to the channel layer, to the group of its
team and to the ``events`` group. The layer may drop messages; readers catch
up from the table by id (:func:`events_after`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import async_to_sync
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import QuerySet

from orchestrator.core.models import Agent, Event, Team

logger = logging.getLogger(__name__)

# An arbitrary constant naming the event log's advisory lock.
EVENT_LOG_LOCK_KEY = 0x4F524348  # "ORCH"
ALL_EVENTS_GROUP = "events"

P = ParamSpec("P")
R = TypeVar("R")

_state = threading.local()


def team_group(team_id: int) -> str:
    """Channel layer group that receives the events of one team."""
    return f"team.{team_id}"


def actor_name(
    *, user: AbstractBaseUser | AnonymousUser | None = None, agent: Agent | None = None
) -> str:
    """How an event names who caused it: ``user:alice``, ``agent:bob`` or ``system``."""
    if user is not None and user.is_authenticated:
        return f"user:{user.get_username()}"
    if agent is not None:
        return f"agent:{agent.name}"
    return "system"


def service(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` as a durable transaction that owns its events.

    Nesting a service inside another transaction fails loudly (durable=True):
    the entry point owns the transaction, as CONVENTIONS.md asks.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with transaction.atomic(durable=True):
            buffer: list[Event] = []
            _state.buffer = buffer
            try:
                result = func(*args, **kwargs)
                _flush(buffer)
            finally:
                _state.buffer = None
        return result

    return wrapper


def event_emit(
    kind: str,
    *,
    team: Team | int | None = None,
    agent: Agent | None = None,
    user: AbstractBaseUser | AnonymousUser | None = None,
    actor: str | None = None,
    subject: Any = None,
    payload: dict[str, Any] | None = None,
) -> Event:
    """Queue an event for the current service transaction.

    The row is inserted when the service finishes (see module docstring), so
    the returned Event has no id yet. Raises RuntimeError outside a service.
    """
    buffer = getattr(_state, "buffer", None)
    if buffer is None:
        raise RuntimeError("event_emit() must be called inside an @service function")
    team_id = team.pk if isinstance(team, Team) else team
    if team_id is None and agent is not None:
        team_id = agent.team_id
    real_user = user if user is not None and user.is_authenticated else None
    event = Event(
        kind=kind,
        actor=actor or actor_name(user=real_user, agent=agent),
        team_id=team_id,
        agent=agent,
        user=real_user,
        subject_type=subject._meta.model_name if subject is not None else "",
        subject_id=subject.pk if subject is not None else None,
        payload=payload or {},
    )
    buffer.append(event)
    return event


def _flush(buffer: list[Event]) -> None:
    if not buffer:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [EVENT_LOG_LOCK_KEY])
    Event.objects.bulk_create(buffer)
    messages = [event_message(event) for event in buffer]
    transaction.on_commit(lambda: publish(messages))


def event_message(event: Event) -> dict[str, Any]:
    """The JSON-safe form of an event, as pushed to browsers and replayed."""
    return {
        "id": event.pk,
        "kind": event.kind,
        "actor": event.actor,
        "team": event.team_id,
        "agent": event.agent_id,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "payload": event.payload,
        "created_at": event.created_at.isoformat() if event.created_at else None,
    }


def publish(messages: Iterable[dict[str, Any]]) -> None:
    """Push committed events to the channel layer; failures are logged, not raised.

    Correctness never depends on this push: browsers replay from the table.
    """
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        send = async_to_sync(layer.group_send)
        for message in messages:
            body = {"type": "event.logged", "event": message}
            send(ALL_EVENTS_GROUP, body)
            if message["team"] is not None:
                send(team_group(message["team"]), body)
    except Exception:  # the layer is best effort by design
        logger.warning("could not push events to the channel layer", exc_info=True)


def events_after(last_id: int, *, team_id: int | None = None, limit: int = 500) -> QuerySet[Event]:
    """Events with id greater than ``last_id`` in id (= commit) order."""
    queryset = Event.objects.filter(id__gt=last_id).order_by("id")
    if team_id is not None:
        queryset = queryset.filter(team_id=team_id)
    return queryset[:limit]
