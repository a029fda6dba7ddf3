"""Contested and protected writes become approvals; decisions re-check the protocol."""

from __future__ import annotations

import pytest

from orchestrator.core.approvals import approval_decide
from orchestrator.core.errors import Conflicting, Invalid, NotFound
from orchestrator.core.locks import lock_acquire, lock_force_release
from orchestrator.core.models import Approval, Conflict, Event, ResourceVersion
from orchestrator.core.resources import (
    approval_request,
    resource_create,
    resource_read,
    resource_write,
)
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def operator():
    return factories.superuser("ops")


def value_of(name: str):
    return resource_read(resource=name).resource.value


def test_stale_version_is_rejected_under_the_reject_policy() -> None:
    team = factories.team(conflict_policy="reject")
    a, b = factories.agent(team_=team), factories.agent(team_=team)
    resource_create(team=team, name="doc", value="v0")
    assert resource_write(agent=a, resource="doc", value="a", expected_version=0).version == 1
    result = resource_write(agent=b, resource="doc", value="b", expected_version=0)
    assert result.status == "version_conflict"
    assert value_of("doc") == "a"
    conflict = Conflict.objects.get(kind="write_conflict")
    assert conflict.status == "resolved"
    assert "re-read" in conflict.resolution
    assert not Approval.objects.exists()


def test_contested_write_becomes_an_approval_with_base_current_and_proposed(operator) -> None:
    team = factories.team(conflict_policy="ask_operator")
    a, b = factories.agent(team_=team), factories.agent(team_=team)
    resource_create(team=team, name="doc", value={"text": "base"})
    resource_write(agent=a, resource="doc", value={"text": "by a"}, expected_version=0)
    result = resource_write(
        agent=b, resource="doc", value={"text": "by b"}, expected_version=0, note="merge me"
    )
    assert result.status == "approval_pending"
    approval = result.approval
    assert approval.base_value == {"text": "base"}
    assert approval.current_value == {"text": "by a"}
    assert approval.proposed_value == {"text": "by b"}
    assert (approval.base_version, approval.current_version) == (0, 1)
    assert Conflict.objects.get(kind="write_conflict").status == "open"

    decided = approval_decide(approval_id=approval.pk, decision="approve", user=operator)
    assert decided.applied
    assert value_of("doc") == {"text": "by b"}
    approval.refresh_from_db()
    assert (approval.status, approval.applied_version, approval.decided_by) == (
        "approved",
        2,
        operator,
    )
    conflict = Conflict.objects.get(kind="write_conflict")
    assert (conflict.status, conflict.resolved_by) == ("resolved", operator)
    version = ResourceVersion.objects.get(resource__name="doc", version=2)
    assert version.user == operator
    assert Event.objects.filter(kind="approval.approved", actor="user:ops").exists()


def test_edit_and_approve_applies_the_edited_value(operator) -> None:
    a = factories.agent()
    resource_create(team=a.team, name="doc", value=1, requires_approval=True)
    pending = resource_write(agent=a, resource="doc", value=2).approval
    approval_decide(approval_id=pending.pk, decision="approve", user=operator, value=3)
    assert value_of("doc") == 3
    pending.refresh_from_db()
    assert (pending.proposed_value, pending.applied_value) == (2, 3)


def test_reject_leaves_the_value_and_an_event(operator) -> None:
    a = factories.agent()
    resource_create(team=a.team, name="doc", value=1, requires_approval=True)
    pending = resource_write(agent=a, resource="doc", value=2).approval
    result = approval_decide(approval_id=pending.pk, decision="reject", user=operator)
    assert not result.applied
    assert value_of("doc") == 1
    assert Event.objects.filter(kind="approval.rejected", actor="user:ops").exists()


def test_approval_fails_if_the_version_moved_since(operator) -> None:
    team = factories.team(conflict_policy="ask_operator")
    a, b = factories.agent(team_=team), factories.agent(team_=team)
    resource_create(team=team, name="doc", value=0)
    resource_write(agent=a, resource="doc", value=1, expected_version=0)
    pending = resource_write(agent=b, resource="doc", value=2, expected_version=0).approval
    resource_write(agent=a, resource="doc", value=5, expected_version=1)  # moves on
    result = approval_decide(approval_id=pending.pk, decision="approve", user=operator)
    assert not result.applied
    assert "moved to version 2" in result.detail
    assert value_of("doc") == 5
    pending.refresh_from_db()
    assert pending.status == "failed"


def test_approval_of_a_fenced_write_fails_once_the_lock_is_gone(operator) -> None:
    a = factories.agent()
    resource_create(team=a.team, name="doc", value=0, requires_approval=True)
    held = lock_acquire(agent=a, resource="doc")
    pending = resource_write(agent=a, resource="doc", value=1, fence=held.lock.token).approval
    assert pending.fence == held.lock.token
    lock_force_release(lock_id=held.lock.pk, user=operator)
    result = approval_decide(approval_id=pending.pk, decision="approve", user=operator)
    assert not result.applied
    assert "no longer live" in result.detail
    assert value_of("doc") == 0


def test_two_operators_deciding_the_same_approval(operator) -> None:
    other = factories.superuser("ops2")
    a = factories.agent()
    resource_create(team=a.team, name="doc", value=0, requires_approval=True)
    pending = resource_write(agent=a, resource="doc", value=1).approval
    approval_decide(approval_id=pending.pk, decision="approve", user=operator)
    with pytest.raises(Conflicting) as exc:
        approval_decide(approval_id=pending.pk, decision="reject", user=other)
    assert "already approved by ops" in exc.value.detail


def test_bad_decisions_are_refused(operator) -> None:
    with pytest.raises(NotFound):
        approval_decide(approval_id=999999, decision="approve", user=operator)
    a = factories.agent()
    resource_create(team=a.team, name="doc", value=0, requires_approval=True)
    pending = resource_write(agent=a, resource="doc", value=1).approval
    with pytest.raises(Invalid):
        approval_decide(approval_id=pending.pk, decision="maybe", user=operator)
    with pytest.raises(Invalid):
        approval_decide(
            approval_id=pending.pk, decision="approve", user=operator, value="x" * 10**6
        )
    pending.refresh_from_db()
    assert pending.status == "pending"


def test_an_agent_can_ask_for_approval_of_any_write(operator) -> None:
    a = factories.agent()
    resource_create(team=a.team, name="doc", value="draft")
    result = approval_request(
        agent=a, resource="doc", value="final", expected_version=0, note="please check"
    )
    assert result.status == "approval_pending"
    approval = result.approval
    assert (approval.reason, approval.note, approval.base_value) == (
        "requested",
        "please check",
        "draft",
    )
    assert value_of("doc") == "draft"
    approval_decide(approval_id=approval.pk, decision="approve", user=operator)
    assert value_of("doc") == "final"
