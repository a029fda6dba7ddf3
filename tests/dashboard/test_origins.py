"""Which origins may open the live feed (orchestrator/dashboard/origins.py): the site's
own (scheme, host and port of the handshake, the host one of ALLOWED_HOSTS) and
CSRF_TRUSTED_ORIGINS, through the real ASGI application, as a signed-in viewer."""

from __future__ import annotations

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async as sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections

from orchestrator.asgi import application
from tests.dashboard import builders

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

TRUSTED = ["https://console.example.com", "https://*.example.org"]
OWN = "localhost:8000"  # the Host of the handshakes below, unless a case says otherwise


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest_asyncio.fixture
async def cookie(redis_conn) -> bytes:
    account = await sync_to_async(builders.viewer)()
    return f"sessionid={await sync_to_async(builders.session_cookie)(account)}".encode()


async def handshake(
    cookie: bytes, origin: str | None, *, host: str = OWN, scheme: str = "ws"
) -> tuple[bool, object]:
    headers = [(b"host", host.encode()), (b"cookie", cookie)]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    communicator.scope["scheme"] = scheme  # as daphne sets it (the communicator does not)
    try:
        return await communicator.connect()
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:8000", OWN, "ws"),
        ("HTTP://LOCALHOST:8000", OWN, "ws"),  # scheme and host are case-insensitive
        ("https://localhost", "localhost", "wss"),
        ("https://localhost:443", "localhost", "wss"),  # the default port, said
        ("http://localhost", "localhost:80", "ws"),
        ("http://[::1]:8000", "[::1]:8000", "ws"),
        ("https://console.example.com", OWN, "ws"),  # trusted: a TLS proxy's public origin
        ("https://console.example.com:443", OWN, "ws"),
        ("https://a.b.example.org", OWN, "ws"),  # trusted: a subdomain of *.example.org
    ],
)
async def test_the_sites_own_origins_connect(cookie, settings, origin, host, scheme) -> None:
    settings.CSRF_TRUSTED_ORIGINS = TRUSTED
    settings.ALLOWED_HOSTS = ["localhost", "[::1]"]

    connected, _ = await handshake(cookie, origin, host=host, scheme=scheme)

    assert connected


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:8001", OWN, "ws"),  # right host, wrong port
        ("http://localhost", OWN, "ws"),  # right host, the default port (80), not 8000
        ("https://localhost:8000", OWN, "ws"),  # wrong scheme for a ws socket
        ("http://localhost", "localhost", "wss"),  # wrong scheme for a wss socket
        ("ws://localhost:8000", OWN, "ws"),  # pages are http(s); no page has this origin
        ("http://127.0.0.1:8000", OWN, "ws"),  # an allowed host, but not this one
        ("http://evil.example:8000", OWN, "ws"),
        # A DNS-rebound name: Origin and Host agree, but the host is not allowed.
        ("http://evil.example:8000", "evil.example:8000", "ws"),
        ("http://console.example.com", OWN, "ws"),  # trusted host, wrong scheme
        ("https://console.example.com:8443", OWN, "ws"),  # trusted host, wrong port
        ("https://example.org.evil.example", OWN, "ws"),
        ("https://console.example.com.evil.example", OWN, "ws"),
        ("null", OWN, "ws"),  # a sandboxed frame, a file: page
        ("http://localhost:8000/path", OWN, "ws"),
        ("http://user@localhost:8000", OWN, "ws"),
        ("http://localhost:99999", OWN, "ws"),
        ("", OWN, "ws"),
        # Missing: browsers always send Origin on a WebSocket handshake; only other
        # programs leave it out, and they could send any origin they chose, so it is
        # refused (fail closed) rather than waved through.
        (None, OWN, "ws"),
        ("http://localhost:8000", "", "ws"),  # no Host: no own origin to compare with
    ],
)
async def test_other_origins_are_closed_before_the_handshake(
    cookie, settings, origin, host, scheme
) -> None:
    settings.CSRF_TRUSTED_ORIGINS = TRUSTED
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

    connected, code = await handshake(cookie, origin, host=host, scheme=scheme)

    assert not connected
    assert code == 1000  # the validator's close, not the consumer's 4401 / 4403
