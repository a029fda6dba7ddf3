"""/api/v1/resources (the list) and /api/v1/whoami: what an agent may ask about the
resources it can use and about itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.core.control import agents_set_paused, teams_set_paused
from orchestrator.core.models import Lock
from tests import factories
from tests.api.conftest import API

pytestmark = pytest.mark.django_db(transaction=True)


def listing(client, prefix: str | None = None):
    query = {} if prefix is None else {"prefix": prefix}
    return client.client.get(f"{API}/resources", query)


def names(answer) -> list[str]:
    return [resource["name"] for resource in answer.json()["resources"]]


def test_the_list_is_by_name_with_versions_and_holders(alice, bob) -> None:
    for name in ("src/b.py", "src/a.py", "docs/readme", "srcs"):
        alice.create(name)
    alice.write("src/a.py", value=1)
    bob.acquire("src/b.py")

    everything = listing(alice)
    src = listing(alice, "src/")

    assert everything.status_code == src.status_code == 200
    assert names(everything) == ["docs/readme", "src/a.py", "src/b.py", "srcs"]
    assert everything.json()["truncated"] is False
    a, b = src.json()["resources"]
    assert (a["name"], a["version"], a["held_by"], a["requires_approval"]) == (
        "src/a.py",
        1,
        [],
        False,
    )
    assert (b["name"], b["held_by"]) == ("src/b.py", ["bob"])
    assert names(listing(alice, "nothing/")) == []


def test_an_expired_lease_is_not_a_holder(alice) -> None:
    alice.create("doc")
    alice.acquire("doc")
    past = timezone.now() - timedelta(seconds=10)
    Lock.objects.update(acquired_at=past - timedelta(seconds=1), expires_at=past)

    assert listing(alice).json()["resources"][0]["held_by"] == []
    assert alice.get("/whoami").json()["locks"] == []


def test_another_teams_resources_are_not_listed(alice, make_client) -> None:
    alice.create("ours")
    make_client("stranger", team_=factories.team()).create("theirs")

    assert names(listing(alice)) == ["ours"]


def test_the_list_is_truncated_at_the_limit(alice, monkeypatch) -> None:
    from orchestrator.core import selectors

    for index in range(3):
        alice.create(f"r{index}")
    monkeypatch.setattr(selectors.resources_visible, "__kwdefaults__", {"prefix": "", "limit": 2})

    listed = listing(alice).json()

    assert [r["name"] for r in listed["resources"]] == ["r0", "r1"]
    assert listed["truncated"] is True


@pytest.mark.parametrize("prefix", ["a\x00b", "x" * 201, "tab\there"])
def test_a_bad_prefix_is_400(alice, prefix) -> None:
    refused = listing(alice, prefix)

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert refused.json()["detail"].startswith("prefix: ")


def test_whoami_says_who_what_it_holds_and_waits_for(alice, bob) -> None:
    alice.create("held")
    alice.create("busy")
    bob.acquire("busy")
    lock = alice.acquire("held", ttl=60).json()
    queued = alice.acquire("busy", mode="shared", wait=True).json()

    me = alice.get("/whoami")

    assert me.status_code == 200
    body = me.json()
    assert body["agent"] == {"id": alice.agent.pk, "name": "alice", "role": ""}
    team = alice.agent.team
    assert body["team"] == {"id": team.pk, "name": team.name, "default_lease_ttl": 30}
    assert (body["paused"], body["paused_by"]) == (False, [])
    (held,) = body["locks"]
    assert (held["lock_id"], held["resource"], held["mode"], held["fence"]) == (
        lock["id"],
        "held",
        "exclusive",
        lock["fence"],
    )
    assert 50 < held["lease_seconds_left"] <= 60
    (wait,) = body["waits"]
    assert (wait["request_id"], wait["resource"], wait["mode"]) == (
        queued["request_id"],
        "busy",
        "shared",
    )
    assert bob.get("/whoami").json()["waits"] == []


def test_whoami_says_who_paused_it(alice) -> None:
    agents_set_paused(agents=[alice.agent], paused=True)
    teams_set_paused(teams=[alice.agent.team], paused=True)

    body = alice.get("/whoami").json()

    assert (body["paused"], body["paused_by"]) == (True, ["agent", "team"])


def test_without_a_token_both_are_401(client) -> None:
    for path in ("/api/v1/resources", "/api/v1/whoami", "/api/v1/approvals/1"):
        assert client.get(path).status_code == 401


def test_shared_resources_are_listed_and_held_under_their_qualified_names(
    alice, make_client
) -> None:
    from orchestrator.core.models import GrantAccess, ResourceGrant

    owner = make_client("owner", team_=factories.team(name="library"))
    for name in ("books/a", "books/b", "private"):
        owner.create(name)
    ResourceGrant.objects.create(
        owner=owner.agent.team, team=alice.agent.team, prefix="books/", access=GrantAccess.READ
    )
    alice.create("ours")

    listed = listing(alice).json()["resources"]
    shared_only = listing(alice, "library::books/b").json()["resources"]
    held = alice.acquire("library::books/a", mode="shared").json()

    assert [(r["name"], r["access"]) for r in listed] == [
        ("ours", "own"),
        ("library::books/a", "read"),
        ("library::books/b", "read"),
    ]
    assert [r["name"] for r in shared_only] == ["library::books/b"]
    assert held["resource"] == "library::books/a"
    assert [lock["resource"] for lock in alice.get("/whoami").json()["locks"]] == [
        "library::books/a"
    ]
