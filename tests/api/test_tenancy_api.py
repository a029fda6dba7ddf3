"""Teams as tenants over the HTTP API and the runtime's tools: another team's
resource is not found unless shared, a read-only share refuses writes with 403,
and a refused request leaves nothing written (core/tenancy.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from agents.steps import run_tool
from orchestrator.core.models import (
    Approval,
    Conflict,
    Event,
    GrantAccess,
    Lock,
    LockRequest,
    ResourceGrant,
    ResourceVersion,
    Step,
)
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stranger(make_client):
    return make_client("stranger", factories.team(name="elsewhere"))


@pytest.fixture
def doc(alice) -> str:
    assert alice.create("doc", "v0").status_code == 201
    return "doc"


@pytest.fixture
def step(stranger) -> Step:
    run = factories.run(team=stranger.agent.team)
    return Step.objects.create(run=run, agent=stranger.agent, number=1, attempts=1)


def written() -> dict[str, int]:
    models = (Lock, LockRequest, Conflict, Approval, ResourceVersion, Event)
    return {model.__name__: model.objects.count() for model in models}


def qualified(alice, name: str) -> str:
    return f"{alice.agent.team.name}::{name}"


# What a stranger may try on alice's team's resource: (method, path, body) by name.
def attempts(name: str, fence: int) -> list[tuple[str, str, Any]]:
    path = f"/resources/{quote(name, safe='/')}"
    return [
        ("get", path, None),
        ("put", path, {"value": "x", "expected_version": 0}),
        ("put", path, {"value": "x", "fence": fence}),
        ("post", "/locks", {"resource": name, "wait": True}),
        ("post", "/locks", {"resource": name, "mode": "shared", "wait": True}),
    ]


@pytest.mark.parametrize("qualify", [False, True], ids=["plain", "qualified"])
def test_another_teams_resource_is_not_found_and_nothing_is_written(
    alice, stranger, doc, step, qualify: bool
) -> None:
    name = qualified(alice, doc) if qualify else doc
    fence = alice.acquire(doc).json()["fence"]
    before = written()

    for method, path, body in attempts(name, fence):
        response = getattr(stranger, method)(path, body) if body else stranger.get(path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == "resource_not_found"
    for tool, arguments in (
        ("read", {"resource": name}),
        ("acquire", {"resource": name}),
        ("write", {"resource": name, "value": "x", "expected_version": 0}),
        ("request_approval", {"resource": name, "value": "x", "expected_version": 0}),
    ):
        result = run_tool(stranger.agent, step, tool, arguments)
        assert (result["ok"], result["error"]) == (False, "resource_not_found"), tool
    # A name that exists nowhere gets the very same answer.
    assert stranger.get("/resources/nothing-here").json()["error"] == "resource_not_found"
    assert written() == before
    assert alice.read(doc).json()["version"] == 0


def test_a_read_share_reads_and_refuses_writes_with_403(alice, stranger, doc, step) -> None:
    ResourceGrant.objects.create(
        owner=alice.agent.team, team=stranger.agent.team, prefix="", access=GrantAccess.READ
    )
    name = qualified(alice, doc)

    read = stranger.get(f"/resources/{quote(name)}")
    assert (read.status_code, read.json()["value"], read.json()["name"]) == (200, "v0", name)
    shared = stranger.post("/locks", {"resource": qualified(alice, doc), "mode": "shared"})
    assert shared.status_code == 201
    stranger.delete(f"/locks/{shared.json()['id']}")
    before = written()

    for method, path, body in attempts(name, 1)[1:]:
        if body.get("mode") == "shared":
            continue
        response = getattr(stranger, method)(path, body)
        assert (response.status_code, response.json()["error"]) == (403, "forbidden"), path
    result = run_tool(
        stranger.agent, step, "write", {"resource": qualified(alice, doc), "value": "x"}
    )
    assert (result["ok"], result["error"]) == (False, "forbidden")
    assert written() == before  # no Conflict recorded on alice's team's resource


def test_a_read_write_share_takes_part_in_the_protocol(alice, stranger, doc) -> None:
    ResourceGrant.objects.create(
        owner=alice.agent.team,
        team=stranger.agent.team,
        prefix="do",
        access=GrantAccess.READ_WRITE,
    )
    name = qualified(alice, doc)

    held = stranger.acquire(name).json()
    assert alice.acquire(doc).json()["error"] == "busy"  # one lock manager for both teams
    answer = stranger.put(
        f"/resources/{quote(name)}",
        {"value": "theirs", "fence": held["fence"], "expected_version": 0},
    )
    assert (answer.status_code, answer.json()["version"]) == (200, 1)
    assert alice.read(doc).json()["value"] == "theirs"


def test_conflicts_are_listed_for_the_agents_team_only(alice, stranger, doc) -> None:
    fence = alice.acquire(doc).json()["fence"]
    alice.write(doc, value="stale", fence=fence + 1)  # a stale fence: a conflict of alice's

    assert [c["kind"] for c in alice.get("/conflicts").json()] == ["stale_fence"]
    assert stranger.get("/conflicts").json() == []


def test_the_runtime_sends_the_fence_of_the_lock_on_the_resource_it_names(
    alice, stranger, doc
) -> None:
    """A runtime agent's write carries the fence of its lock on the resource it names,
    found by the tenancy's lookup: a shared one by owner::name, never the resource of
    the same plain name in another team."""
    ResourceGrant.objects.create(
        owner=alice.agent.team, team=stranger.agent.team, access=GrantAccess.READ_WRITE
    )
    theirs = qualified(alice, doc)
    run = factories.run(team=stranger.agent.team)

    def step(number: int) -> Step:  # a new step: nothing remembered from the last one
        return Step.objects.create(run=run, agent=stranger.agent, number=number, attempts=1)

    granted = run_tool(stranger.agent, step(1), "acquire", {"resource": theirs})
    written = run_tool(stranger.agent, step(2), "write", {"resource": theirs, "value": "x"})
    assert (written["ok"], written["version"]) == (True, 1)
    assert ResourceVersion.objects.get(resource__name=doc, version=1).fence == granted["fence"]

    # Its own "doc" is free: a write to it goes unfenced, not with the other doc's fence.
    stranger.create(doc, "own")
    own = run_tool(stranger.agent, step(3), "write", {"resource": doc, "value": "y"})
    assert (own["ok"], own["version"]) == (True, 1)
    assert alice.read(doc).json()["value"] == "x"
