"""Waking agents after commit: a lock was granted, an approval decided, a wait aborted.

The coordination core does not know how agents run; the runtime registers a
handler (``register``) that enqueues the agent's continuation. Handlers run
only after the transaction that caused the wake-up commits, so a woken agent
always sees the new state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection, connections, transaction
from redis.exceptions import RedisError

from orchestrator.core import request_threads
from orchestrator.core.errors import Throttled

T = TypeVar("T")
R = TypeVar("R")

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
# A waiting poll's state is read again at least this often, in case its wake-up was lost
# (Redis restarted, or another wait of the same agent took it): LongPoll.
REREAD_SECONDS = 1.0
MAX_REDIS_CONNECTIONS = 10_000  # per process and event loop: Redis's default maxclients
# The longest BLPOP of a poll parked on an event loop (then it parks again): below the
# async client's socket timeout, which catches a dead connection.
PARK_SECONDS = 20.0

_redis: tuple[int, object] = (0, None)
_async_redis: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary()
)
# The reads of waiting polls run here, not in a thread per waiting request
# (core/request_threads.py): a few threads, each with its connection given back to the
# pool after each read. Reads after a wake-up, and the answers, have threads of their
# own, so that they never queue behind the periodic reads of every other waiting poll.
_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="long-poll-read")
_REREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="long-poll-reread")


def _client() -> Any:
    import redis
    from django.conf import settings

    global _redis
    if _redis[0] != os.getpid():
        _redis = (os.getpid(), redis.Redis.from_url(settings.REDIS_URL))
    return _redis[1]


def _async_client() -> Any:
    """The Redis client of the running event loop (redis.asyncio: its connections
    belong to one loop)."""
    import redis.asyncio
    from django.conf import settings

    loop = asyncio.get_running_loop()
    client = _async_redis.get(loop)
    if client is None:
        # A waiting poll's BLPOP blocks the connection it was sent on: one connection per
        # waiting poll (redis.asyncio's default pool has 100).
        client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=PARK_SECONDS + 5,
            max_connections=MAX_REDIS_CONNECTIONS,
        )
        _async_redis[loop] = client
    return client


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


async def wait_for_wake_async(agent_id: int, timeout: float) -> bool:
    """:func:`wait_for_wake` on the event loop: the same list, read by an async client,
    holding no thread while it waits."""
    if timeout <= 0:
        return False
    found = await _async_client().blpop([WAKE_KEY.format(agent_id)], timeout=timeout)
    return found is not None


# --- how many waits an agent has at once ----------------------------------------------
# Each waiting poll holds a slot: a member of a sorted set of its agent on Redis, scored
# with the time (Redis's clock) it expires at, so that every web process counts the same
# slots and a process that dies holding some cannot keep them past their wait.
SLOTS_KEY = "orchestrator:waits:agent:{}"
SLOT_MARGIN = 5  # seconds a slot outlives the wait it was taken for
RETRY_AFTER = 1  # seconds: the Retry-After of a refused wait
_TAKE_SLOT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
local expires = now_ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))  -- the latest slot's expiry
return 1
"""


def max_waits() -> int:
    """ORCHESTRATOR_MAX_WAITS_PER_AGENT: waits one agent may have at once (0: no cap)."""
    from django.conf import settings

    return int(getattr(settings, "ORCHESTRATOR_MAX_WAITS_PER_AGENT", 10))


def _too_many(cap: int) -> Throttled:
    return Throttled(
        "too_many_waits",
        f"this agent already has {cap} waits in progress (the most it may have at once: "
        "ORCHESTRATOR_MAX_WAITS_PER_AGENT); end one, or ask again without waiting",
        retry_after=RETRY_AFTER,
    )


def _slot_args(agent_id: int, timeout: float) -> tuple[Any, ...]:
    ttl_ms = int((timeout + SLOT_MARGIN) * 1000)
    return (_TAKE_SLOT, 1, SLOTS_KEY.format(agent_id), max_waits(), ttl_ms, uuid.uuid4().hex)


def slot_take(agent_id: int, timeout: float) -> str | None:
    """A slot for a wait of up to ``timeout`` seconds by ``agent_id``, or Throttled
    (429 too_many_waits) when it has ORCHESTRATOR_MAX_WAITS_PER_AGENT already. None
    when Redis cannot count them: the wait goes ahead uncounted (it polls the
    database meanwhile, :class:`LongPoll`)."""
    args = _slot_args(agent_id, timeout)
    try:
        taken = _client().eval(*args)
    except RedisError:
        logger.warning("wait slots: Redis unavailable, agent %s waits uncounted", agent_id)
        return None
    if not taken:
        raise _too_many(max_waits())
    return args[-1]


