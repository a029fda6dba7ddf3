"""Frames shared by the live feeds of one process, when a feed reads for itself
(its snapshot, or a replay from before what the tail kept: consumers.FeedTail).

Every browser following the feed at the same event id needs the same delta;
building it costs a handful of queries. A build is shared by every feed of
the process that asks for the same frame while it is fresh, provided the build
started after that feed's last wake-up: a push received before the build
started is for an event committed before it, so the frame includes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from orchestrator.core.events import LIVE_WINDOW

FRESH = LIVE_WINDOW  # seconds a built frame may serve other feeds: the live path's window


class SharedBuilds:
    def __init__(self, fresh: float = FRESH) -> None:
        self.fresh = fresh
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[Hashable, tuple[float, asyncio.Task[Any]]] = {}

    async def get(
        self, key: Hashable, build: Callable[[], Awaitable[Any]], *, not_before: float
    ) -> Any:
        """The result of ``build()``, or of a build of ``key`` started since ``not_before``
        (loop time) and less than ``fresh`` seconds ago."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): tasks of the old one are unusable
            self._loop, self._entries = loop, {}
        now = loop.time()
        entry = self._entries.get(key)
        if entry is None or not self._usable(entry, now, not_before):
            entry = (now, loop.create_task(build()))
            self._entries[key] = entry
            self._prune(now)
        # shield: a feed that disconnects while waiting does not cancel the others' build.
        return await asyncio.shield(entry[1])

    def _usable(
        self, entry: tuple[float, asyncio.Task[Any]], now: float, not_before: float
    ) -> bool:
        started, task = entry
        if started < not_before or now - started > self.fresh:
            return False
        return not task.done() or (not task.cancelled() and task.exception() is None)

    def _prune(self, now: float) -> None:
        stale = [
            k for k, (t, task) in self._entries.items() if now - t > self.fresh and task.done()
        ]
        for key in stale:
            del self._entries[key]
