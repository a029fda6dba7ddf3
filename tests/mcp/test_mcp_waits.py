"""MCP waits (``acquire`` with wait_seconds, ``wait``) under the cap on an agent's
waits at once, against daphne: over it, a tool error says so; a wait that ends gives
its slot back."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from orchestrator.core import wakeups
from orchestrator.core.locks import lock_acquire
from orchestrator.core.resources import resource_create
from tests.concurrency.processes import wait_until
from tests.mcp.conftest import call, mcp_session, refused, run

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE = 60.0  # seconds: liveness only
CAP = 10  # the server's default ORCHESTRATOR_MAX_WAITS_PER_AGENT


def test_a_wait_over_the_agent_s_cap_is_a_tool_error_and_ended_waits_free_their_slots(live, agents):
    holder, holder_token = agents.make("holder")
    bob, bob_token = agents.make("bob")
    doc = resource_create(name="doc", value={"n": 0}, team=agents.team)
    lock_acquire(agent=holder, resource=doc)

    async def scenario() -> tuple[list[dict], str, dict]:
        async with mcp_session(live, bob_token) as session, mcp_session(live, holder_token) as h:
            queued = await call(session, "acquire", resource="doc", wait_seconds=0)
            assert queued["status"] == "waiting"
            request_id = queued["request_id"]
            waits = [
                asyncio.ensure_future(call(session, "wait", request_id=request_id, wait_seconds=20))
                for _ in range(CAP - 1)
            ]
            # acquire with wait_seconds waits too, and counts the same.
            waits.append(
                asyncio.ensure_future(call(session, "acquire", resource="doc", wait_seconds=20))
            )
            await sync_to_async(wait_until)(
                lambda: wakeups.waits_held(bob.pk) == CAP, timeout=DEADLINE, what="10 waits"
            )
            text, body = await refused(session, "wait", request_id=request_id, wait_seconds=20)
            # A wait of 0 s does not wait: never refused.
            polled = await call(session, "wait", request_id=request_id, wait_seconds=0)
            assert polled["status"] == "waiting"

            whoami = await call(h, "whoami")
            lock_id = whoami["locks"][0]["lock_id"]
            assert (await call(h, "release", lock_id=lock_id))["status"] == "released"
            return await asyncio.gather(*waits), text, body

    answers, text, body = run(scenario())

    assert text.startswith("too_many_waits: ")
    assert "ORCHESTRATOR_MAX_WAITS_PER_AGENT" in text
    assert body["error"] == "too_many_waits" and body["retry_after"] == 1
    assert {answer["status"] for answer in answers} == {"granted"}
    assert wakeups.waits_held(bob.pk) == 0
