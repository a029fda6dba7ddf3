"""The client under the server's cap on an agent's waits at once: a long poll refused
with 429 too_many_waits is asked again after Retry-After, so a lock that is granted
later is still the client's."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from orchestrator_client import Client
from orchestrator_client._transport import HttpxTransport

from orchestrator.core import wakeups
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.resources import resource_create
from tests.client.conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 10  # the server's default ORCHESTRATOR_MAX_WAITS_PER_AGENT


class Recording(HttpxTransport):
    """The client's transport, keeping the status of every answer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: list[int] = []

    def send(self, call):
        reply = super().send(call)
        self.statuses.append(reply.status)
        return reply


def test_a_client_over_the_cap_of_waits_polls_again_after_retry_after(live, agents):
    doc = resource_create(team=agents.team, name="doc", value=0)
    holder, _ = agents.make("holder")
    bob, bob_token = agents.make("bob")
    held = lock_acquire(agent=holder, resource=doc).lock
    request_id = lock_acquire(agent=bob, resource=doc, wait=True).request.pk
    url = f"{live}/api/v1/lock-requests/{request_id}"
    parked = threading.Event()

    async def hold_every_slot() -> list[str]:
        """Bob's CAP other waits, parked until the lock is granted."""
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {bob_token}"}, timeout=60
        ) as http:
            polls = [asyncio.create_task(http.get(url, params={"wait": 30})) for _ in range(CAP)]
            await asyncio.to_thread(
                eventually, lambda: wakeups.waits_held(bob.pk) == CAP, "10 parked waits"
            )
            parked.set()
            return [(await poll).json()["status"] for poll in polls]

    others: list[str] = []
    slots = threading.Thread(target=lambda: others.extend(asyncio.run(hold_every_slot())))
    slots.start()
    got: dict = {}
    transport = Recording(live, bob_token, 60)
    try:
        assert parked.wait(60)
        with Client(live, bob_token, transport=transport) as client:
            waiter = threading.Thread(
                target=lambda: got.setdefault("lock", client.lock("doc", timeout=60).acquire())
            )
            waiter.start()
            eventually(lambda: transport.statuses.count(429) >= 2, "polls refused, asked again")
            lock_release(lock_id=held.pk, agent=holder)
            waiter.join(60)
            assert got["lock"].held and got["lock"].fence == held.token + 1
            got["lock"].release()
    finally:
        slots.join(60)
    assert others == ["granted"] * CAP
    assert wakeups.waits_held(bob.pk) == 0
