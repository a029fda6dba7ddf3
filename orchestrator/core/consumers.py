"""WebSocket consumers. Authenticate, join groups, forward events."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from orchestrator.core.events import ALL_EVENTS_GROUP


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes every committed event to logged-in staff users.

    Anonymous connections are refused before the handshake completes.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(ALL_EVENTS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ALL_EVENTS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"type": "error", "error": "unsupported", "detail": "read-only"})

    async def events_logged(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "events", "events": message["events"]})
