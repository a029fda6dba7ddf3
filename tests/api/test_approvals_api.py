"""/api/v1/approvals: an agent asks an operator to approve a write, and reads how it
was decided; no other agent can read it."""

from __future__ import annotations

import pytest

from orchestrator.core.approvals import approval_decide
from orchestrator.core.models import Approval, ApprovalReason, ApprovalStatus, Resource
from tests import factories
from tests.dashboard.builders import operator

pytestmark = pytest.mark.django_db(transaction=True)


def ask(client, **body):
    return client.post("/approvals", {"resource": "doc", "value": "proposed", **body})


def test_a_request_waits_for_an_operator_with_its_reason(alice) -> None:
    alice.create("doc", "draft")

    asked = ask(alice, expected_version=0, reason="ready to ship")

    assert asked.status_code == 202
    approval_id = asked.json()["approval_id"]
    assert asked.json() == {
        "approval_id": approval_id,
        "status": "pending",
        "version": None,
        "reason": "",
    }
    approval = Approval.objects.get(pk=approval_id)
    assert (approval.note, approval.reason) == ("ready to ship", ApprovalReason.REQUESTED)
    assert approval.agent_id == alice.agent.pk
    assert Resource.objects.get(name="doc").value == "draft"  # nothing written yet
    status = alice.get(f"/approvals/{approval_id}")
    assert status.status_code == 200
    assert status.json() | {"requested_at": None} == {
        "approval_id": approval_id,
        "resource": "doc",
        "status": "pending",
        "reason": "",
        "version": None,
        "proposed_value": "proposed",
        "applied_value": None,
        "requested_at": None,
        "decided_at": None,
    }


def test_the_status_shows_an_approval_an_edit_and_a_rejection_with_its_reason(alice) -> None:
    alice.create("doc", "draft")
    boss = operator()
    approved, edited, rejected = (
        ask(alice, value=value, reason="why not").json()["approval_id"]
        for value in ("one", "two", "three")
    )

    approval_decide(approval_id=approved, decision="approve", user=boss)
    approval_decide(approval_id=edited, decision="approve", user=boss, value="two, edited")
    approval_decide(approval_id=rejected, decision="reject", user=boss, note="too late")

    first, second, third = (
        alice.get(f"/approvals/{pk}").json() for pk in (approved, edited, rejected)
    )
    assert (first["status"], first["version"], first["applied_value"]) == ("approved", 1, "one")
    assert first["decided_at"] is not None
    assert second["status"] == "failed"  # the first approval moved the resource on
    assert second["reason"].startswith("not applied")
    assert (third["status"], third["reason"], third["version"]) == ("rejected", "too late", None)


def test_an_edited_approval_says_edited(alice) -> None:
    alice.create("doc", "draft")
    approval_id = ask(alice, value="mine").json()["approval_id"]

    approval_decide(approval_id=approval_id, decision="approve", user=operator(), value="theirs")

    status = alice.get(f"/approvals/{approval_id}").json()
    assert (status["status"], status["applied_value"], status["version"]) == ("edited", "theirs", 1)


def test_another_agent_cannot_read_it_and_an_unknown_id_looks_the_same(alice, bob) -> None:
    alice.create("doc")
    approval_id = ask(alice).json()["approval_id"]

    theirs = bob.get(f"/approvals/{approval_id}")
    unknown = alice.get(f"/approvals/{approval_id + 1000}")

    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"] == unknown.json()["error"] == "approval_not_found"


def test_the_checks_of_a_write_run_first(alice, bob) -> None:
    alice.create("doc", "v0")
    alice.write("doc", value="v1", expected_version=0)
    stale = ask(alice, expected_version=0)
    lock = bob.acquire("doc").json()
    not_holder = ask(alice)
    fenced = ask(bob, fence=lock["fence"] - 1, expected_version=1)
    held = ask(bob, fence=lock["fence"], expected_version=1)

    assert (not_holder.status_code, not_holder.json()["error"]) == (409, "not_holder")
    assert (stale.status_code, stale.json()["error"]) == (409, "version_conflict")
    assert stale.json()["current_version"] == 1
    assert (fenced.status_code, fenced.json()["error"]) == (409, "stale_fence")
    assert held.status_code == 202
    assert Approval.objects.get(pk=held.json()["approval_id"]).fence == lock["fence"]
    assert Approval.objects.filter(status=ApprovalStatus.PENDING).count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resource": "doc"}, "value"),
        ({"resource": "doc", "value": 1, "reason": 5}, "reason"),
        ({"resource": "doc", "value": 1, "expected_version": "0"}, "expected_version"),
        ({"resource": "doc", "value": 1, "note": "misspelt"}, "note"),
        ({"resource": "doc", "value": 1, "reason": "x" * 5001}, "reason"),
        ({"value": 1}, "resource"),
    ],
)
def test_bad_requests_are_400_naming_the_field(alice, body, field) -> None:
    alice.create("doc")

    refused = alice.post("/approvals", body)

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert refused.json()["detail"].startswith(f"{field}: ")
    assert not Approval.objects.exists()


@pytest.mark.parametrize("approval_id", ["0", "abc", "-1", str(2**63), "1.5"])
def test_a_bad_id_is_a_json_4xx(alice, approval_id) -> None:
    refused = alice.get(f"/approvals/{approval_id}")

    assert 400 <= refused.status_code < 500
    assert refused.json()["error"] in {"invalid_request", "not_found"}


def test_an_unknown_resource_is_404_and_another_teams_is_the_same(alice, make_client) -> None:
    stranger = make_client("stranger", team_=factories.team())
    stranger.create("theirs")

    for name in ("nowhere", "theirs"):
        refused = ask(alice, resource=name)
        assert (refused.status_code, refused.json()["error"]) == (404, "resource_not_found")
    assert not Approval.objects.exists()
