"""The event log: append-only, written in the transaction it describes.

Every service runs inside :func:`service`, a durable transaction that
buffers the events the service emits and writes them as its very last
statement. On PostgreSQL a BEFORE INSERT trigger (migrations 0002 and 0007)
takes the event log's transaction-level advisory lock *shared*, held until
commit, and only then draws the id. Writers do not wait for each other, so
ids are not made visible in id order by themselves. Readers that follow ids
read up to :func:`last_event_id`, the largest id read behind
:func:`event_log_barrier`, which takes the same lock exclusively: it waits
until every writer that has drawn an id has committed, and every id drawn
after it is larger. So a reader that has seen id N never later sees a new id
below N appear, and writers wait only for that one quick read. Because
writers take the lock after every row lock their transaction needs, it cannot
take part in a deadlock, and it is held only for the insert and the commit
itself.

After commit a wake-up carrying the largest committed id goes to the channel
layer's ``events`` group (at most one per ``PUBLISH_WINDOW`` and process); the
dashboard's feeds then read the log after the last id they sent. The layer may
drop messages; readers catch up from the table by id (:func:`events_after`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.kinds import event_kind
from orchestrator.core.models import Agent, Event, Team

logger = logging.getLogger(__name__)

# An arbitrary constant naming the event log's advisory lock (taken by the
# trigger of migration 0002, which spells the same number).
EVENT_LOG_LOCK_KEY = 0x4F524348  # "ORCH"
ALL_EVENTS_GROUP = "events"
# The live path's one coalescing window (seconds). A process pushes a wake-up at most
# once per window (the first commit after a quiet spell at once, those during the
# window after a push together at its end); the dashboard's tail reads the log at most
# once per window, and a feed is sent at most one frame per window
# (dashboard/consumers.py FRAME_INTERVAL, dashboard/frames.py FRESH).
LIVE_WINDOW = 0.05
PUBLISH_WINDOW = LIVE_WINDOW
P = ParamSpec("P")
R = TypeVar("R")

_state = threading.local()

# Callables given each service's events (unsaved, in emit order) inside its transaction,
# just before they are inserted: see :func:`observe`.
_observers: list[Callable[[list[Event]], None]] = []


def observe(observer: Callable[[list[Event]], None]) -> Callable[[list[Event]], None]:
    """Register ``observer`` to see the events of every service transaction.

    It is called inside the transaction, before the events are inserted (they have no
    ids yet), with the list in emit order. Each event also carries the instance it was
    emitted about, as the emitter had it (``event.subject_object``, not saved; None
    without a subject), so an observer reads its fields without a query. It may write
    rows of its own (they commit or roll back with the events) and register
    ``transaction.on_commit`` callbacks for what must happen only once they are
    committed (a counter, a job). It must not emit events. Register at import time or
    in an ``AppConfig.ready()``; usable as a decorator.
    """
    _observers.append(observer)
    return observer


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
    the returned Event has no id yet. Raises RuntimeError outside a service, and
    EventPayloadError for a kind not declared in ``core/kinds.py`` or a payload
    that does not match its declaration.
    """
    buffer = getattr(_state, "buffer", None)
    if buffer is None:
        raise RuntimeError("event_emit() must be called inside an @service function")
    event_kind(kind).check(payload or {})
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
    # Not saved: for observers, which read the subject's fields without a query.
    event.subject_object = subject
    buffer.append(event)
    return event


def _flush(buffer: list[Event]) -> None:
    if not buffer:
        return
    for observer in _observers:
        observer(buffer)
    # A trigger takes the event log's advisory lock (shared) before it draws each
    # id (migration 0007), so this insert is the only statement.
    sql.insert_events(buffer, timezone.now())
    last_id = max(event.pk for event in buffer)
    transaction.on_commit(lambda: publish(last_id))


