"""The dashboard's live feed over WebSocket (``ws/events/``).

Protocol, server to browser (JSON text frames):

* ``{"type": "snapshot", "last_id": N, "server_time": ..., "state": BOARD}`` on
  connect, and whenever the browser is too far behind for a replay;
* ``{"type": "delta", "since": S, "last_id": N, "events": [...], "state": PATCH}``
  for the events with ``S < id <= N``, in id (= commit) order, with the board
  patch they call for (selectors.board). A browser whose last id is not ``S``
  has missed something and asks for a replay;
* ``{"type": "error", "error": CODE, "detail": TEXT}`` for a message it could not
  use (the connection stays open), ``{"type": "pong"}`` after a ping.

Browser to server: ``{"type": "resume", "last_id": N}`` (replay the events after
N, or a snapshot if that is too far back), ``{"type": "snapshot"}``,
``{"type": "ping"}``. A reconnecting browser passes ``?last_id=N`` in the URL
and gets a replay instead of a snapshot.

A page subscribes with a view (``?view=resources&q=...&page=2``, fields of
forms.BoardViewForm, or ``{"type": "snapshot", "view": {...}}`` to change it): its
snapshots then carry only what the page shows (selectors/views.py), not the whole
board. Deltas are the same for every feed; the browser keeps the rows its view shows.
Without a view, a snapshot is the whole board.

Pushes from the channel layer only wake the feed: what it sends is always
read from the event log after the last id it sent. One reader per process
(:class:`FeedTail`, the only member of the channel layer's group here) reads
the log once per frame for every feed, and each feed is sent the frames it has
not had, merged, and serialized once for all feeds at the same point; a feed
further behind than the tail remembers reads for itself. Event ids have gaps (see
core migration 0002), so a pushed batch cannot prove that none was lost,
while the log can; a push the layer dropped is caught up by the next push or
by the idle check. One task sends every state frame, at most one per
``FRAME_INTERVAL`` (20 a second), whatever the rate of events: bursts are
coalesced into one delta. The tail reads at most once per ``FRAME_INTERVAL``
too, and less often while reads are slow (``TAIL_BUDGET``): a database kept busy
by agents gets fewer reads from the live view, each bringing more events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import statistics
from typing import Any
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from orchestrator.core.events import ALL_EVENTS_GROUP, LIVE_WINDOW, last_event_id
from orchestrator.dashboard.frames import SharedBuilds
from orchestrator.dashboard.permissions import can_watch
from orchestrator.dashboard.selectors.board import patch_merge
from orchestrator.dashboard.selectors.feed import feed_delta, feed_snapshot, feed_view_snapshot
from orchestrator.dashboard.selectors.views import View, ViewError, view_parse

logger = logging.getLogger(__name__)

FRAME_INTERVAL = LIVE_WINDOW  # seconds between two state frames: at most 20 a second
IDLE_CHECK = 2.0  # seconds without a push after which the log is looked at anyway
MAX_MESSAGE_CHARS = 2000
MAX_EVENT_ID = 2**63 - 1
# The frames the tail keeps (about 10 s at 20 a second), and the most events it reads
# at once before it starts again from the end of the log.
TAIL_FRAMES = 200
TAIL_LIMIT = 5000
# The tail spends at most this share of the time reading: when its reads take t
# seconds (the median of the last TAIL_READS), the next one starts FRAME_INTERVAL or
# t / TAIL_BUDGET later, whichever is longer, and at most MAX_TAIL_INTERVAL later.
# Idle, a read takes a few milliseconds and the window rules; when agents keep the
# database busy, reads take longer and come less often, so the live view takes less
# from the agents' writes. The median, not the last read: one slow read (a stall of
# the machine) does not hold back the next frames.
TAIL_BUDGET = 0.2
TAIL_READS = 9
MAX_TAIL_INTERVAL = 1.0

# Browsers at the same event id share one build of their next frame (a feed that reads
# for itself: a snapshot, or a replay from further back than the tail kept).
shared_frames = SharedBuilds()


class ClientError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_client_message(text: str | None, data: bytes | None) -> dict[str, Any]:
    """Validate one message from a browser; raises ClientError with a stable code."""
    if text is None:
        raise ClientError("binary_unsupported", "send JSON text frames")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ClientError("too_large", f"messages are at most {MAX_MESSAGE_CHARS} characters")
    try:
        message = json.loads(text)
    except ValueError:
        raise ClientError("invalid_json", "the message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ClientError("invalid_message", 'a message is an object with a "type"')
    kind = message["type"]
    if kind == "resume":
        last_id = message.get("last_id")
        if not is_event_id(last_id):
            raise ClientError("invalid_last_id", "last_id must be an event id (an integer >= 0)")
    elif kind == "snapshot" and "view" in message:
        if not isinstance(message["view"], dict):
            raise ClientError("invalid_view", "view must be an object")
        try:
            message["view"] = view_parse(message["view"])
        except ViewError as exc:
            raise ClientError("invalid_view", exc.detail) from None
    elif kind not in ("snapshot", "ping"):
        raise ClientError("unknown_type", "type must be one of resume, snapshot, ping")
    return message


def is_event_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_EVENT_ID


def _query_last_id(scope: dict[str, Any]) -> int | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("last_id", [])
    try:
        value = int(values[-1]) if values else None
    except ValueError:
        return None
    return value if is_event_id(value) else None


def _query_view(scope: dict[str, Any]) -> View | None:
    """The view named in the query string (None: the whole board); ViewError if invalid."""
    params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return view_parse(params) if "view" in params else None


def frame_text(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, default=str)


class FeedTail:
    """The one reader of the event log in this process, for every feed.

    Woken by the pushes, it reads the events after the last one it read and their
    board patch (``feed_delta``) at most once per :meth:`interval`, and keeps the
    last ``TAIL_FRAMES`` of these frames. A feed at any event id they cover is
    served from them (:meth:`after` merges the frames it has not been sent), so the
    database work of the live view does not grow with the number of viewers, and
    viewers never drift apart. A feed further behind (a resume, a slow viewer)
    reads for itself, as before. The tail runs while a feed is connected.
    """

    def __init__(self) -> None:
        self.frames: collections.deque[dict[str, Any]] = collections.deque(maxlen=TAIL_FRAMES)
        self.last_id: int | None = None
        self._feeds: set[asyncio.Event] = set()
        # The frames sent since the last read, as text: feeds at the same point (nearly
        # all of them) share one serialization.
        self._texts: dict[int, tuple[int, str]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._channel = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting = asyncio.Lock()
        self.reads: collections.deque[float] = collections.deque(maxlen=TAIL_READS)

    async def join(self, woken: asyncio.Event) -> None:
        """A feed follows the tail; ``woken`` is set after each new frame. The first
        feed starts the tail, which joins the channel layer's group: one subscriber
        per process, whatever the number of feeds."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): what the old one held is unusable
            self.__init__()
            self._loop = loop
        self._feeds.add(woken)
        async with self._starting:
            if self._task is None or self._task.done():
                layer = get_channel_layer()
                self._channel = await layer.new_channel()
                await layer.group_add(ALL_EVENTS_GROUP, self._channel)
                self._task = loop.create_task(self._run())
                self._listener = loop.create_task(self._listen(layer, self._channel))
                logger.info("live feed: the tail started")

    async def leave(self, woken: asyncio.Event) -> None:
        self._feeds.discard(woken)
        if self._feeds or self._task is None:
            return
        tasks, self._task = [self._task, self._listener], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await get_channel_layer().group_discard(ALL_EVENTS_GROUP, self._channel)
        self.frames.clear()
        self._texts.clear()
        self.last_id = None
        logger.info("live feed: the tail stopped (no feed left)")

    async def _listen(self, layer: Any, channel: str) -> None:
        """Wake-ups from the layer (core.events.publish): read when one is past our end."""
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # the layer is best effort: the idle check still reads
                logger.warning("live feed: the channel layer failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            last = message.get("last_id")
            if self.last_id is None or not isinstance(last, int) or last > self.last_id:
                self._wake.set()

    def text_after(self, since: int) -> tuple[int, str] | bool | None:
        """:meth:`after` as (its last id, its JSON text), serialized once per point."""
        cached = self._texts.get(since)
        if cached is not None:
            return cached
        frame = self.after(since)
        if not isinstance(frame, dict):
            return frame
        self._texts[since] = (frame["last_id"], frame_text(frame))
        return self._texts[since]

    def after(self, since: int) -> dict[str, Any] | bool | None:
        """The delta from ``since`` to the tail's last frame, merged from its frames;
        None when the tail has nothing after ``since`` yet; False when it cannot tell
        (``since`` is older than what it kept, or it has not read the log yet)."""
        if self.last_id is None:
            return False
        if since >= self.last_id:
            return None
        frames = [frame for frame in self.frames if frame["last_id"] > since]
        if not frames or frames[0]["since"] > since:
            return False
        events = [event for frame in frames for event in frame["events"] if event["id"] > since]
        state: dict[str, Any] = {}
        for frame in frames:
            state = patch_merge(state, frame["state"])
        return {
            "type": "delta",
            "since": since,
            "last_id": frames[-1]["last_id"],
            "server_time": frames[-1]["server_time"],
            "events": events,
            "state": state,
        }

    def interval(self) -> float:
        """Seconds from the start of one read to the start of the next (TAIL_BUDGET)."""
        took = statistics.median(self.reads) if self.reads else 0.0
        return min(MAX_TAIL_INTERVAL, max(FRAME_INTERVAL, took / TAIL_BUDGET))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("live feed: the tail could not read the log; retrying")
                await asyncio.sleep(1.0)
                continue
            self.reads.append(loop.time() - started)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set (the tail sets it every frame), and the
            # feed's disconnect then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_CHECK):
                    await self._wake.wait()
            delay = started + self.interval() - loop.time()
            if delay > 0:  # what arrives meanwhile goes into the next read
                await asyncio.sleep(delay)
            self._wake.clear()

    async def _read(self) -> None:
        if self.last_id is None:
            self.last_id = await database_sync_to_async(last_event_id)()
            return
        frame = await database_sync_to_async(feed_delta)(since=self.last_id, limit=TAIL_LIMIT)
        if frame is None:  # more than TAIL_LIMIT events at once: start again from the end
            self.frames.clear()
            self.last_id = await database_sync_to_async(last_event_id)()
        elif frame["events"]:
            self.frames.append(frame)
            self.last_id = frame["last_id"]
        else:
            return
        self._texts.clear()
        for woken in self._feeds:
            woken.set()


tail = FeedTail()


class DashboardConsumer(AsyncWebsocketConsumer):
    """Snapshot, then coalesced deltas, with replay from the event log.

    Refuses anonymous users (close code 4401) and users without the
    ``dashboard.watch`` permission (4403) before the handshake completes.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        if not await database_sync_to_async(can_watch)(user):
            await self.close(code=4403)
            return
        self.last_id: int | None = None
        self._wake = asyncio.Event()
        self._request: dict[str, Any] | None = None
        self._next_frame_at = 0.0
        await tail.join(self._wake)
        # A shared build started before the tail followed the log for us may lack events
        # the tail will not wake us for: our own first read starts after this.
        self._woken_at = asyncio.get_running_loop().time()
        await self.accept()
        try:
            self.view: View | None = _query_view(self.scope)
        except ViewError as exc:
            self.view = view_parse({})  # the smallest view: a bad one costs nothing
            await self._send_json({"type": "error", "error": "invalid_view", "detail": exc.detail})
        since = _query_last_id(self.scope)
        if since is not None:
            self._request = {"type": "resume", "last_id": since}
        else:
            self._request = {"type": "snapshot"}
        self._pump_task = asyncio.create_task(self._pump())

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "_pump_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if hasattr(self, "_wake"):
            await tail.leave(self._wake)

    # --- from the browser ---------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = parse_client_message(text_data, bytes_data)
        except ClientError as exc:
            await self._send_json({"type": "error", "error": exc.code, "detail": exc.detail})
            return
        if message["type"] == "ping":
            await self._send_json({"type": "pong"})
            return
        # Replays and snapshots go through the pump, so they keep the frame rate.
        self._woken_at = asyncio.get_running_loop().time()
        self._request = message
        self._wake.set()

    # --- the pump: the only sender of state frames --------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Frames are spaced from the start of one to the start of the next: spacing
            # them from the end of the last one's build would stretch the interval by
            # every build's duration and hold each event back that much longer.
            started = loop.time()
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Disconnected:
                return  # the browser is gone; disconnect() follows, nothing more to send
            except Exception:
                logger.exception("live feed: could not catch up; retrying")
                await self._send_json(
                    {"type": "error", "error": "unavailable", "detail": "retrying shortly"}
                )
                self._request = self._request or {"type": "snapshot"}
                await asyncio.sleep(1.0)
                continue
            self._next_frame_at = started + FRAME_INTERVAL
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set (the tail sets it every frame), and the
            # feed's disconnect then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_CHECK):
                    await self._wake.wait()
            # Whatever arrives until the next frame is due goes into that frame.
            delay = self._next_frame_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()

    async def _catch_up(self) -> None:
        request, self._request = self._request, None
        if request is not None and request["type"] == "snapshot":
            if "view" in request:
                self.view = request["view"]
            await self._send_snapshot()
            return
        asked = request is not None
        since = request["last_id"] if asked else self.last_id
        if since is None:
            await self._send_snapshot()
            return
        served = tail.text_after(since)
        if served is None and not asked:
            return  # nothing new
        if isinstance(served, tuple):
            self.last_id, text = served
            await self.send(text_data=text)
            return
        frame = await shared_frames.get(
            ("delta", since),
            lambda: database_sync_to_async(feed_delta)(since=since),
            not_before=self._woken_at,
        )
        if frame is None:
            await self._send_snapshot()
            return
        if not frame["events"] and not asked:
            return
        self.last_id = frame["last_id"]
        await self._send_json(frame)

    async def _send_snapshot(self) -> None:
        view = self.view
        if view is None:
            key, build = ("snapshot",), database_sync_to_async(feed_snapshot)
        else:
            key = ("snapshot", *view.key())
            build = lambda: database_sync_to_async(feed_view_snapshot)(view)  # noqa: E731
        frame = await shared_frames.get(key, build, not_before=self._woken_at)
        self.last_id = frame["last_id"]
        await self._send_json(frame)

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=frame_text(frame))
