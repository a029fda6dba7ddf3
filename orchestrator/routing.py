"""WebSocket routes."""

from __future__ import annotations

from django.urls import path

from orchestrator.core.consumers import EventsConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi()),
]
