"""/api/v1/resources: create, read and write over HTTP, including the stale writer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from orchestrator.core.models import (
    Approval,
    Conflict,
    ConflictKind,
    ConflictPolicy,
    Lock,
    Resource,
)
from tests import factories
from tests.api.conftest import resource_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_answers_the_resource_in_the_read_shape(alice) -> None:
    created = alice.create("doc", {"text": "hi"})

    assert created.status_code == 201
    assert created.json() == {
        "name": "doc",
        "value": {"text": "hi"},
        "version": 0,
        "fence": 0,
        "holders": [],
        "waiters": [],
    }
    assert alice.read("doc").json() == created.json()
    assert Resource.objects.get(name="doc").team_id == alice.agent.team_id


def test_create_without_value_stores_null(alice) -> None:
    response = alice.post("/resources", {"name": "empty", "requires_approval": True})

    assert response.status_code == 201
    assert response.json()["value"] is None
    assert Resource.objects.get(name="empty").requires_approval


def test_create_with_a_taken_name_is_409(alice, bob) -> None:
    alice.create("doc", 1)

    response = bob.create("doc", 2)

    assert response.status_code == 409
    assert response.json()["error"] == "name_taken"
    assert alice.read("doc").json()["value"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"value": 1}, "name"),
        ({"name": 5}, "name"),
        ({"name": None}, "name"),
        ({"name": "x", "requires_approval": "yes"}, "requires_approval"),
        ({"name": "x", "requires_approval": 1}, "requires_approval"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_create_refuses_malformed_bodies_naming_the_field(alice, body, field) -> None:
    response = alice.post("/resources", body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["detail"]
    assert not Resource.objects.exists()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        # The length limits are in the OpenAPI document, so the request validation
        # refuses them (naming the field); the rest is the service's rule.
        ("", "invalid_request"),
        ("x" * 201, "invalid_request"),
        (" padded ", "invalid_name"),
        ("tab\there", "invalid_name"),
    ],
)
def test_create_refuses_invalid_names(alice, name, error) -> None:
    response = alice.create(name)

    assert response.status_code == 400
    assert response.json()["error"] == error
    if error == "invalid_request":
        assert "name" in response.json()["detail"]
    assert not Resource.objects.exists()


def test_create_refuses_an_oversized_value(alice, settings) -> None:
    settings.ORCHESTRATOR_MAX_VALUE_BYTES = 1000

    response = alice.create("big", "x" * 2000)

    assert response.status_code == 413
    assert response.json()["error"] == "value_too_large"
    assert alice.read("big").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "meeting room 4",
        "Ünïcødé 文書 📄",
        "docs/2024/report.md",
        "trailing/",
        "50% off",
        "a+b=c?x#frag",
        "..",
    ],
)
def test_names_with_any_characters_work_in_the_path(alice, name) -> None:
    assert alice.create(name, 1).status_code == 201

    read = alice.read(name)
    written = alice.write(name, value=2, expected_version=0)

    assert read.status_code == 200
    assert read.json()["name"] == name
    assert written.status_code == 200
    assert alice.read(name).json()["value"] == 2


def test_read_lists_holders_and_waiters(alice, bob) -> None:
    alice.create("doc")
    held = alice.acquire("doc", ttl=60).json()
    assert bob.acquire("doc", wait=True).status_code == 202

    body = alice.read("doc").json()

    assert body["fence"] == 1
    assert body["holders"] == [
        {"agent": "alice", "mode": "exclusive", "fence": 1, "expires_at": held["expires_at"]}
    ]
    assert [set(w) for w in body["waiters"]] == [{"agent", "mode", "since"}]
    assert body["waiters"][0]["agent"] == "bob"
    assert body["waiters"][0]["mode"] == "exclusive"
    assert parse_datetime(body["waiters"][0]["since"]) is not None


@pytest.mark.parametrize("name", ["nothing-here", "a\x00b", "x" * 300])
def test_read_of_an_unknown_resource_is_404(alice, name) -> None:
    response = alice.read(name)

    assert response.status_code == 404
    assert response.json()["error"] == "resource_not_found"


def test_write_applies_and_bumps_the_version(alice) -> None:
    alice.create("doc", 0)

    first = alice.write("doc", value={"n": 1})
    second = alice.write("doc", value=None, expected_version=1)

    assert (first.status_code, first.json()) == (
        200,
        {"version": 1, "released": False, "lock_id": None},
    )
    assert (second.status_code, second.json()) == (
        200,
        {"version": 2, "released": False, "lock_id": None},
    )
    assert alice.read("doc").json()["value"] is None


def test_write_with_a_stale_version_is_409_version_conflict(alice, bob) -> None:
    alice.create("doc", "v0")
    assert bob.write("doc", value="bob", expected_version=0).status_code == 200

    response = alice.write("doc", value="alice", expected_version=0)

    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "version_conflict"
    assert body["current_version"] == 1
    assert "version 0" in body["detail"]
    assert Conflict.objects.get(pk=body["conflict_id"]).kind == ConflictKind.WRITE_CONFLICT
    assert alice.read("doc").json()["value"] == "bob"


def test_write_while_another_agent_holds_the_lock_is_409_not_holder(alice, bob) -> None:
    alice.create("doc", "v0")
    bob.acquire("doc")

    response = alice.write("doc", value="alice")

    assert response.status_code == 409
    assert response.json()["error"] == "not_holder"
    assert "bob" in response.json()["detail"]
    assert alice.read("doc").json()["version"] == 0


def test_fenced_write_by_the_holder_applies(alice) -> None:
    alice.create("doc")
    lock = alice.acquire("doc").json()

    response = alice.write("doc", value="mine", fence=lock["fence"], expected_version=0)

    assert (response.status_code, response.json()) == (
        200,
        {"version": 1, "released": False, "lock_id": None},
    )


def test_write_to_a_protected_resource_waits_for_a_human(alice) -> None:
    alice.create("doc", "v0", requires_approval=True)

    response = alice.write("doc", value="v1")

    assert response.status_code == 202
    approval = Approval.objects.get(pk=response.json()["approval_id"])
    assert approval.proposed_value == "v1"
    assert list(response.json()) == ["approval_id"]
    assert alice.read("doc").json()["value"] == "v0"


def test_contested_write_becomes_an_approval_under_the_ask_operator_policy(make_client) -> None:
    team = factories.team(conflict_policy=ConflictPolicy.ASK_OPERATOR)
    carol, dave = make_client("carol", team), make_client("dave", team)
    carol.create("doc", "v0")
    dave.write("doc", value="dave", expected_version=0)

    response = carol.write("doc", value="carol", expected_version=0)

    assert response.status_code == 202
    assert Approval.objects.get(pk=response.json()["approval_id"]).base_version == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "value"),
        ({"value": 1, "expected_version": -1}, "expected_version"),
        ({"value": 1, "expected_version": 1.5}, "expected_version"),
        ({"value": 1, "expected_version": True}, "expected_version"),
        ({"value": 1, "expected_version": "0"}, "expected_version"),
        ({"value": 1, "fence": "1"}, "fence"),
        ({"value": 1, "fence": -2}, "fence"),
        ({"value": 1, "expected_verison": 0}, "expected_verison"),
    ],
)
def test_write_refuses_malformed_bodies_and_changes_nothing(alice, body, field) -> None:
    alice.create("doc", "v0")

    response = alice.put("/resources/doc", body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["detail"]
    assert alice.read("doc").json()["version"] == 0


def test_write_refuses_an_oversized_value_and_changes_nothing(alice, settings) -> None:
    settings.ORCHESTRATOR_MAX_VALUE_BYTES = 1000
    alice.create("doc", "v0")

    response = alice.write("doc", value=["x" * 100] * 20)

    assert response.status_code == 413
    assert response.json()["error"] == "value_too_large"
    assert alice.read("doc").json()["version"] == 0


@pytest.mark.parametrize(
    "raw_value",
    [
        '"a\\u0000b"',  # jsonb cannot store NUL: it used to be a database error (500)
        '{"k\\u0000": 1}',
        "[" * 150 + "]" * 150,  # deep enough to exhaust a later encoder: it used to be a 500
        '"\\ud800"',  # a lone surrogate cannot be encoded as UTF-8
        "NaN",
    ],
)
def test_write_refuses_values_the_database_cannot_store(alice, raw_value) -> None:
    alice.create("doc", "v0")

    response = alice.put("/resources/doc", '{"value": ' + raw_value + "}")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_value"
    assert alice.read("doc").json()["version"] == 0


def test_write_to_an_unknown_resource_is_404(alice) -> None:
    response = alice.write("nothing-here", value=1)

    assert response.status_code == 404
    assert response.json()["error"] == "resource_not_found"


def test_stale_writer_is_fenced_off_after_its_lease_expired(alice, bob) -> None:
    alice.create("ledger", {"owner": None})
    stale = alice.acquire("ledger", ttl=30).json()
    # Alice's worker stalls (paused, partitioned) until her lease has run out.
    past = timezone.now() - timedelta(hours=1)
    Lock.objects.filter(pk=stale["id"]).update(
        acquired_at=past - timedelta(seconds=30), expires_at=past
    )
    fresh = bob.acquire("ledger", ttl=30)
    assert fresh.status_code == 201
    assert fresh.json()["fence"] == stale["fence"] + 1
    assert bob.write("ledger", value={"owner": "bob"}, fence=fresh.json()["fence"]).json() == {
        "version": 1,
        "released": False,
        "lock_id": None,
    }

    response = alice.write("ledger", value={"owner": "alice"}, fence=stale["fence"])

    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "stale_fence"
    assert "ledger" in body["detail"]
    conflict = Conflict.objects.get(pk=body["conflict_id"])
    assert conflict.kind == ConflictKind.STALE_FENCE
    assert [a.name for a in conflict.agents.all()] == ["alice"]
    state = alice.read("ledger").json()
    assert (state["value"], state["version"]) == ({"owner": "bob"}, 1)
    listed = alice.get("/conflicts?kind=stale_fence").json()
    assert [(c["id"], c["agents"], c["resources"]) for c in listed] == [
        (conflict.pk, ["alice"], ["ledger"])
    ]
    # Her lease is gone for good: renewing or releasing says so.
    assert alice.post(f"/locks/{stale['id']}/renew", {"ttl": 30}).json()["error"] == "lease_lost"
    assert alice.delete(f"/locks/{stale['id']}").status_code == 410


def test_resource_url_quotes_everything() -> None:
    assert resource_url("a/b c") == "/api/v1/resources/a%2Fb%20c"
