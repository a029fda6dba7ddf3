"""Two real MCP client sessions coordinating through /mcp/ on daphne: the tools they
are shown, a race for one lock, fencing, refusals of unauthenticated requests, a
human approval, and what an agent may ask about itself."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest

from orchestrator.core.approvals import approval_decide
from orchestrator.core.models import (
    Approval,
    ApprovalStatus,
    Conflict,
    Lock,
    LockSet,
    Resource,
)
from orchestrator.core.resources import resource_create
from orchestrator.core.tokens import agent_token_reset
from orchestrator.mcp.tools import TOOLS
from tests import factories
from tests.dashboard.builders import operator
from tests.mcp.conftest import call, mcp_session, refused, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOOL_NAMES = {
    "acquire",
    "cancel",
    "wait",
    "read",
    "write",
    "release",
    "renew",
    "request_approval",
    "approval_status",
    "list_resources",
    "whoami",
}


def test_the_tools_are_listed_with_descriptions_and_input_schemas(live, agents):
    _, token = agents.make("lister")

    async def scenario():
        async with mcp_session(live, token) as session:
            return (await session.list_tools()).tools

    tools = {tool.name: tool for tool in run(scenario())}
    assert set(tools) == TOOL_NAMES == set(TOOLS)
    for tool in tools.values():
        assert len(tool.description) > 80, tool.name
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False
    acquire = tools["acquire"].input_schema
    assert acquire["required"] == ["resource"]
    assert acquire["properties"]["mode"]["enum"] == ["exclusive", "shared"]
    assert set(acquire["properties"]) == {"resource", "mode", "ttl", "wait_seconds"}
    assert set(tools["write"].input_schema["properties"]) == {
        "resource",
        "value",
        "expected_version",
        "fence",
        "release",
    }
    assert tools["read"].annotations.read_only_hint is True
    assert tools["write"].annotations.read_only_hint is False


def test_two_sessions_race_one_is_granted_the_other_queued_then_granted_by_wait(live, agents):
    """The loser waits in a long ``wait`` while the winner releases: the wait returns as
    soon as the grant happens (each request has a thread of its own), with the value the
    winner wrote and a fence above the winner's."""
    _, alice_token = agents.make("alice")
    _, bob_token = agents.make("bob")
    resource_create(name="doc", value={"n": 0}, team=agents.team)

    async def scenario():
        async with mcp_session(live, alice_token) as a, mcp_session(live, bob_token) as b:
            first, second = await asyncio.gather(
                call(a, "acquire", resource="doc"), call(b, "acquire", resource="doc")
            )
            answers = {"alice": first, "bob": second}
            winner_name = next(name for name, ans in answers.items() if ans["status"] == "granted")
            loser_name = "bob" if winner_name == "alice" else "alice"
            winner, loser = (a, b) if winner_name == "alice" else (b, a)
            grant, queued = answers[winner_name], answers[loser_name]
            assert queued["status"] == "waiting" and queued["request_id"] >= 1
            assert grant["version"] == 0 and grant["value"] == {"n": 0}

            started = time.monotonic()
            waiting = asyncio.ensure_future(
                call(loser, "wait", request_id=queued["request_id"], wait_seconds=20)
            )
            written = await call(
                winner,
                "write",
                resource="doc",
                value={"n": 1},
                fence=grant["fence"],
                expected_version=grant["version"],
            )
            assert written == {"status": "applied", "version": 1, "released": False}
            assert await call(winner, "release", lock_id=grant["lock_id"]) == {
                "status": "released",
                "lock_id": grant["lock_id"],
            }
            second_grant = await waiting
            return grant, second_grant, time.monotonic() - started

    grant, second_grant, took = run(scenario())
    assert second_grant["status"] == "granted"
    assert second_grant["fence"] > grant["fence"]
    assert second_grant["version"] == 1 and second_grant["value"] == {"n": 1}
    assert took < 15, "the wait was not answered when the lock was granted"


