"""/api/v1/lock-sets: several resources all or nothing, queued as one request."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from orchestrator.core.models import Lock, LockRequest, LockSet, ResourceGrant
from tests import factories
from tests.api.conftest import API

pytestmark = pytest.mark.django_db(transaction=True)


def counts() -> tuple[int, int, int]:
    return Lock.objects.count(), LockRequest.objects.count(), LockSet.objects.count()


@pytest.fixture
def docs(alice):
    for name in ("c", "b", "a"):  # ascending id is c, b, a
        assert alice.create(name, value=0).status_code == 201
    return ["a", "b", "c"]


def test_a_free_set_is_granted_with_every_lock(alice, docs) -> None:
    answer = alice.post("/lock-sets", {"resources": docs, "ttl": 60})
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["status"] == "granted"
    assert body["resources"] == ["c", "b", "a"]  # the order they are taken in
    assert [lock["resource"] for lock in body["locks"]] == ["c", "b", "a"]
    assert all(lock["fence"] == 1 for lock in body["locks"])
    assert (body["waiting_on"], body["held"]) == (None, 0)
    whoami = alice.get("/whoami").json()
    assert {lock["lock_set_id"] for lock in whoami["locks"]} == {body["id"]}
    # Each lock is an ordinary lock: write with its fence, release it by id.
    c = body["locks"][0]
    assert alice.write("c", value=1, fence=c["fence"], expected_version=0).status_code == 200
    assert alice.delete(f"/locks/{c['id']}").status_code == 204


def test_busy_without_wait_takes_nothing(alice, bob, docs) -> None:
    assert bob.acquire("b").status_code == 201
    before = counts()
    answer = alice.post("/lock-sets", {"resources": docs})
    assert answer.status_code == 409
    body = answer.json()
    assert body["error"] == "busy"
    assert [holder["agent"] for holder in body["busy"]["b"]] == ["bob"]
    assert counts() == before


def test_a_waiting_set_is_one_request_granted_when_the_holder_releases(alice, bob, docs) -> None:
    held = bob.acquire("b").json()
    answer = alice.post("/lock-sets", {"resources": docs, "wait": True})
    assert answer.status_code == 202
    waiting = answer.json()
    assert (waiting["status"], waiting["waiting_on"], waiting["held"]) == ("waiting", "b", 1)
    assert waiting["locks"] == []
    waits = alice.get("/whoami").json()["waits"]
    assert [(w["resource"], w["lock_set_id"]) for w in waits] == [("b", waiting["id"])]

    polled: dict = {}

    def poll() -> None:
        try:
            polled["answer"] = alice.get(f"/lock-sets/{waiting['id']}?wait=20")
        finally:
            connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    assert bob.delete(f"/locks/{held['id']}").status_code == 204
    poller.join(25)
    assert not poller.is_alive()
    granted = polled["answer"].json()
    assert granted["status"] == "granted"
    assert [lock["resource"] for lock in granted["locks"]] == ["c", "b", "a"]


def test_cancel_releases_what_the_waiting_set_held(alice, bob, docs) -> None:
    bob.acquire("a")  # the highest id: the set holds c and b while it waits
    waiting = alice.post("/lock-sets", {"resources": docs, "wait": True}).json()
    assert waiting["held"] == 2
    answer = alice.delete(f"/lock-sets/{waiting['id']}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert alice.get("/whoami").json()["locks"] == []
    assert alice.get(f"/lock-sets/{waiting['id']}").json()["status"] == "cancelled"


def test_only_its_agent_may_read_or_cancel_it(alice, bob, docs) -> None:
    mine = alice.post("/lock-sets", {"resources": docs}).json()
    assert bob.get(f"/lock-sets/{mine['id']}").status_code == 403
    assert bob.delete(f"/lock-sets/{mine['id']}").status_code == 403
    assert alice.get("/lock-sets/999999").status_code == 404
    assert alice.get("/lock-sets/0").status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"resources": []},
        {"resources": "a"},
        {"resources": ["a", 5]},
        {"resources": ["a"], "ttl": 0},
        {"resources": ["a"], "mode": "upgrade"},
        {"resources": ["a"], "wait": "yes"},
        {"resources": ["a"], "extra": 1},
        {"resources": [f"r{i}" for i in range(65)]},
    ],
)
def test_bad_input_is_a_400_with_nothing_taken(alice, docs, body) -> None:
    before = counts()
    answer = alice.post("/lock-sets", body)
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"] == "invalid_request"
    assert counts() == before


def test_another_teams_resource_is_not_found_and_nothing_is_taken(alice, make_client, docs) -> None:
    other = make_client("mallory", team_=factories.team(name="other"))
    other.create("secret")
    before = counts()
    answer = alice.post("/lock-sets", {"resources": ["a", "other::secret"], "wait": True})
    assert answer.status_code == 404
    assert answer.json()["error"] == "resource_not_found"
    assert counts() == before


def test_a_read_share_takes_shared_sets_only(alice, make_client, team, docs) -> None:
    other_team = factories.team(name="other")
    other = make_client("mallory", team_=other_team)
    ResourceGrant.objects.create(owner=team, team=other_team, prefix="", access="read")
    before = counts()
    refused = other.post("/lock-sets", {"resources": [f"{team.name}::a", f"{team.name}::b"]})
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert counts() == before
    shared = other.post(
        "/lock-sets", {"resources": [f"{team.name}::a", f"{team.name}::b"], "mode": "shared"}
    )
    assert shared.status_code == 201
    assert shared.json()["resources"] == [f"{team.name}::b", f"{team.name}::a"]


def test_the_openapi_document_has_the_lock_set_operations(alice) -> None:
    paths = alice.client.get(f"{API}/openapi.json").json()["paths"]
    assert {"post"} <= set(paths[f"{API}/lock-sets"])
    assert {"get", "delete"} <= set(paths[f"{API}/lock-sets/{{lock_set_id}}"])
