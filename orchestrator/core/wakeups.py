"""Waking agents after commit: a lock was granted, an approval decided, a wait aborted.

The coordination core does not know how agents run; the runtime registers a
handler (``register``) that enqueues the agent's continuation. Handlers run
only after the transaction that caused the wake-up commits, so a woken agent
always sees the new state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import connection, transaction

T = TypeVar("T")

logger = logging.getLogger(__name__)

Handler = Callable[..., None]
_handlers: list[Handler] = []


def register(handler: Handler) -> Handler:
    """Call ``handler(agent_id=, step_id=, reason=)`` after each committed wake-up."""
    if handler not in _handlers:
        _handlers.append(handler)
    return handler


def unregister(handler: Handler) -> None:
    if handler in _handlers:
        _handlers.remove(handler)


def schedule(*, agent_id: int, step_id: int | None, reason: str) -> None:
    """Wake ``agent_id`` once the current transaction commits."""

    def run() -> None:
        for handler in list(_handlers):
            try:
                handler(agent_id=agent_id, step_id=step_id, reason=reason)
            except Exception:  # one failing handler must not hide the others
                logger.exception("wake-up handler %r failed", handler)

    transaction.on_commit(run)


# --- work that goes on after commit, by id -------------------------------------------
# A lock set whose request was granted, or that ended, goes on (core/lock_sets.py);
# the queues related to a path whose lock ended may go (core/paths.py). Each in a
# transaction of its own after this one commits; the module doing it registers how.


class AfterCommit:
    """Handlers of one kind of work, called with an id after the scheduling commits."""

    def __init__(self) -> None:
        self._handlers: list[Callable[[int], None]] = []

    def register(self, handler: Callable[[int], None]) -> None:
        if handler not in self._handlers:
            self._handlers.append(handler)

    def schedule(self, pk: int) -> None:
        def run() -> None:
            for handler in list(self._handlers):
                handler(pk)

        transaction.on_commit(run)


LOCK_SETS = AfterCommit()  # a lock set's id
PATHS = AfterCommit()  # a path resource's id whose lock ended


# --- waking agents that wait over HTTP ----------------------------------------------
# An agent of the HTTP API has no step to continue: it long-polls its lock request
# (GET /api/v1/lock-requests/{id}?wait=...). Each wake-up of an agent without a step
# pushes to a Redis list of that agent, on which the poll blocks. A list, not pub/sub:
# a wake-up that lands between the poll's read and its wait is not lost.
WAKE_KEY = "orchestrator:wake:agent:{}"
WAKE_KEY_TTL = 60  # seconds: a wake-up nobody waits for is dropped

_redis: tuple[int, object] = (0, None)


def _client() -> Any:
    import redis
    from django.conf import settings

    global _redis
    if _redis[0] != os.getpid():
        _redis = (os.getpid(), redis.Redis.from_url(settings.REDIS_URL))
    return _redis[1]


def notify_http_waiters(*, agent_id: int, step_id: int | None, reason: str) -> None:
    """Wake-up handler: push to the agent's list if it has no step (an HTTP agent)."""
    if step_id is not None:
        return
    key = WAKE_KEY.format(agent_id)
    pipe = _client().pipeline(transaction=False)
    pipe.rpush(key, reason)
    pipe.expire(key, WAKE_KEY_TTL)
    pipe.execute()


def wait_for_wake(agent_id: int, timeout: float) -> bool:
    """Block up to ``timeout`` seconds for a wake-up of ``agent_id``; True if one came.
    Callers re-read the state afterwards: a wake-up says "look again", nothing more."""
    if timeout <= 0:
        return False
    return _client().blpop([WAKE_KEY.format(agent_id)], timeout=timeout) is not None


def long_poll(
    agent_id: int,
    timeout: float,
    first: T,
    waiting: Callable[[T], bool],
    again: Callable[[T, bool], T],
) -> T:
    """A long poll of ``agent_id``: from ``first``, while ``waiting(it)``, wait up to
    ``timeout`` seconds in all for a wake-up (:func:`wait_for_wake`, at most a second at
    a time, in case one was lost), and each time read it ``again(it, woken)``.

    The database connection goes back to the pool (web) while the thread waits."""
    deadline = time.monotonic() + timeout
    result = first
    while waiting(result):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not connection.in_atomic_block:
            connection.close()
        result = again(result, wait_for_wake(agent_id, min(left, 1.0)))
    return result