def test_a_write_with_an_old_fence_is_a_stale_fence_tool_error(live, agents):
    _, token = agents.make("writer")
    resource_create(name="doc", value="v0", team=agents.team)

    async def scenario():
        async with mcp_session(live, token) as session:
            first = await call(session, "acquire", resource="doc", ttl=30)
            await call(session, "release", lock_id=first["lock_id"])
            second = await call(session, "acquire", resource="doc")
            text, body = await refused(
                session, "write", resource="doc", value="stale", fence=first["fence"]
            )
            fresh = await call(
                session, "write", resource="doc", value="fresh", fence=second["fence"]
            )
            return first, second, text, body, fresh

    first, second, text, body, fresh = run(scenario())
    assert second["fence"] > first["fence"]
    assert text.startswith("stale_fence: ")
    assert body["error"] == "stale_fence" and body["conflict_id"] is not None
    assert fresh == {"status": "applied", "version": 1, "released": False}
    assert Resource.objects.get(name="doc").value == "fresh"


def test_bad_input_is_an_invalid_request_tool_error_naming_the_field(live, agents):
    _, token = agents.make("sloppy")
    resource_create(name="doc", team=agents.team)

    async def scenario():
        async with mcp_session(live, token) as session:
            return [
                await refused(session, "acquire", resource="doc", ttl="5"),
                await refused(session, "acquire", resource="doc", colour="red"),
                await refused(session, "write", resource="doc"),
                await refused(session, "read", resource="nowhere"),
                await refused(session, "list_resources", prefix="a\x00"),
            ]

    (ttl, _), (extra, _), (missing, _), (unknown, body), (nul, _) = run(scenario())
    assert ttl.startswith("invalid_request: ttl: ")
    assert extra.startswith("invalid_request: colour: ")
    assert missing.startswith("invalid_request: value: ")
    assert unknown.startswith("resource_not_found: ") and body["error"] == "resource_not_found"
    assert nul.startswith("invalid_request: prefix: ")


