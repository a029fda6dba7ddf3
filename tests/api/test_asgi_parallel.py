"""Under ASGI (daphne), requests to the sync API views are served in parallel, and
the middleware chain runs whole in the request's thread.

Django's ASGIHandler gives each request its own thread context, so one
request blocked in the database must not hold up the others. The check is
not timed: a request is parked on a row lock held by the test, and another
request must be answered while it is parked. If views ran one at a time, the
second request would queue behind the first and the deadline would expire.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connection, transaction

from orchestrator.asgi import OneHopASGIHandler, django_asgi_app
from orchestrator.core.models import Resource
from orchestrator.core.rowlocks import lock_resource

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

DEADLINE = 20  # seconds; only reached when the check fails


async def asgi_call(
    path: str, token: str, *, method: str = "GET", body: bytes = b""
) -> tuple[dict, bytes]:
    """Call ``path`` through the project's ASGI handler, as daphne does: the response
    start message (status, headers) and the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(django_asgi_app, scope)
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(DEADLINE)
    content = await communicator.receive_output(DEADLINE)
    await communicator.wait(DEADLINE)
    return start, content["body"]


async def asgi_get(path: str, token: str, *, method: str = "GET", body: bytes = b"") -> int:
    """The status code of ``path`` called through the project's ASGI handler."""
    start, _ = await asgi_call(path, token, method=method, body=body)
    return start["status"]


def hold_row_lock(resource_id: int, locked: threading.Event, release: threading.Event) -> None:
    try:
        with transaction.atomic():
            lock_resource(resource_id)
            locked.set()
            release.wait(DEADLINE)
    finally:
        connection.close()


def close_connection() -> None:
    connection.close()


def lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


async def test_a_request_blocked_in_the_database_does_not_block_others(alice) -> None:
    try:
        await sync_to_async(alice.create)("hot")
        await sync_to_async(alice.create)("cold")
        hot_id = await sync_to_async(lambda: Resource.objects.get(name="hot").pk)()
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_row_lock, args=(hot_id, locked, release))
        holder.start()
        try:
            assert await asyncio.to_thread(locked.wait, DEADLINE)
            # Acquiring takes the resource's row lock, so this request parks on it.
            acquire = b'{"resource": "hot", "mode": "exclusive", "ttl": 30, "wait": false}'
            hot = asyncio.create_task(
                asgi_get("/api/v1/locks", alice.token, method="POST", body=acquire)
            )
            # Wait (with a deadline) until the hot request is parked on the row lock.
            async with asyncio.timeout(DEADLINE):
                while not await sync_to_async(lock_waiters)():
                    await asyncio.sleep(0.01)

            cold = await asyncio.wait_for(asgi_get("/api/v1/resources/cold", alice.token), DEADLINE)

            assert cold == 200
            assert not hot.done()
        finally:
            release.set()
            await asyncio.to_thread(holder.join, DEADLINE)
        assert await asyncio.wait_for(hot, DEADLINE) == 201
    finally:
        # The thread that ran this test's own queries would keep its connection open.
        await sync_to_async(close_connection)()


async def test_the_middleware_chain_runs_in_one_thread_and_still_applies() -> None:
    # Loaded in sync mode: the chain is one call, not a hand-off per middleware hook.
    assert isinstance(django_asgi_app, OneHopASGIHandler)
    assert not asyncio.iscoroutinefunction(django_asgi_app._middleware_chain)
    # An async-only middleware would be wrapped in async_to_sync and split the chain
    # (ServeStatic's did): every middleware must be able to run sync.
    from django.conf import settings
    from django.utils.module_loading import import_string

    async_only = [
        path
        for path in settings.MIDDLEWARE
        if not getattr(import_string(path), "sync_capable", True)
    ]
    assert async_only == []
    # ... and every middleware still does its work: security headers, CSRF cookie.
    start, body = await asgi_call("/login/", token="")
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 200
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert "csrftoken=" in headers["set-cookie"]
    assert b'name="csrfmiddlewaretoken"' in body
    await sync_to_async(close_connection)()
