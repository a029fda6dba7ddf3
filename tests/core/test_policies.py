"""Approval policies: deadlines and their outcome, escalation, the two-person rule, and
standing rules (core/policies.py, core/approvals.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from orchestrator.core.approvals import approval_deadline_pass, approval_decide
from orchestrator.core.errors import Conflicting
from orchestrator.core.models import (
    Approval,
    ApprovalPolicy,
    ApprovalVote,
    Event,
    Resource,
    StandingRule,
)
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.policies import policy_for, rule_create
from orchestrator.core.resources import approval_request, resource_create, resource_write
from orchestrator.core.selectors import approval_for_agent
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    return factories.team()


@pytest.fixture
def agent(team):
    return factories.agent(team_=team)


def ask(agent, name="doc", value="new", **kwargs):
    result = approval_request(agent=agent, resource=name, value=value, **kwargs)
    return result


def past_deadline(approval: Approval) -> None:
    """Move the approval's deadline into the past (instead of waiting for it)."""
    Approval.objects.filter(pk=approval.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )


def versions(name="doc") -> int:
    """How many writes were applied (the resource's version)."""
    return Resource.objects.get(name=name).version


# --- which policy applies -------------------------------------------------------------


def test_the_most_specific_policy_applies(team) -> None:
    doc = resource_create(team=team, name="src/api/doc.py", value=0)
    other = resource_create(team=team, name="notes", value=0)
    whole = ApprovalPolicy.objects.create(team=team, deadline_seconds=600)
    src = ApprovalPolicy.objects.create(team=team, prefix="src/", deadline_seconds=60)
    api = ApprovalPolicy.objects.create(team=team, prefix="src/api/", required_approvals=2)
    assert policy_for(doc) == api
    assert policy_for(other) == whole
    own = ApprovalPolicy.objects.create(team=team, resource=doc, deadline_seconds=5)
    assert policy_for(doc) == own
    own.delete()
    api.delete()
    assert policy_for(doc) == src
    assert policy_for(resource_create(team=factories.team(), name="src/x", value=0)) is None


def test_an_approval_takes_its_policy_terms_when_it_opens(team, agent) -> None:
    resource_create(team=team, name="doc", value=0)
    ApprovalPolicy.objects.create(
        team=team, deadline_seconds=120, on_deadline="approve", required_approvals=2
    )
    before = timezone.now()
    approval = ask(agent).approval
    assert approval.required_approvals == 2
    assert approval.on_deadline == "approve"
    assert before + timedelta(seconds=119) < approval.deadline_at
    assert approval.deadline_at < timezone.now() + timedelta(seconds=121)


# --- deadlines ------------------------------------------------------------------------


def test_a_passed_deadline_rejects_by_default_and_the_agent_is_told(team, agent) -> None:
    resource_create(team=team, name="doc", value="old")
    ApprovalPolicy.objects.create(team=team, deadline_seconds=30)
    approval = ask(agent).approval
    assert approval.on_deadline == "reject"
    assert monitor_sweep().deadlines == {}  # not due yet
    past_deadline(approval)
    assert monitor_sweep().deadlines == {"rejected": 1}
    approval.refresh_from_db()
    assert approval.status == "rejected"
    assert approval.decided_by is None
    event = Event.objects.get(kind="approval.rejected")
    assert event.actor == "policy"
    assert event.payload["by_policy"] == "deadline"
    status = approval_for_agent(approval_id=approval.pk, agent=agent)
    assert status["status"] == "rejected"
    assert "deadline" in status["reason"] and "rejected by the approval policy" in status["reason"]
    assert versions() == 0
    assert monitor_sweep().deadlines == {}  # once


def test_a_deadline_may_approve(team, agent) -> None:
    resource_create(team=team, name="doc", value="old")
    ApprovalPolicy.objects.create(team=team, deadline_seconds=30, on_deadline="approve")
    approval = ask(agent, value="new", expected_version=0).approval
    past_deadline(approval)
    assert approval_deadline_pass(approval.pk) == "approved"
    approval.refresh_from_db()
    assert (approval.status, approval.applied_value, approval.applied_version) == (
        "approved",
        "new",
        1,
    )
    assert Event.objects.get(kind="resource.written").payload["approval"] == approval.pk
    assert approval_deadline_pass(approval.pk) is None