@pytest.mark.parametrize("authorization", [None, "Bearer orc_not-a-token", "Basic abc"])
def test_no_token_or_a_bad_one_gets_401_and_nothing_is_written(live, agents, authorization):
    resource_create(name="doc", value="kept", team=agents.team)
    headers = {"Accept": "application/json, text/event-stream"}
    if authorization:
        headers["Authorization"] = authorization
    write = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "write", "arguments": {"resource": "doc", "value": "overwritten"}},
    }
    response = httpx2.post(f"{live}/mcp/", json=write, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="orchestrator"')
    assert response.json()["error"] == "unauthorized"
    res = Resource.objects.get(name="doc")
    assert (res.value, res.version) == ("kept", 0)


def test_the_real_client_without_a_token_cannot_even_initialize(live):
    statuses: list[int] = []

    async def scenario():
        async with mcp_session(live, None, statuses):
            pass

    with pytest.raises(BaseExceptionGroup, match="TaskGroup"):
        run(scenario())
    assert statuses == [401]


def test_a_human_approval_an_approval_and_a_rejection_with_its_reason(live, agents):
    _, token = agents.make("proposer")
    resource_create(name="contract", value="draft", team=agents.team)
    boss = operator("boss")

    async def ask(session, value, reason):
        answer = await call(
            session,
            "request_approval",
            resource="contract",
            value=value,
            expected_version=0,
            reason=reason,
        )
        assert answer["status"] == "pending"
        return answer["approval_id"]

    async def scenario():
        async with mcp_session(live, token) as session:
            first = await ask(session, "final", "ready for signature")
            second = await ask(session, "gibberish", "just trying")
            pending = await call(session, "approval_status", approval_id=first)
            return first, second, pending

    first, second, pending = run(scenario())
    assert pending["status"] == "pending" and pending["version"] is None
    assert Approval.objects.get(pk=first).note == "ready for signature"
    # The operator decides, as the dashboard does.
    approval_decide(approval_id=first, decision="approve", user=boss)
    approval_decide(
        approval_id=second, decision="reject", user=boss, note="not a contract: gibberish"
    )

    async def statuses():
        async with mcp_session(live, token) as session:
            return (
                await call(session, "approval_status", approval_id=first),
                await call(session, "approval_status", approval_id=second),
                await call(session, "read", resource="contract"),
            )

    approved, rejected, read = run(statuses())
    assert approved["status"] == "approved" and approved["version"] == 1
    assert approved["applied_value"] == "final"
    assert rejected["status"] == "rejected"
    assert rejected["reason"] == "not a contract: gibberish" and rejected["version"] is None
    assert Approval.objects.get(pk=second).status == ApprovalStatus.REJECTED
    assert read["value"] == "final" and read["version"] == 1


def test_an_agent_cannot_read_another_agents_approval(live, agents):
    _, token = agents.make("asker")
    _, other_token = agents.make("snoop")
    resource_create(name="doc", team=agents.team)

    async def scenario():
        async with mcp_session(live, token) as mine, mcp_session(live, other_token) as theirs:
            asked = await call(
                mine, "request_approval", resource="doc", value=1, expected_version=0
            )
            return await refused(theirs, "approval_status", approval_id=asked["approval_id"])

    text, body = run(scenario())
    assert text.startswith("approval_not_found: ") and body["error"] == "approval_not_found"


def test_whoami_and_list_resources(live, agents):
    _, token = agents.make("self-aware")
    _, other_token = agents.make("holder")
    for name in ("src/a.py", "src/b.py", "docs/readme"):
        resource_create(name=name, team=agents.team)
    resource_create(name="src/elsewhere.py", team=factories.team())  # another team's

    async def scenario():
        async with mcp_session(live, token) as me, mcp_session(live, other_token) as other:
            held = await call(other, "acquire", resource="src/b.py")
            mine = await call(me, "acquire", resource="src/a.py", ttl=120)
            queued = await call(me, "acquire", resource="src/b.py", mode="shared")
            return (
                held,
                mine,
                queued,
                await call(me, "whoami"),
                await call(me, "list_resources", prefix="src/"),
                await call(me, "list_resources"),
            )

    held, mine, queued, whoami, src, everything = run(scenario())
    assert whoami["agent"]["name"] == "self-aware"
    assert whoami["team"]["name"] == agents.team.name
    assert whoami["paused"] is False and whoami["paused_by"] == []
    (lock,) = whoami["locks"]
    assert lock["lock_id"] == mine["lock_id"] and lock["resource"] == "src/a.py"
    assert lock["fence"] == mine["fence"] and 100 < lock["lease_seconds_left"] <= 120
    (wait,) = whoami["waits"]
    assert wait["request_id"] == queued["request_id"] and wait["resource"] == "src/b.py"
    assert wait["mode"] == "shared"
    assert [r["name"] for r in src["resources"]] == ["src/a.py", "src/b.py"]
    assert src["truncated"] is False
    assert [r["held_by"] for r in src["resources"]] == [["self-aware"], ["holder"]]
    assert [r["name"] for r in everything["resources"]] == ["docs/readme", "src/a.py", "src/b.py"]
    assert held["status"] == "granted"


def test_an_agent_of_another_team_is_refused_and_leaves_nothing_written(live, agents):
    resource_create(name="doc", value="ours", team=agents.team)
    outsider = factories.agent(team_=factories.team(), name="outsider")
    resource_create(name="mine", value=0, team=outsider.team)
    token = agent_token_reset(agent=outsider)

    async def scenario():
        async with mcp_session(live, token) as session:
            return [
                await refused(session, "acquire", resource="doc"),
                await refused(session, "acquire", resource=["mine", f"{agents.team.name}::doc"]),
                await refused(session, "write", resource="doc", value="theirs"),
                await refused(session, "read", resource="doc"),
                await call(session, "list_resources"),
            ]

    (acquire, _), (acquire_set, _), (write, _), (read, _), listed = run(scenario())
    for text in (acquire, acquire_set, write, read):
        assert text.startswith("resource_not_found: ")
    assert [res["name"] for res in listed["resources"]] == ["mine"]
    res = Resource.objects.get(name="doc")
    assert (res.value, res.version, res.fence) == ("ours", 0, 0)
    assert not Conflict.objects.exists()
    # The set took nothing, not even its own team's resource.
    assert not Lock.objects.exists() and not LockSet.objects.exists()


def test_a_shared_resource_is_named_owner_name_and_a_read_share_refuses_writes(live, agents):
    from orchestrator.core.models import GrantAccess, ResourceGrant

    resource_create(name="doc", value="ours", team=agents.team)
    outsider = factories.agent(team_=factories.team(), name="outsider")
    ResourceGrant.objects.create(
        owner=agents.team, team=outsider.team, prefix="", access=GrantAccess.READ
    )
    token = agent_token_reset(agent=outsider)
    name = f"{agents.team.name}::doc"

    async def scenario():
        async with mcp_session(live, token) as session:
            read = await call(session, "read", resource=name)
            shared = await call(session, "acquire", resource=name, mode="shared")
            await call(session, "release", lock_id=shared["lock_id"])
            exclusive, _ = await refused(session, "acquire", resource=name)
            write, _ = await refused(session, "write", resource=name, value="theirs")
            return read, shared, exclusive, write, await call(session, "list_resources")

    read, shared, exclusive, write, listed = run(scenario())
    assert (read["resource"], read["value"]) == (name, "ours")
    assert shared["resource"] == name
    assert exclusive.startswith("forbidden: ") and write.startswith("forbidden: ")
    assert [(r["name"], r["access"]) for r in listed["resources"]] == [(name, "read")]
    assert Resource.objects.get(name="doc").version == 0
    assert not Conflict.objects.exists()


def test_nothing_a_client_can_send_gets_a_server_error(live, agents):
    _, token = agents.make("prodder")
    url = f"{live}/mcp/"
    accept = "application/json, text/event-stream"
    auth = {"Authorization": f"Bearer {token}", "Accept": accept}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    sent = [
        ("GET", {}, None),
        ("DELETE", {}, None),
        ("PUT", {}, b"{}"),
        ("POST", {"Content-Type": "application/json"}, b"{not json"),
        ("POST", {"Content-Type": "text/plain"}, b"hello"),
        ("POST", {"Content-Type": "application/json"}, b"[1, 2]"),
        ("POST", {"Content-Type": "application/json"}, b'"a string"'),
        ("POST", {}, json.dumps({**call, "params": {"name": "nope"}}).encode()),
        ("POST", {}, json.dumps({**call, "params": {"name": "read", "arguments": 5}}).encode()),
        ("POST", {}, json.dumps({**call, "params": {"name": "read"}}).encode()),
        ("POST", {}, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "no/such"}).encode()),
        ("POST", {"Host": "evil.example"}, json.dumps({**call, "params": {}}).encode()),
        ("POST", {"Origin": "http://evil.example"}, json.dumps(call).encode()),
    ]
    for method, headers, body in sent:
        headers = {"Content-Type": "application/json", **auth, **headers}
        response = httpx2.request(method, url, headers=headers, content=body, timeout=10)
        assert response.status_code < 500, (method, headers, body, response.text)
        if method != "POST":  # stateless: no event stream to open, no session to end
            assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_a_cancelled_request_leaves_the_queue_and_the_next_one_goes_first(live, agents):
    """An agent that gives up a queued request takes it out of the queue: when the
    holder releases, the agent queued behind it is granted, not the one that left."""
    _, alice_token = agents.make("alice")
    _, bob_token = agents.make("bob")
    carol, carol_token = agents.make("carol")
    resource_create(name="doc", value=0, team=agents.team)

    async def scenario():
        async with (
            mcp_session(live, alice_token) as a,
            mcp_session(live, bob_token) as b,
            mcp_session(live, carol_token) as c,
        ):
            held = await call(a, "acquire", resource="doc")
            bobs = await call(b, "acquire", resource="doc")
            carols = await call(c, "acquire", resource="doc")
            cancelled = await call(b, "cancel", request_id=bobs["request_id"])
            others, _ = await refused(c, "cancel", request_id=carols["request_id"] + 1000)
            not_hers, _ = await refused(c, "cancel", request_id=bobs["request_id"])
            await call(a, "release", lock_id=held["lock_id"])
            granted = await call(c, "wait", request_id=carols["request_id"])
            return cancelled, others, not_hers, granted

    cancelled, others, not_hers, granted = run(scenario())
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "cancelled by its agent")
    assert others.startswith("request_not_found:")
    assert not_hers.startswith("not_your_request:")
    assert granted["status"] == "granted"
    assert Lock.objects.get(released_at__isnull=True).agent == carol
