"""The WebSocket endpoint: real channel layer (Redis), real session authentication."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from orchestrator.asgi import application
from orchestrator.core.control import agents_set_paused
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def session_headers() -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(factories.superuser())
    cookie = client.cookies["sessionid"].value
    return [(b"origin", b"http://localhost"), (b"cookie", f"sessionid={cookie}".encode())]


async def test_anonymous_websocket_is_refused(redis_conn) -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"origin", b"http://localhost")]
    )
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4401
    await communicator.disconnect()


async def test_foreign_origin_is_refused(redis_conn) -> None:
    headers = await sync_to_async(session_headers)()
    headers[0] = (b"origin", b"http://evil.example")
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_logged_in_user_receives_committed_events(redis_conn) -> None:
    headers = await sync_to_async(session_headers)()
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    agent = await sync_to_async(factories.agent)()
    await sync_to_async(agents_set_paused)(agents=[agent], paused=True)
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "events"
    (event,) = frame["events"]
    assert event["kind"] == "agent.paused"
    assert event["agent"] == agent.pk
    await communicator.disconnect()
