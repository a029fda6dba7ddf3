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

Pushes from the channel layer only wake the feed: what it sends is always
read from the event log after the last id it sent. Event ids have gaps (see
core migration 0002), so a pushed batch cannot prove that none was lost,
while the log can; a push the layer dropped is caught up by the next push or
by the idle check. One task sends every state frame, at most one per
``FRAME_INTERVAL`` (20 a second), whatever the rate of events: bursts are
coalesced into one delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from orchestrator.core.events import ALL_EVENTS_GROUP
from orchestrator.dashboard.frames import SharedBuilds
from orchestrator.dashboard.permissions import can_watch
from orchestrator.dashboard.selectors.feed import feed_delta, feed_snapshot

logger = logging.getLogger(__name__)

FRAME_INTERVAL = 0.05  # seconds between two state frames: at most 20 a second
IDLE_CHECK = 2.0  # seconds without a push after which the log is looked at anyway
MAX_MESSAGE_CHARS = 2000
MAX_EVENT_ID = 2**63 - 1
# Browsers at the same event id share one build of their next frame.
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
        self._woken_at = 0.0
        await self.channel_layer.group_add(ALL_EVENTS_GROUP, self.channel_name)
        # Frames built before we joined the group may lack events we will not be pushed.
        self._woken_at = asyncio.get_running_loop().time()
        await self.accept()
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
        with contextlib.suppress(Exception):
            await self.channel_layer.group_discard(ALL_EVENTS_GROUP, self.channel_name)

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

    # --- from the channel layer ---------------------------------------------------------

    async def events_logged(self, message: dict[str, Any]) -> None:
        """A wake-up: events up to ``last_id`` were committed (core.events.publish)."""
        last = message.get("last_id")
        if self.last_id is None or not isinstance(last, int) or last > self.last_id:
            self._woken_at = asyncio.get_running_loop().time()
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
            except Exception:
                logger.exception("live feed: could not catch up; retrying")
                await self._send_json(
                    {"type": "error", "error": "unavailable", "detail": "retrying shortly"}
                )
                self._request = self._request or {"type": "snapshot"}
                await asyncio.sleep(1.0)
                continue
            self._next_frame_at = started + FRAME_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=IDLE_CHECK)
            # Whatever arrives until the next frame is due goes into that frame.
            delay = self._next_frame_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()

    async def _catch_up(self) -> None:
        request, self._request = self._request, None
        if request is not None and request["type"] == "snapshot":
            await self._send_snapshot()
            return
        asked = request is not None
        since = request["last_id"] if asked else self.last_id
        if since is None:
            await self._send_snapshot()
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
        frame = await shared_frames.get(
            ("snapshot",), database_sync_to_async(feed_snapshot), not_before=self._woken_at
        )
        self.last_id = frame["last_id"]
        await self._send_json(frame)

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, ensure_ascii=False, default=str))
