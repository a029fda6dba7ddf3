"""Long polls that wait without a thread each, and the cap on an agent's waits at once.

Against a real daphne process (on the test database and Redis), over real HTTP with
one connection per poll; the async wait in-process through the project's ASGI
handler, as daphne calls it; the cap through the test client too (the synchronous
path). Deadlines are generous liveness bounds, never timings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connection
from django.test import override_settings

from orchestrator.asgi import django_asgi_app
from orchestrator.core import wakeups
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import Agent, LockMode
from orchestrator.core.tokens import agent_token_reset
from orchestrator.processes import Helper, free_port, http_ok
from tests import factories
from tests.concurrency.processes import wait_until
from tests.dashboard import servers

pytestmark = [pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds: liveness only


@pytest.fixture(scope="module")
def daphne(django_db_setup, django_db_blocker) -> Iterator[tuple[str, int]]:
    """A daphne process serving orchestrator.asgi: its base URL and its pid."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_dir = ROOT / "build" / "logs" / "long-polls"
    log_dir.mkdir(parents=True, exist_ok=True)
    web = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"{base}/healthz"), log=log_dir / "daphne.log",
        env=servers.environment(), cwd=ROOT, start_timeout=servers.START_TIMEOUT,
        new_session=False,
    )  # fmt: skip
    with web:
        assert web.pid is not None
        yield base, web.pid


@pytest.fixture
def doc(alice) -> str:
    assert alice.create("doc", "v0").status_code == 201
    return "doc"


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def agents(team: Any, count: int, prefix: str) -> list[tuple[Agent, str]]:
    made = [factories.agent(team_=team, name=f"{prefix}-{i}") for i in range(count)]
    return [(agent, agent_token_reset(agent=agent)) for agent in made]


def queue_behind_holder(
    count: int, mode: str = LockMode.EXCLUSIVE
) -> tuple[str, int, list[tuple[Agent, str, int]]]:
    """A resource held by a holder, and ``count`` agents queued for it in order: the
    holder's token and lock id, and each waiter's (agent, token, request id)."""
    team = factories.team(default_lease_ttl=120)
    doc = factories.resource(name="doc", team=team)
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource=doc).lock
    queued = []
    for agent, token in agents(team, count, "waiter"):
        result = lock_acquire(agent=agent, resource=doc, mode=mode, wait=True)
        assert result.status == "waiting"
        queued.append((agent, token, result.request.pk))
    holder_token = agent_token_reset(agent=holder)
    connection.close()
    return holder_token, held.pk, queued


def parked_waits(agent_ids: list[int]) -> int:
    return sum(wakeups.waits_held(pk) for pk in agent_ids)


def http_client(base: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=f"{base}/api/v1", limits=limits, timeout=DEADLINE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_200_concurrent_long_polls_on_one_queue_are_all_granted_in_queue_order(daphne):
    """Each waiter long-polls on a connection of its own; once granted it releases,
    which grants the next. Every one is granted, in the order the requests queued."""
    base, _pid = daphne
    holder_token, held_id, queued = queue_behind_holder(200)
    granted: list[tuple[int, int]] = []  # (fence, queue position), in answer order

    async def waiter(client: httpx.AsyncClient, position: int, token: str, request_id: int):
        while True:
            response = await client.get(
                f"/lock-requests/{request_id}", params={"wait": 30}, headers=bearer(token)
            )
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] != "waiting":
                break
        assert body["status"] == "granted", body
        granted.append((body["lock"]["fence"], position))
        released = await client.delete(f"/locks/{body['lock']['id']}", headers=bearer(token))
        assert released.status_code == 204, released.text

    async def scene() -> None:
        async with http_client(base) as client:
            tasks = [
                asyncio.create_task(waiter(client, position, token, request_id))
                for position, (_agent, token, request_id) in enumerate(queued)
            ]
            released = await client.delete(f"/locks/{held_id}", headers=bearer(holder_token))
            assert released.status_code == 204
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=240)

    asyncio.run(scene())

    assert len(granted) == 200
    assert [position for _fence, position in sorted(granted)] == list(range(200))
    assert [position for _fence, position in granted] == list(range(200))


def test_waiting_long_polls_hold_no_thread_each(daphne):
    """60 polls parked at once: daphne's threads do not grow with them (a thread per
    wait took it from 7 to 67), and a release answers every one."""
    base, pid = daphne
    holder_token, held_id, queued = queue_behind_holder(60, mode=LockMode.SHARED)
    ids = [agent.pk for agent, _token, _request in queued]

    async def scene() -> list[dict]:
        async with http_client(base) as client:
            polls = [
                asyncio.create_task(
                    client.get(
                        f"/lock-requests/{request_id}", params={"wait": 30}, headers=bearer(token)
                    )
                )
                for _agent, token, request_id in queued
            ]
            await sync_to_async(wait_until)(
                lambda: parked_waits(ids) == 60, timeout=DEADLINE, what="60 parked polls"
            )
            threads = threads_of(pid)
            assert threads < 30, f"{threads} threads while 60 polls wait"
            released = await client.delete(f"/locks/{held_id}", headers=bearer(holder_token))
            assert released.status_code == 204
            return [response.json() for response in await asyncio.gather(*polls)]

    answers = asyncio.run(scene())

    assert {answer["status"] for answer in answers} == {"granted"}
    assert parked_waits(ids) == 0