def test_escalation_tells_the_second_group_extends_once_then_rejects(team, agent) -> None:
    resource_create(team=team, name="doc", value="old")
    leads = Group.objects.create(name="leads")
    ApprovalPolicy.objects.create(
        team=team,
        deadline_seconds=30,
        on_deadline="escalate",
        escalate_to=leads,
        escalation_seconds=300,
    )
    approval = ask(agent).approval
    past_deadline(approval)
    assert monitor_sweep().deadlines == {"escalated": 1}
    approval.refresh_from_db()
    assert approval.status == "pending"
    assert approval.escalated_at is not None
    left = (approval.deadline_at - timezone.now()).total_seconds()
    assert 290 < left <= 300
    escalated = Event.objects.get(kind="approval.escalated")
    assert escalated.actor == "policy"
    assert (escalated.payload["group"], escalated.payload["group_id"]) == ("leads", leads.pk)
    assert monitor_sweep().deadlines == {}  # the extended deadline is not due
    past_deadline(approval)
    assert monitor_sweep().deadlines == {"rejected": 1}
    approval.refresh_from_db()
    assert approval.status == "rejected"
    assert "after escalation" in approval.decision_note
    assert Event.objects.filter(kind="approval.escalated").count() == 1


def test_an_operator_decision_before_the_deadline_stands(team, agent) -> None:
    resource_create(team=team, name="doc", value="old")
    ApprovalPolicy.objects.create(team=team, deadline_seconds=30)
    approval = ask(agent, expected_version=0).approval
    approval_decide(approval_id=approval.pk, decision="approve", user=factories.superuser())
    past_deadline(approval)
    assert approval_deadline_pass(approval.pk) is None
    approval.refresh_from_db()
    assert approval.status == "approved"


# --- the two-person rule --------------------------------------------------------------


@pytest.fixture
def two_person(team, agent):
    resource_create(team=team, name="doc", value="old")
    ApprovalPolicy.objects.create(team=team, required_approvals=2)
    return ask(agent, value="new", expected_version=0).approval


def test_one_operator_cannot_pass_a_two_person_write(two_person) -> None:
    alice = factories.superuser("alice")
    first = approval_decide(approval_id=two_person.pk, decision="approve", user=alice)
    assert not first.applied
    assert first.detail.startswith("1 of 2 approvals")
    with pytest.raises(Conflicting) as again:
        approval_decide(approval_id=two_person.pk, decision="approve", user=alice)
    assert again.value.code == "already_voted"
    two_person.refresh_from_db()
    assert two_person.status == "pending"
    assert versions() == 0
    assert ApprovalVote.objects.filter(approval=two_person).count() == 1
    voted = Event.objects.get(kind="approval.voted")
    assert voted.actor == "user:alice"
    assert (voted.payload["approvals"], voted.payload["required"]) == (1, 2)

    second = approval_decide(
        approval_id=two_person.pk, decision="approve", user=factories.superuser("bob")
    )
    assert second.applied
    two_person.refresh_from_db()
    assert (two_person.status, two_person.applied_version) == ("approved", 1)
    assert two_person.decision_note == "approved by alice, bob"
    assert versions() == 1


def test_a_rejection_wins_over_a_pending_second_approval(two_person) -> None:
    approval_decide(approval_id=two_person.pk, decision="approve", user=factories.superuser("a"))
    result = approval_decide(
        approval_id=two_person.pk,
        decision="reject",
        user=factories.superuser("b"),
        note="not this week",
    )
    assert not result.applied
    two_person.refresh_from_db()
    assert two_person.status == "rejected"
    with pytest.raises(Conflicting) as late:
        approval_decide(
            approval_id=two_person.pk, decision="approve", user=factories.superuser("c")
        )
    assert late.value.code == "already_decided"
    assert versions() == 0
    status = approval_for_agent(approval_id=two_person.pk, agent=two_person.agent)
    assert (status["status"], status["reason"]) == ("rejected", "not this week")