async def slot_take_async(agent_id: int, timeout: float) -> str | None:
    """:func:`slot_take` on the event loop."""
    args = _slot_args(agent_id, timeout)
    try:
        taken = await _async_client().eval(*args)
    except RedisError:
        logger.warning("wait slots: Redis unavailable, agent %s waits uncounted", agent_id)
        return None
    if not taken:
        raise _too_many(max_waits())
    return args[-1]


def slot_release(agent_id: int, slot: str | None) -> None:
    """Give the slot back (harmless twice; if Redis is unavailable, it expires)."""
    if slot is None:
        return
    try:
        _client().zrem(SLOTS_KEY.format(agent_id), slot)
    except RedisError:
        logger.warning("wait slots: Redis unavailable, agent %s's slot expires", agent_id)


async def slot_release_async(agent_id: int, slot: str | None) -> None:
    """:func:`slot_release` on the event loop."""
    if slot is None:
        return
    try:
        await _async_client().zrem(SLOTS_KEY.format(agent_id), slot)
    except RedisError:
        logger.warning("wait slots: Redis unavailable, agent %s's slot expires", agent_id)


def waits_held(agent_id: int) -> int:
    """How many live slots ``agent_id`` holds now (for tests and operators)."""
    key = SLOTS_KEY.format(agent_id)
    client = _client()
    now_s, now_us = client.time()
    return int(client.zcount(key, f"({now_s * 1000 + now_us // 1000}", "+inf"))


# --- long polls -----------------------------------------------------------------------


def _read_then_close(read: Callable[..., T], *args: Any) -> T:
    try:
        return read(*args)
    finally:
        connections.close_all()  # back to the pool (web): no read thread keeps one


async def in_thread(read: Callable[..., R], *args: Any, periodic: bool = False) -> R:
    """``read(*args)`` (database work) in one of the long polls' read threads (the
    periodic reads' own when ``periodic``)."""
    executor = _REREADS if periodic else _READS
    return await sync_to_async(_read_then_close, thread_sensitive=False, executor=executor)(
        read, *args
    )


_NOT_YET = object()


@dataclass(frozen=True)
class Watch:
    """How to tell, for many polls in one query, which have moved: ``moved(pks)`` are
    those of ``pks`` whose rows no longer wait (the same function for polls of a kind)."""

    moved: Callable[[list[int]], Iterable[int]]
    pk: int