def test_over_the_cap_a_long_poll_is_429_and_a_slot_frees_when_its_client_leaves(daphne):
    """The default cap (10 waits an agent): the 11th is 429 too_many_waits with
    Retry-After; a poll whose client disconnects gives its slot back at once."""
    base, _pid = daphne
    holder_token, held_id, [(agent, token, request_id)] = queue_behind_holder(1)
    url = f"/lock-requests/{request_id}"

    async def scene() -> None:
        async with http_client(base) as client:

            def poll() -> asyncio.Task:
                return asyncio.create_task(
                    client.get(url, params={"wait": 30}, headers=bearer(token))
                )

            polls = [poll() for _ in range(10)]
            await sync_to_async(wait_until)(
                lambda: wakeups.waits_held(agent.pk) == 10, timeout=DEADLINE, what="10 waits"
            )

            refused = await client.get(url, params={"wait": 30}, headers=bearer(token))
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"] == "too_many_waits"
            assert "ORCHESTRATOR_MAX_WAITS_PER_AGENT" in refused.json()["detail"]
            # Polling without waiting is never refused.
            plain = await client.get(url, headers=bearer(token))
            assert (plain.status_code, plain.json()["status"]) == (200, "waiting")

            polls[0].cancel()  # the client goes away: its connection closes
            await sync_to_async(wait_until)(
                lambda: wakeups.waits_held(agent.pk) == 9, timeout=DEADLINE, what="a freed slot"
            )
            polls[0] = poll()  # and the slot can be taken again
            await sync_to_async(wait_until)(
                lambda: wakeups.waits_held(agent.pk) == 10, timeout=DEADLINE, what="10 again"
            )

            released = await client.delete(f"/locks/{held_id}", headers=bearer(holder_token))
            assert released.status_code == 204
            answers = await asyncio.gather(*polls)
            assert {answer.json()["status"] for answer in answers} == {"granted"}

    asyncio.run(scene())

    assert wakeups.waits_held(agent.pk) == 0


def test_a_lock_set_long_poll_over_the_cap_is_429(daphne):
    base, _pid = daphne
    team = factories.team(default_lease_ttl=120)
    doc = factories.resource(name="doc", team=team)
    holder = factories.agent(team_=team, name="holder")
    lock_acquire(agent=holder, resource=doc)
    agent, token = agents(team, 1, "setter")[0]
    connection.close()

    async def scene() -> None:
        async with http_client(base) as client:
            created = await client.post(
                "/lock-sets", json={"resources": ["doc"], "wait": True}, headers=bearer(token)
            )
            assert created.status_code == 202, created.text
            url = f"/lock-sets/{created.json()['id']}"
            polls = [  # the server's cap is its default, 10
                asyncio.create_task(client.get(url, params={"wait": 30}, headers=bearer(token)))
                for _ in range(10)
            ]
            await sync_to_async(wait_until)(
                lambda: wakeups.waits_held(agent.pk) == 10, timeout=DEADLINE, what="10 waits"
            )
            refused = await client.get(url, params={"wait": 5}, headers=bearer(token))
            assert (refused.status_code, refused.json()["error"]) == (429, "too_many_waits")
            assert refused.headers["Retry-After"] == "1"
            cancelled = await client.delete(url, headers=bearer(token))
            assert cancelled.status_code == 200
            answers = await asyncio.gather(*polls)
            assert {answer.json()["status"] for answer in answers} == {"cancelled"}

    asyncio.run(scene())

    assert wakeups.waits_held(agent.pk) == 0


# --- the synchronous path (the test client): the same cap ------------------------------


@override_settings(ORCHESTRATOR_MAX_WAITS_PER_AGENT=1)
def test_the_cap_holds_for_polls_waiting_in_a_thread(alice, bob, doc) -> None:
    import threading

    held = alice.acquire(doc).json()
    request_id = bob.acquire(doc, wait=True).json()["request_id"]
    answers: list = []

    def poll() -> None:
        try:
            answers.append(bob.get(f"/lock-requests/{request_id}?wait=20"))
        finally:
            connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        wait_until(lambda: wakeups.waits_held(bob.agent.pk) == 1, timeout=DEADLINE)
        refused = bob.get(f"/lock-requests/{request_id}?wait=20")
        assert refused.status_code == 429
        assert refused["Retry-After"] == "1"
        assert refused.json()["error"] == "too_many_waits"
        assert refused.json()["retry_after"] == 1
    finally:
        assert alice.delete(f"/locks/{held['id']}").status_code == 204
        poller.join(DEADLINE)
    assert answers[0].json()["status"] == "granted"
    assert wakeups.waits_held(bob.agent.pk) == 0  # given back when the wait ended


# --- the async wait, through the project's ASGI handler in this process ----------------


