"""Approval policies seen by an agent of the HTTP API: a standing rule decides at once
(an approving rule's write is applied, a rejecting rule's refused with its reason), and
a deadline's outcome is in the approval's status with the policy's reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.core.models import Approval, ApprovalPolicy, Resource
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.policies import rule_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_approving_rule_applies_the_write_and_the_request_at_once(alice) -> None:
    alice.create("doc", "v0", requires_approval=True)
    rule = rule_create(
        user=factories.superuser(),
        action="approve",
        team_id=alice.agent.team_id,
        agent_id=alice.agent.pk,
        prefix="do",
    )
    written = alice.write("doc", value="v1", expected_version=0)
    assert written.status_code == 200, written.json()
    assert written.json()["version"] == 1
    asked = alice.post("/approvals", {"resource": "doc", "value": "v2", "expected_version": 1})
    assert asked.status_code == 202
    body = asked.json()
    assert (body["status"], body["version"]) == ("approved", 2)
    assert f"rule #{rule.pk}" in body["reason"]
    status = alice.get(f"/approvals/{body['approval_id']}").json()
    assert status["status"] == "approved"
    assert Resource.objects.get(name="doc").value == "v2"


def test_a_rejecting_rule_refuses_with_its_reason(alice) -> None:
    alice.create("doc", "v0", requires_approval=True)
    rule_create(
        user=factories.superuser(),
        action="reject",
        team_id=alice.agent.team_id,
        prefix="doc",
        reason="doc is frozen until the release",
    )
    refused = alice.write("doc", value="v1", expected_version=0)
    assert refused.status_code == 409
    assert refused.json()["error"] == "approval_rejected"
    assert refused.json()["detail"] == "doc is frozen until the release"
    asked = alice.post("/approvals", {"resource": "doc", "value": "v1"})
    assert (asked.status_code, asked.json()["error"]) == (409, "approval_rejected")
    assert Resource.objects.get(name="doc").version == 0


def test_a_deadline_outcome_and_its_reason_are_in_the_status(alice) -> None:
    alice.create("doc", "v0")
    ApprovalPolicy.objects.create(team=alice.agent.team, deadline_seconds=30)
    asked = alice.post("/approvals", {"resource": "doc", "value": "v1"}).json()
    assert alice.get(f"/approvals/{asked['approval_id']}").json()["status"] == "pending"
    Approval.objects.filter(pk=asked["approval_id"]).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    monitor_sweep()
    status = alice.get(f"/approvals/{asked['approval_id']}").json()
    assert status["status"] == "rejected"
    assert "rejected by the approval policy" in status["reason"]