class _Publisher:
    """A daemon thread with its own event loop that wakes the dashboard's feeds.

    What it sends is a wake-up, the largest event id committed (``{"type":
    "events.logged", "last_id": N}``), to the ``events`` group: each feed then reads
    the log after the last id it sent (dashboard/consumers.py), so nothing else
    would be used. Services hand it the id and return at once; calling
    ``async_to_sync(group_send)`` per commit instead costs a fresh event loop and
    Redis connection each time (measured: ~17 ms per lock cycle). The queue is
    bounded: if the layer is down or slow, wake-ups are dropped, which is safe
    because the feeds also look at the log after ``IDLE_CHECK`` seconds.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[int | threading.Event] = queue.Queue(maxsize=10000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = 0

    def submit(self, item: int | threading.Event) -> None:
        self._ensure_started()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            logger.warning("event push queue full; dropping a wake-up")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was pushed (for tests and shutdown)."""
        done = threading.Event()
        self.submit(done)
        return done.wait(timeout)

    def _ensure_started(self) -> None:
        # A forked child inherits the object but not the thread: start a new one.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._queue = queue.Queue(maxsize=10000)
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="event-publisher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        import asyncio

        from channels.layers import get_channel_layer

        # One loop for the thread's life, so channels_redis keeps its connections.
        loop = asyncio.new_event_loop()
        pushed_at = -PUBLISH_WINDOW
        while True:
            batch = [self._queue.get()]
            # Coalesce, leading edge: the first commit after a quiet spell goes at once;
            # those within PUBLISH_WINDOW of the last push wait for the window's end and
            # go as one wake-up (the largest id), so a burst costs one message per
            # window, and a lone commit is not held back. A flush request (someone
            # waiting, e.g. a job about to exit) ends the window.
            deadline = pushed_at + PUBLISH_WINDOW
            while not any(isinstance(item, threading.Event) for item in batch):
                try:
                    left = deadline - time.monotonic()
                    batch.append(
                        self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            markers = [item for item in batch if isinstance(item, threading.Event)]
            ids = [item for item in batch if not isinstance(item, threading.Event)]
            if ids:
                layer = get_channel_layer()
                if layer is not None:
                    pushed_at = time.monotonic()
                    loop.run_until_complete(self._send(layer, max(ids)))
            for marker in markers:
                marker.set()

    async def _send(self, layer: Any, last_id: int) -> None:
        try:
            await layer.group_send(ALL_EVENTS_GROUP, {"type": "events.logged", "last_id": last_id})
        except Exception:  # the layer is best effort by design
            logger.warning("could not push a wake-up to the channel layer", exc_info=True)


_publisher = _Publisher()


def publish(last_id: int) -> None:
    """Hand the largest id a transaction committed to the background publisher, which
    wakes the dashboard's feeds; never blocks, never raises.

    Correctness never depends on this push: browsers replay from the table.
    """
    _publisher.submit(last_id)


def publish_flush(timeout: float = 5.0) -> bool:
    """Block until every event handed over so far has been pushed (or dropped)."""
    return _publisher.flush(timeout)


@contextlib.contextmanager
def event_log_barrier() -> Iterator[None]:
    """A transaction in which the event log reads as if written in id order.

    Inside it, every event with an id below the largest one visible has
    committed, and no event can commit below it until the block ends: the
    event log's advisory lock, which writers hold shared from drawing an id to
    their commit, is taken exclusively. Writers wait while it is open: keep it
    to one quick read, as :func:`last_event_id` does.
    """
    with transaction.atomic(savepoint=False):
        sql.advisory_xact_lock(EVENT_LOG_LOCK_KEY)
        yield


def last_event_id() -> int:
    """The largest event id, read behind the event log's lock taken exclusively, as
    :func:`event_log_barrier` takes it, in one statement (``sql.settled_event_id``).

    Every event up to it has committed (or never will), and every event
    committed later has a larger id: the events up to it are a settled prefix
    of the log, which can be read afterwards without holding anything.
    """
    return log_end()[0]


def log_end() -> tuple[int, datetime]:
    """:func:`last_event_id`, and the database clock when it was read."""
    return sql.settled_event_id(EVENT_LOG_LOCK_KEY)


def _after(last_id: int, team_id: int | None, upto: int | None) -> QuerySet[Event]:
    if upto is None:
        upto = last_event_id()
    queryset = Event.objects.filter(id__gt=last_id, id__lte=upto).order_by("id")
    return queryset if team_id is None else queryset.filter(team_id=team_id)


def events_after(
    last_id: int, *, team_id: int | None = None, limit: int = 500, upto: int | None = None
) -> list[Event]:
    """Events with id greater than ``last_id`` and at most ``upto`` (default: the
    :func:`last_event_id` now), in id order: none will later commit below them."""
    return list(_after(last_id, team_id, upto)[:limit])


# An event's JSON-safe form (what browsers are pushed and replayed): key -> column.
MESSAGE_COLUMNS = {
    "id": "id",
    "kind": "kind",
    "actor": "actor",
    "team": "team_id",
    "agent": "agent_id",
    "subject_type": "subject_type",
    "subject_id": "subject_id",
    "payload": "payload",
    "created_at": "created_at",
}


def event_messages_after(
    last_id: int, *, team_id: int | None = None, limit: int = 500, upto: int | None = None
) -> list[dict[str, Any]]:
    """The events :func:`events_after` selects, in their JSON-safe form (keys of
    :data:`MESSAGE_COLUMNS`). Read as rows, not model instances: building the
    instances was about a quarter of a live frame's cost (py-spy on daphne)."""
    rows = _after(last_id, team_id, upto).values_list(*MESSAGE_COLUMNS.values())[:limit]
    messages = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in rows]
    for message in messages:
        created = message["created_at"]
        message["created_at"] = created.isoformat() if created else None
    return messages
