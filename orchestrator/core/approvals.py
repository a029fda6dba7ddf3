"""Approvals: writes that wait for a human.

An operator approves, rejects, or edits and approves. Approving re-checks
the protocol at decision time, in a short transaction of its own: the value
is applied only if the resource is still at the version the operator was
shown, and, for a fenced write, the agent still holds the live lock whose
token it carried (and that token is the current fence). Otherwise the
approval fails and says why; nothing is written. Two operators deciding the
same approval are serialized by the row locks: one wins, the other gets
``already_decided``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core import wakeups
from orchestrator.core.errors import Conflicting, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalStatus,
    Conflict,
    ConflictStatus,
    Resource,
    ResourceVersion,
    Step,
)
from orchestrator.core.operations import WriteBody, checked
from orchestrator.core.queue import Queue
from orchestrator.core.rowlocks import lock_approval, lock_conflicts, lock_resource_with_clock
from orchestrator.core.types import User
from orchestrator.core.writes import apply_write, check_fence


class Decision:
    APPROVE = "approve"
    REJECT = "reject"
    ALL = (APPROVE, REJECT)


@dataclass
class DecisionResult:
    approval: Approval
    applied: bool
    detail: str


_UNSET = object()


def approval_open(
    *,
    res: Resource,
    agent: Agent,
    reason: str,
    value: Any,
    base_version: int | None,
    fence: int | None,
    note: str,
    step: Step | None,
    conflict: Conflict | None = None,
) -> Approval:
    """Record a write that waits for an operator (the base, current and proposed values
    side by side) and emit ``approval.requested``. Caller holds the Resource row lock."""
    base_value = None
    if base_version is not None:
        base_value = (
            ResourceVersion.objects.filter(resource=res, version=base_version)
            .values_list("value", flat=True)
            .first()
        )
    approval = Approval.objects.create(
        resource=res,
        agent=agent,
        team_id=agent.team_id,
        step=step,
        conflict=conflict,
        reason=reason,
        base_version=base_version,
        base_value=base_value,
        current_version=res.version,
        current_value=res.value,
        proposed_value=value,
        fence=fence,
        note=note[:5000],
    )
    event_emit(
        "approval.requested",
        agent=agent,
        subject=approval,
        payload={
            "approval": approval.pk,
            "resource": res.name,
            "reason": reason,
            "base_version": base_version,
            "current_version": res.version,
        },
    )
    return approval


@service
def approval_decide(
    *,
    approval_id: int,
    decision: str,
    user: User,
    value: Any = _UNSET,
    note: str = "",
) -> DecisionResult:
    """Approve (optionally with an edited ``value``) or reject a pending approval.

    Raises NotFound, Invalid, or Conflicting(already_decided). A failed
    re-check is not an exception: the approval ends as ``failed`` with the
    reason, and the agent is woken to re-read.
    """
    if decision not in Decision.ALL:
        raise Invalid("invalid_decision", "decision must be 'approve' or 'reject'")
    edited = value is not _UNSET
    if edited:
        value = checked(WriteBody, value=value)["value"]  # as an agent's write would be
    try:
        res, now = lock_resource_with_clock(approvals__id=approval_id)
    except Resource.DoesNotExist:
        raise NotFound("approval_not_found", f"no approval with id {approval_id}") from None
    approval = lock_approval(approval_id)
    if approval.status != ApprovalStatus.PENDING:
        who = approval.decided_by.get_username() if approval.decided_by else "the system"
        raise Conflicting(
            "already_decided", f"approval #{approval.pk} was already {approval.status} by {who}"
        )
    queue = Queue(res, now)
    queue.settle()
    agent = approval.agent
    approval.decided_by = user if user is not None and user.is_authenticated else None
    approval.decided_at = now
    approval.decision_note = note[:5000]
    applied = False
    if decision == Decision.REJECT:
        approval.status = ApprovalStatus.REJECTED
        detail = "rejected; the value is unchanged"
    elif res.version != approval.current_version:
        approval.status = ApprovalStatus.FAILED
        detail = (
            f"not applied: {res.name} moved to version {res.version} since this approval "
            f"was shown at version {approval.current_version}"
        )
    elif approval.fence is not None and check_fence(queue, agent, approval.fence) is None:
        approval.status = ApprovalStatus.FAILED
        detail = (
            f"not applied: {agent.name}'s lock with fencing token {approval.fence} is no "
            f"longer live (the current fence is {res.fence})"
        )
    else:
        final = value if edited else approval.proposed_value
        approval.status = ApprovalStatus.APPROVED
        approval.applied_value = final
        approval.applied_version = apply_write(
            res,
            final,
            agent=agent,
            user=user,
            fence=approval.fence,
            team_id=approval.team_id,
            approval=approval,
        )
        applied = True
        detail = f"applied as version {approval.applied_version}" + (
            " (edited by the operator)" if edited else ""
        )
    approval.save(
        update_fields=[
            "status",
            "decided_by",
            "decided_at",
            "decision_note",
            "applied_value",
            "applied_version",
        ]
    )
    if approval.conflict_id:
        for conflict in lock_conflicts([approval.conflict_id]):
            if conflict.status == ConflictStatus.OPEN:
                conflict.status = ConflictStatus.RESOLVED
                conflict.resolved_at = now
                conflict.resolved_by = approval.decided_by
                conflict.resolution = f"approval #{approval.pk} {approval.status}: {detail}"
                conflict.save(update_fields=["status", "resolved_at", "resolved_by", "resolution"])
                event_emit(
                    "conflict.resolved",
                    team=conflict.team_id,
                    user=user,
                    subject=conflict,
                    payload={"kind": conflict.kind, "resolution": conflict.resolution},
                )
    event_emit(
        f"approval.{approval.status}",
        team=approval.team_id,
        user=user,
        subject=approval,
        payload={
            "approval": approval.pk,
            "resource": res.name,
            "agent": agent.name,
            "edited": edited,
            "detail": detail,
            "version": approval.applied_version,
        },
    )
    wakeups.schedule(agent_id=agent.pk, step_id=approval.step_id, reason="approval")
    return DecisionResult(approval, applied, detail)