def test_the_operator_who_started_the_run_does_not_count(team, agent) -> None:
    resource_create(team=team, name="doc", value="old")
    ApprovalPolicy.objects.create(team=team, required_approvals=2)
    starter = factories.superuser("starter")
    run = factories.run(team=team, created_by=starter)
    step = run.steps.create(agent=agent, number=1)
    approval = approval_request(agent=agent, resource="doc", value="new", step=step).approval
    assert approval.caused_by_id == starter.pk
    mine = approval_decide(approval_id=approval.pk, decision="approve", user=starter)
    assert "does not count" in mine.detail
    one = approval_decide(
        approval_id=approval.pk, decision="approve", user=factories.superuser("x")
    )
    assert not one.applied and one.detail.startswith("1 of 2")
    two = approval_decide(
        approval_id=approval.pk, decision="approve", user=factories.superuser("y")
    )
    assert two.applied


def test_an_edit_restarts_the_count_on_the_edited_value(two_person) -> None:
    a, b, c = (factories.superuser(name) for name in "abc")
    approval_decide(approval_id=two_person.pk, decision="approve", user=a)
    edit = approval_decide(approval_id=two_person.pk, decision="approve", user=b, value="edited")
    assert not edit.applied and edit.detail.startswith("1 of 2")  # a approved another value
    done = approval_decide(approval_id=two_person.pk, decision="approve", user=c)
    assert done.applied
    two_person.refresh_from_db()
    assert two_person.applied_value == "edited"
    status = approval_for_agent(approval_id=two_person.pk, agent=two_person.agent)
    assert status["status"] == "edited"


# --- standing rules -------------------------------------------------------------------


def test_a_rule_approves_the_next_writes_without_a_human_until_its_uses_run_out(
    team, agent
) -> None:
    resource_create(team=team, name="doc", value=0, requires_approval=True)
    first = resource_write(agent=agent, resource="doc", value=1, expected_version=0).approval
    ops = factories.superuser("ops")
    rule = rule_create(user=ops, action="approve", approval_id=first.pk, max_uses=2)
    assert (rule.agent_id, rule.resource.name) == (agent.pk, "doc")
    assert Event.objects.get(kind="rule.created").actor == "user:ops"

    second = resource_write(agent=agent, resource="doc", value=2, expected_version=0)
    assert second.status == "applied" and second.version == 1
    assert f"rule #{rule.pk}" in second.detail
    third = resource_write(agent=agent, resource="doc", value=3, expected_version=1)
    assert third.status == "applied" and third.version == 2
    fourth = resource_write(agent=agent, resource="doc", value=4, expected_version=2)
    assert fourth.status == "approval_pending"  # the rule's two uses are spent

    rule.refresh_from_db()
    assert rule.uses == 2
    used = Event.objects.filter(kind="approval.approved").order_by("id")
    assert [(e.actor, e.payload["rule"]) for e in used] == [(f"rule:#{rule.pk}", rule.pk)] * 2
    assert Approval.objects.filter(decided_by_rule=rule).count() == 2


def test_a_rejecting_rule_rejects_with_its_reason_and_other_agents_are_not_matched(
    team, agent
) -> None:
    resource_create(team=team, name="src/app.py", value="v0", requires_approval=True)
    other = factories.agent(team_=team)
    rule_create(
        user=factories.superuser(),
        action="reject",
        team_id=team.pk,
        agent_id=agent.pk,
        prefix="src/",
        reason="this agent may not touch src/",
    )
    refused = resource_write(agent=agent, resource="src/app.py", value="x", expected_version=0)
    assert refused.status == "approval_rejected"
    assert refused.detail == "this agent may not touch src/"
    assert refused.approval.status == "rejected"
    asked = resource_write(agent=other, resource="src/app.py", value="y", expected_version=0)
    assert asked.status == "approval_pending"


def test_an_expired_or_revoked_rule_decides_nothing(team, agent) -> None:
    resource_create(team=team, name="doc", value=0, requires_approval=True)
    user = factories.superuser()
    rule = rule_create(
        user=user,
        action="approve",
        team_id=team.pk,
        prefix="do",
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert resource_write(agent=agent, resource="doc", value=1).status == "approval_pending"
    StandingRule.objects.filter(pk=rule.pk).update(expires_at=None, active=False)
    assert resource_write(agent=agent, resource="doc", value=1).status == "approval_pending"


def test_an_approving_rule_never_passes_a_two_person_write(team, agent) -> None:
    resource_create(team=team, name="doc", value=0, requires_approval=True)
    ApprovalPolicy.objects.create(team=team, required_approvals=2)
    rule_create(user=factories.superuser(), action="approve", team_id=team.pk, prefix="d")
    assert resource_write(agent=agent, resource="doc", value=1).status == "approval_pending"
