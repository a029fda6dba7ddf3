"""WebSocket routes."""

from __future__ import annotations

from django.urls import path

from orchestrator.dashboard.consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/events/", DashboardConsumer.as_asgi()),
]
