"""A request's thread, which the request gives back while it waits (long polls).

Under ASGI, Django runs each request's synchronous work (the request signals,
the middleware chain and the view) in a thread of the request's own: asgiref's
``ThreadSensitiveContext`` gives each request an executor of one thread, made at
its first synchronous call and ended when the request is answered. A request
that waits for a wake-up (a long poll) would keep that thread, idle, for the
whole wait: one thread per waiting client.

:func:`request_thread` runs a request with a :class:`RequestThread` instead: the
same executor (one call at a time, each on the request's one thread), except
that the request can give its thread back between two calls
(:func:`give_back`), after closing the thread's database connections; the next
synchronous call of the request starts a new thread. A waiting request then holds
no thread: only a coroutine on the event loop, and its Redis wait.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections

_current: contextvars.ContextVar[RequestThread | None] = contextvars.ContextVar(
    "orchestrator_request_thread", default=None
)


class RequestThread(Executor):
    """One thread for one request's synchronous calls, one call at a time, that the
    request may let end between two calls (:meth:`give_back`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the request is over: its thread is gone")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
            return self._pool.submit(fn, *args, **kwargs)

    @property
    def has_thread(self) -> bool:
        return self._pool is not None

    def give_back(self) -> None:
        """Let the thread end once it has run what it was given; a later call starts
        another. Only between two calls, once the thread's connections are closed."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@asynccontextmanager
async def request_thread() -> AsyncIterator[RequestThread]:
    """Run a request inside: its thread-sensitive calls (``sync_to_async``, Django's
    own) go to one :class:`RequestThread`, which :func:`give_back` can let go."""
    executor = RequestThread()
    token = _current.set(executor)
    try:
        async with ThreadSensitiveContext(executor=executor):
            yield executor
    finally:
        _current.reset(token)
        # Not joined: the thread may be finishing a call the request gave up on (a
        # disconnect); it ends on its own once that returns.
        executor.shutdown(wait=False)


def can_give_back() -> bool:
    """Whether the code running now is part of a request run by :func:`request_thread`
    (in its thread or on its event loop), so that it may wait without a thread."""
    return _current.get() is not None


def _close_connections() -> None:
    connections.close_all()


async def give_back() -> None:
    """Close the request thread's database connections (back to the pool), then let
    the thread end. A no-op outside :func:`request_thread`."""
    executor = _current.get()
    if executor is None or not executor.has_thread:
        return
    await sync_to_async(_close_connections, thread_sensitive=True)()
    executor.give_back()
