"""Lock sets over MCP: `acquire` with a list of resources, by four real client sessions
at once, each naming the same three counters in its own order. All or nothing, in one
global order: nobody deadlocks, and no increment is lost."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from orchestrator.core.models import Conflict, ConflictKind, LockSet, RequestStatus, Resource
from orchestrator.core.resources import resource_create
from tests.mcp.conftest import call, mcp_session, refused, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIENTS = 4
ROUNDS = 8
COUNTERS = ["x", "y", "z"]
DEADLINE = 120  # liveness only: a deadlock would stop everyone long before


async def _take(session, resources: list[str]) -> dict:
    """Acquire the set, waiting as long as it takes (each wait at most 10 s)."""
    answer = await call(session, "acquire", resource=resources, ttl=60, wait_seconds=10)
    while answer["status"] == "waiting":
        answer = await call(session, "wait", lock_set_id=answer["lock_set_id"], wait_seconds=10)
    assert answer["status"] == "granted", answer
    return answer


async def _client(base: str, token: str, order: list[str], log: list) -> None:
    async with mcp_session(base, token) as session:
        for _ in range(ROUNDS):
            granted = await _take(session, order)
            locks = {lock["resource"]: lock for lock in granted["locks"]}
            assert set(locks) == set(COUNTERS)
            for name in order:  # read-modify-write each counter under the set's locks
                lock = locks[name]
                read = await call(session, "read", resource=name)
                written = await call(
                    session,
                    "write",
                    resource=name,
                    value=read["value"] + 1,
                    fence=lock["fence"],
                    expected_version=read["version"],
                )
                assert written["status"] == "applied", written
            released = await call(session, "release", lock_set_id=granted["lock_set_id"])
            assert released["status"] == "released"
            log.append(granted["lock_set_id"])


def test_four_clients_take_three_counters_in_different_orders(live, agents):
    for name in COUNTERS:
        resource_create(team=agents.team, name=name, value=0)
    tokens = [agents.make(f"set{i}")[1] for i in range(CLIENTS)]
    orders = [list(order) for order in itertools.permutations(COUNTERS)][:CLIENTS]
    assert len({tuple(order) for order in orders}) == CLIENTS
    log: list[int] = []

    async def everyone() -> None:
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    _client(live, token, order, log)
                    for token, order in zip(tokens, orders, strict=True)
                )
            ),
            DEADLINE,
        )

    began = time.monotonic()
    run(everyone())
    values = dict(Resource.objects.filter(name__in=COUNTERS).values_list("name", "value"))
    assert values == dict.fromkeys(COUNTERS, CLIENTS * ROUNDS)  # no lost update
    assert len(log) == CLIENTS * ROUNDS
    assert not Conflict.objects.filter(kind=ConflictKind.DEADLOCK).exists()
    assert not Conflict.objects.exists()  # no stale fence, no version conflict either
    sets = LockSet.objects.filter(agent__team=agents.team)
    assert set(sets.values_list("status", flat=True)) == {RequestStatus.GRANTED}
    print(f"\n{CLIENTS} clients x {ROUNDS} lock sets of 3 in {time.monotonic() - began:.1f}s")


def test_a_waiting_set_over_mcp_is_one_wait_and_can_be_cancelled(live, agents):
    for name in COUNTERS:
        resource_create(team=agents.team, name=name, value=0)
    _, holder_token = agents.make("holder")
    _, token = agents.make("setter")

    async def scenario() -> None:
        async with mcp_session(live, holder_token) as holder, mcp_session(live, token) as setter:
            held = await call(holder, "acquire", resource="z")
            waiting = await call(setter, "acquire", resource=["z", "y", "x"])
            assert waiting["status"] == "waiting"
            assert waiting["waiting_on"] == "z"
            me = await call(setter, "whoami")
            assert [w["resource"] for w in me["waits"]] == ["z"]
            assert {w["lock_set_id"] for w in me["waits"]} == {waiting["lock_set_id"]}
            still = await call(setter, "wait", lock_set_id=waiting["lock_set_id"], wait_seconds=0)
            assert still["status"] == "waiting"
            cancelled = await call(setter, "cancel", lock_set_id=waiting["lock_set_id"])
            assert cancelled["status"] == "cancelled"
            assert (await call(setter, "whoami"))["locks"] == []
            # One of request_id and lock_set_id, not both nor neither.
            text, _ = await refused(setter, "wait", request_id=1, lock_set_id=1)
            assert "invalid_request" in text
            text, _ = await refused(setter, "wait")
            assert "invalid_request" in text
            # Another agent's set is not yours.
            text, _ = await refused(holder, "wait", lock_set_id=waiting["lock_set_id"])
            assert "not_your_lock_set" in text
            await call(holder, "release", lock_id=held["lock_id"])

    run(scenario())