def asgi_scope(path: str, query: str, token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def body_of(communicator: ApplicationCommunicator) -> bytes:
    body = b""
    while True:
        message = await communicator.receive_output(DEADLINE)
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


@pytest.mark.asyncio
async def test_an_async_long_poll_wakes_on_the_grant(alice, bob, doc) -> None:
    import json
    import time

    held = await sync_to_async(alice.acquire)(doc)
    queued = await sync_to_async(bob.acquire)(doc, wait=True)
    request_id = queued.json()["request_id"]
    communicator = ApplicationCommunicator(
        django_asgi_app, asgi_scope(f"/api/v1/lock-requests/{request_id}", "wait=25", bob.token)
    )
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    began = time.monotonic()
    await sync_to_async(wait_until)(
        lambda: wakeups.waits_held(bob.agent.pk) == 1, timeout=DEADLINE, what="a parked poll"
    )
    # Parked: the status line is out (a streaming answer), its body is not.
    start = await communicator.receive_output(DEADLINE)
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert await communicator.receive_nothing(0.2)

    await sync_to_async(lock_release)(lock_id=held.json()["id"], agent=alice.agent)

    answer = json.loads(await body_of(communicator))
    assert (answer["status"], answer["lock"]["fence"]) == ("granted", 2)
    assert time.monotonic() - began < 20  # woken by the grant, before its 25 s ran out
    await communicator.wait(DEADLINE)
    assert await sync_to_async(wakeups.waits_held)(bob.agent.pk) == 0


@pytest.mark.asyncio
async def test_an_async_long_poll_whose_client_disconnects_gives_its_slot_back(
    alice, bob, doc
) -> None:
    await sync_to_async(alice.acquire)(doc)
    queued = await sync_to_async(bob.acquire)(doc, wait=True)
    request_id = queued.json()["request_id"]
    communicator = ApplicationCommunicator(
        django_asgi_app, asgi_scope(f"/api/v1/lock-requests/{request_id}", "wait=25", bob.token)
    )
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    await sync_to_async(wait_until)(
        lambda: wakeups.waits_held(bob.agent.pk) == 1, timeout=DEADLINE, what="a parked poll"
    )

    await communicator.send_input({"type": "http.disconnect"})

    await communicator.wait(DEADLINE)  # the request ends: its wait was cancelled
    assert await sync_to_async(wakeups.waits_held)(bob.agent.pk) == 0


@pytest.mark.asyncio
async def test_an_async_long_poll_without_redis_still_sees_the_grant(alice, bob, doc) -> None:
    """Redis unreachable for the wait: the poll reads the database every second instead
    of failing (never a 500), and answers the grant."""
    import json

    held = await sync_to_async(alice.acquire)(doc)
    queued = await sync_to_async(bob.acquire)(doc, wait=True)
    request_id = queued.json()["request_id"]
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(REDIS_URL=nowhere):  # this event loop's client is made with it
        communicator = ApplicationCommunicator(
            django_asgi_app,
            asgi_scope(f"/api/v1/lock-requests/{request_id}", "wait=25", bob.token),
        )
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(DEADLINE)
        assert start["status"] == 200
        assert await communicator.receive_nothing(1.5)  # waiting, polling the database
        await sync_to_async(lock_release)(lock_id=held.json()["id"], agent=alice.agent)
        body = await body_of(communicator)
    assert json.loads(body)["status"] == "granted"
    await communicator.wait(DEADLINE)


def test_the_openapi_document_declares_the_429_of_the_long_polls(alice) -> None:
    document = alice.client.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/lock-requests/{request_id}", "/api/v1/lock-sets/{lock_set_id}"):
        operation = document["paths"][path]["get"]
        assert "429" in operation["responses"], path
        assert "too_many_waits" in operation["description"]


@pytest.mark.asyncio
async def test_an_async_long_poll_whose_wake_up_is_lost_is_found_by_the_sweep(
    alice, bob, doc, monkeypatch
) -> None:
    """No wake-up is pushed for the grant (as if Redis had lost it), and the poll parks
    in short stretches: the periodic sweep of the parked polls finds it granted."""
    import json
    import time

    monkeypatch.setattr(wakeups, "PARK_SECONDS", 0.2)  # parks again, several times
    held = await sync_to_async(alice.acquire)(doc)
    queued = await sync_to_async(bob.acquire)(doc, wait=True)
    request_id = queued.json()["request_id"]
    communicator = ApplicationCommunicator(
        django_asgi_app, asgi_scope(f"/api/v1/lock-requests/{request_id}", "wait=25", bob.token)
    )
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(DEADLINE)
    assert start["status"] == 200
    assert await communicator.receive_nothing(0.6)  # parked, across several stretches

    wakeups.unregister(wakeups.notify_http_waiters)
    try:
        await sync_to_async(lock_release)(lock_id=held.json()["id"], agent=alice.agent)
    finally:
        wakeups.register(wakeups.notify_http_waiters)
    released = time.monotonic()

    answer = json.loads(await body_of(communicator))
    assert answer["status"] == "granted"
    assert time.monotonic() - released < 15  # by a sweep, not at the end of its 25 s
    await communicator.wait(DEADLINE)
