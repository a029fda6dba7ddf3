"""The lock cycle in two tool calls over MCP, with the official client against daphne:
``acquire`` (its grant says the value and version), then ``write`` with
``release: true``, which releases the lock exactly when the write is applied; the
agent waiting behind it is granted in that commit, with the new value and version."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.core.models import Lock, LockEnd, Resource
from orchestrator.core.resources import resource_create
from orchestrator.mcp.tools import TOOLS
from tests.mcp.conftest import call, mcp_session, refused, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_write_with_release_ends_the_lock_and_the_waiter_gets_the_new_value(live, agents):
    _, alice_token = agents.make("alice")
    _, bob_token = agents.make("bob")
    resource_create(name="doc", value={"n": 1}, team=agents.team)

    async def scenario():
        async with mcp_session(live, alice_token) as a, mcp_session(live, bob_token) as b:
            grant = await call(a, "acquire", resource="doc")
            queued = await call(b, "acquire", resource="doc")
            waiting = asyncio.ensure_future(
                call(b, "wait", request_id=queued["request_id"], wait_seconds=20)
            )
            written = await call(
                a, "write", resource="doc", value={"n": grant["value"]["n"] + 1},
                expected_version=grant["version"], fence=grant["fence"], release=True,
            )  # fmt: skip
            return grant, queued, written, await waiting

    grant, queued, written, second = run(scenario())
    assert (grant["version"], grant["value"]) == (0, {"n": 1})
    assert queued["status"] == "waiting"
    assert written == {
        "status": "applied",
        "version": 1,
        "released": True,
        "lock_id": grant["lock_id"],
    }
    assert Lock.objects.get(pk=grant["lock_id"]).end == LockEnd.RELEASED
    assert second["status"] == "granted"
    assert (second["version"], second["value"]) == (1, {"n": 2})
    assert second["fence"] == grant["fence"] + 1


def test_a_refused_write_or_a_pending_approval_releases_nothing(live, agents):
    _, token = agents.make("writer")
    resource_create(name="doc", value=0, team=agents.team)
    resource_create(name="press", value=0, team=agents.team, requires_approval=True)

    async def scenario():
        async with mcp_session(live, token) as session:
            lock = await call(session, "acquire", resource="doc")
            await call(session, "write", resource="doc", value=1, fence=lock["fence"])
            stale = await refused(
                session, "write", resource="doc", value=2, expected_version=0,
                fence=lock["fence"], release=True,
            )  # fmt: skip
            unfenced = await refused(session, "write", resource="doc", value=2, release=True)
            press = await call(session, "acquire", resource="press")
            pending = await call(
                session, "write", resource="press", value=1, expected_version=0,
                fence=press["fence"], release=True,
            )  # fmt: skip
            return lock, press, stale, unfenced, pending

    lock, press, (stale_text, stale), (unfenced, _), pending = run(scenario())
    assert stale_text.startswith("version_conflict: ") and stale["current_version"] == 1
    assert unfenced.startswith("invalid_request: release: ")
    assert pending["status"] == "approval_pending"
    assert "not released" in pending["detail"]
    live = set(Lock.objects.filter(released_at__isnull=True).values_list("pk", flat=True))
    assert live == {lock["lock_id"], press["lock_id"]}
    assert Resource.objects.get(name="doc").version == 1


def test_the_write_tool_tells_a_model_to_release_with_its_last_write(live, agents):
    _, token = agents.make("lister")

    async def scenario():
        async with mcp_session(live, token) as session:
            return {tool.name: tool for tool in (await session.list_tools()).tools}

    tools = run(scenario())
    write = tools["write"]
    assert write.input_schema["properties"]["release"]["type"] == "boolean"
    assert "release: true" in write.description and "LAST write" in write.description
    assert write.description == TOOLS["write"].description
    assert "no `read`" in tools["acquire"].description