class LongPoll(Generic[T]):
    """A long poll of ``agent_id``: from ``first``, while ``waiting(it)``, wait up to
    ``timeout`` seconds in all for a wake-up, and each time read it ``again(it, woken)``.

    A wake-up may be lost (Redis restarted, or another wait of the same agent took
    it), so the state is also read at least every REREAD_SECONDS: by each poll that
    waits in a thread (:meth:`wait`), and, for the polls waiting on an event loop
    (:meth:`wait_async`) that have a :class:`Watch`, by one query of their process per
    kind of poll, every REREAD_SECONDS, which wakes those that moved. If Redis is
    unavailable, every poll reads again every REREAD_SECONDS.

    While it waits, the poll holds one of its agent's slots (:func:`slot_take`): taken
    by :meth:`reserve` (or by the wait), given back when the wait ends, however it ends.

    ``waiting`` only looks at a result; ``again`` reads the database. :meth:`wait`
    blocks the calling thread; :meth:`wait_async` waits on the event loop, holding no
    thread (it gives the request's thread back, core/request_threads.py), and reads in
    :func:`in_thread`.
    """

    def __init__(
        self,
        agent_id: int,
        timeout: float,
        first: T,
        waiting: Callable[[T], bool],
        again: Callable[[T, bool], T],
        watch: Watch | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.timeout = timeout
        self.result = first
        self.watch = watch
        self._deadline = time.monotonic() + timeout
        self._waiting = waiting
        self._again = again
        self._slot: str | None = None
        self._reserved = False

    @property
    def done(self) -> bool:
        """Nothing to wait for: decided already, or no time to wait."""
        return not self._waiting(self.result) or self._left() <= 0

    def _left(self) -> float:
        return self._deadline - time.monotonic()

    def reserve(self) -> None:
        """Take the wait's slot now (Throttled when the agent has too many waits)."""
        if not self._reserved and not self.done:
            self._slot = slot_take(self.agent_id, self.timeout)
            self._reserved = True

    def deferred(self) -> bool:
        """Whether the caller is to ``await`` :meth:`wait_async` for the result: when
        the poll has to wait and runs in a request that can wait without a thread
        (core/request_threads.py); its slot is taken now (Throttled, before any
        answer is sent). Otherwise the poll waits here, if it has to, and
        :attr:`result` is the answer."""
        if self.done:
            return False
        if not request_threads.can_give_back():
            self.wait()
            return False
        self.reserve()
        return True

    def wait(self) -> T:
        """Wait in this thread. The database connection goes back to the pool (web)
        while the thread waits."""
        if self.done:
            return self.result
        self.reserve()
        try:
            while self._waiting(self.result):
                left = self._left()
                if left <= 0:
                    break
                if not connection.in_atomic_block:
                    connection.close()
                self.result = self._again(self.result, self._woken(min(left, REREAD_SECONDS)))
        finally:
            slot_release(self.agent_id, self._slot)
            self._slot = None
        return self.result

    def _woken(self, timeout: float) -> bool:
        try:
            return wait_for_wake(self.agent_id, timeout)
        except RedisError as exc:
            logger.warning("long poll: Redis unavailable (%r), agent %s polls", exc, self.agent_id)
            time.sleep(timeout)
            return False

    async def wait_async(self, answer: Callable[[T], R]) -> R:
        """Wait on the event loop, then ``answer(result)`` (database work: run in the
        thread of the last read, in the same hop). If the request is cancelled (its
        client went away), the slot is given back; nothing else is held."""
        if self.done:
            return await in_thread(answer, self.result)
        try:
            if not self._reserved:
                self._slot = await slot_take_async(self.agent_id, self.timeout)
                self._reserved = True
            await request_threads.give_back()
            while True:
                left = self._left()
                if self.watch is None:
                    woken = await self._woken_async(min(left, REREAD_SECONDS))
                else:
                    with _sweeper().parked(self):
                        woken = await self._woken_async(min(left, PARK_SECONDS))
                last = self._left() <= 0
                if woken is False and self.watch is not None and not last:
                    continue  # the end of a park: the sweep reads for it, park again
                found, answered = await in_thread(
                    self._read_again, bool(woken), last, answer, periodic=not (woken or last)
                )
                if answered is not _NOT_YET:
                    return answered
                self.result = found
        finally:
            slot, self._slot = self._slot, None
            await slot_release_async(self.agent_id, slot)

    def _read_again(
        self, woken: bool, last: bool, answer: Callable[[T], R]
    ) -> tuple[T, R | object]:
        """Read again; the answer too if the wait is over (``last``: its time is up)."""
        found = self._again(self.result, woken)
        if last or not self._waiting(found):
            return found, answer(found)
        return found, _NOT_YET

    async def _woken_async(self, timeout: float) -> bool | None:
        """True if a wake-up came, False if none came in ``timeout`` seconds, None if
        Redis could not be asked (after a pause of at most REREAD_SECONDS)."""
        try:
            return await wait_for_wake_async(self.agent_id, timeout)
        except RedisError as exc:
            logger.warning("long poll: Redis unavailable (%r), agent %s polls", exc, self.agent_id)
            await asyncio.sleep(min(timeout, REREAD_SECONDS))
            return None


class _Sweeper:
    """The periodic read of the polls parked on one event loop: every REREAD_SECONDS,
    one query per kind of poll (:class:`Watch`); a poll found moved is woken through
    its agent's list, as its lost wake-up would have (the wake-up may wake another
    wait of the same agent instead: then the next sweep wakes it again)."""

    def __init__(self) -> None:
        self._parked: dict[LongPoll[Any], None] = {}
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def parked(self, poll: LongPoll[Any]) -> Iterator[None]:
        self._parked[poll] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield
        finally:
            self._parked.pop(poll, None)

    async def _run(self) -> None:
        while self._parked:
            await asyncio.sleep(REREAD_SECONDS)
            polls = list(self._parked)
            if not polls:
                continue
            try:
                moved = await in_thread(_moved, polls, periodic=True)
                pipe = _async_client().pipeline(transaction=False)
                for poll in moved:
                    if poll in self._parked:
                        pipe.rpush(WAKE_KEY.format(poll.agent_id), "sweep")
                        pipe.expire(WAKE_KEY.format(poll.agent_id), WAKE_KEY_TTL)
                await pipe.execute()
            except Exception:  # the database or Redis: the next sweep tries again
                logger.exception("long polls' sweep failed")


def _moved(polls: list[LongPoll[Any]]) -> list[LongPoll[Any]]:
    """Those of ``polls`` whose rows no longer wait: one query per kind of poll."""
    kinds: dict[Callable[[list[int]], Iterable[int]], list[LongPoll[Any]]] = {}
    for poll in polls:
        assert poll.watch is not None
        kinds.setdefault(poll.watch.moved, []).append(poll)
    found: list[LongPoll[Any]] = []
    for moved, group in kinds.items():
        pks = set(moved([poll.watch.pk for poll in group if poll.watch is not None]))
        found.extend(poll for poll in group if poll.watch is not None and poll.watch.pk in pks)
    return found


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


def _sweeper() -> _Sweeper:
    loop = asyncio.get_running_loop()
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = _Sweeper()
    return sweeper
