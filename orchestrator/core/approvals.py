"""Approvals: writes that wait for a human.

An operator approves, rejects, or edits and approves. Approving re-checks
the protocol at decision time, in a short transaction of its own: the value
is applied only if the resource is still at the version the operator was
shown, and, for a fenced write, the agent still holds the live lock whose
token it carried (and that token is the current fence). Otherwise the
approval fails and says why; nothing is written. Two operators deciding the
same approval are serialized by the row locks: one wins, the other gets
``already_decided``.

Policies (core/policies.py) decide when nobody is watching: an approval takes
its policy's terms when it opens (a deadline and its outcome, the approvals it
needs), a standing rule may decide it at once, and the monitor applies the
outcome of a deadline that passed (:func:`approval_deadline_pass`), exactly
once whatever the number of monitors: the Approval row is locked and re-read.
Under the two-person rule each operator's decision is an ApprovalVote; the
write is applied when enough distinct operators approved the value that would
be written, and one rejection rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models.functions import Now
from django.utils import timezone

from orchestrator.core import policies, wakeups
from orchestrator.core.errors import Conflicting, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalStatus,
    ApprovalVote,
    Conflict,
    ConflictStatus,
    DeadlineOutcome,
    Resource,
    ResourceVersion,
    Run,
    StandingRule,
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
    queue: Queue | None = None,
) -> Approval:
    """Record a write that waits for an operator (the base, current and proposed values
    side by side) under its policy's terms, and emit ``approval.requested``. A standing
    rule that matches decides it at once (its status is then no longer pending, and
    nobody is woken: the caller answers the agent). Caller holds the Resource row lock;
    ``queue`` is its Queue, if the caller has one."""
    now = queue.now if queue is not None else timezone.now()
    terms = policies.terms_for(res, now)
    base_value = None
    if base_version is not None:
        base_value = (
            ResourceVersion.objects.filter(resource=res, version=base_version)
            .values_list("value", flat=True)
            .first()
        )
    caused_by_id = None
    if step is not None and terms.required_approvals > 1:
        caused_by_id = Run.objects.filter(pk=step.run_id).values_list("created_by_id", flat=True)[0]
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
        policy=terms.policy,
        required_approvals=terms.required_approvals,
        deadline_at=terms.deadline_at,
        on_deadline=terms.on_deadline,
        caused_by_id=caused_by_id,
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
    rule = policies.rule_take(
        res=res, agent=agent, now=now, required_approvals=terms.required_approvals
    )
    if rule is not None:
        _decide_by_rule(approval, rule, res, queue or Queue(res, now), now)
    return approval


def _decide_by_rule(
    approval: Approval, rule: StandingRule, res: Resource, queue: Queue, now: datetime
) -> None:
    described = policies.rule_describe(rule)
    approval.decided_by_rule = rule
    approve = rule.action == Decision.APPROVE
    note = rule.reason or (f"{'approved' if approve else 'rejected'} by standing {described}")
    _conclude(
        approval,
        res,
        queue,
        now,
        approve=approve,
        user=None,
        note=note,
        actor=f"rule:#{rule.pk}",
        extra={"rule": rule.pk},
        wake=False,
    )


def _conclude(
    approval: Approval,
    res: Resource,
    queue: Queue,
    now: datetime,
    *,
    approve: bool,
    user: User,
    note: str,
    value: Any = _UNSET,
    actor: str | None = None,
    extra: dict[str, Any] | None = None,
    wake: bool = True,
) -> DecisionResult:
    """Decide ``approval`` for good: reject, or approve (``value`` if given, else the
    proposal), re-checking the version and the fence at this moment; resolve its
    conflict, emit the decision, and wake its agent unless ``wake`` is false. Caller
    holds the Resource and Approval row locks; ``approval`` is pending."""
    agent = approval.agent
    edited = value is not _UNSET and value != approval.proposed_value
    approval.decided_by = user if user is not None and user.is_authenticated else None
    approval.decided_at = now
    approval.decision_note = note[:5000]
    applied = False
    if not approve:
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
        final = value if value is not _UNSET else approval.proposed_value
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
            "decided_by_rule",
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
                    actor=actor,
                    subject=conflict,
                    payload={"kind": conflict.kind, "resolution": conflict.resolution},
                )
    event_emit(
        f"approval.{approval.status}",
        team=approval.team_id,
        user=user,
        actor=actor,
        subject=approval,
        payload={
            "approval": approval.pk,
            "resource": res.name,
            "agent": agent.name,
            "edited": edited,
            "detail": detail,
            "version": approval.applied_version,
            **(extra or {}),
        },
    )
    if wake:
        wakeups.schedule(agent_id=agent.pk, step_id=approval.step_id, reason="approval")
    return DecisionResult(approval, applied, detail)


def _lock_pending(approval_id: int) -> tuple[Resource, datetime, Approval, Queue]:
    """Lock an approval's Resource row, then the Approval row; NotFound if there is none."""
    try:
        res, now = lock_resource_with_clock(approvals__id=approval_id)
    except Resource.DoesNotExist:
        raise NotFound("approval_not_found", f"no approval with id {approval_id}") from None
    approval = lock_approval(approval_id)
    queue = Queue(res, now)
    return res, now, approval, queue


def approval_candidate(approval: Approval, votes: list[ApprovalVote]) -> Any:
    """The value approving would write: the last operator's edit, else the agent's
    proposal (``votes`` oldest first)."""
    edits = [vote for vote in votes if vote.decision == Decision.APPROVE and vote.edited]
    return edits[-1].value if edits else approval.proposed_value


def approvals_given(approval: Approval, votes: list[ApprovalVote]) -> list[ApprovalVote]:
    """The votes that count toward ``approval``'s rule: approvals, by distinct operators
    other than the one who caused the write, of the value that would be written."""
    candidate = approval_candidate(approval, votes)
    return [
        vote
        for vote in votes
        if vote.decision == Decision.APPROVE and vote.counted and vote.value == candidate
    ]


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

    Under a policy that needs N approvals (the two-person rule), an approval is one
    operator's vote: the write is applied once N distinct operators approved the value
    that would be written (an edit is its editor's approval of the new value; earlier
    approvals of another value stop counting), the operator who caused the write (who
    started the agent's run) does not count, and one rejection rejects. A second
    approval by the same operator of the same value changes nothing (``already_voted``).

    Raises NotFound, Invalid, or Conflicting(already_decided, already_voted). A failed
    re-check is not an exception: the approval ends as ``failed`` with the reason, and
    the agent is woken to re-read.
    """
    if decision not in Decision.ALL:
        raise Invalid("invalid_decision", "decision must be 'approve' or 'reject'")
    edited = value is not _UNSET
    if edited:
        value = checked(WriteBody, value=value)["value"]  # as an agent's write would be
    res, now, approval, queue = _lock_pending(approval_id)
    if approval.status != ApprovalStatus.PENDING:
        if approval.decided_by_rule_id:
            who = f"standing rule #{approval.decided_by_rule_id}"
        elif approval.decided_by:
            who = approval.decided_by.get_username()
        else:
            who = "the system"
        raise Conflicting(
            "already_decided", f"approval #{approval.pk} was already {approval.status} by {who}"
        )
    queue.settle()
    if approval.required_approvals <= 1 or decision == Decision.REJECT:
        if approval.required_approvals > 1 and user is not None and user.is_authenticated:
            _vote(approval, user, Decision.REJECT, approval.proposed_value,
                  edited=False, note=note, counted=True)  # fmt: skip
        return _conclude(
            approval,
            res,
            queue,
            now,
            approve=decision == Decision.APPROVE,
            user=user,
            note=note,
            value=value,
        )
    return _approve_one_of_several(approval, res, queue, now, user, value, note)


def _vote(
    approval: Approval,
    user: User,
    decision: str,
    value: Any,
    *,
    edited: bool,
    note: str,
    counted: bool,
) -> ApprovalVote:
    """Record ``user``'s vote; one that replaces their earlier vote counts from now (its
    time is the edit order :func:`approval_candidate` follows). Caller holds the Approval
    row lock, so the operator's row cannot appear meanwhile."""
    vote, _created = ApprovalVote.objects.update_or_create(
        approval=approval,
        user=user,
        defaults={
            "decision": decision,
            "value": value,
            "edited": edited,
            "counted": counted,
            "note": note[:5000],
            "created_at": timezone.now(),
        },
    )
    return vote


def _approve_one_of_several(
    approval: Approval,
    res: Resource,
    queue: Queue,
    now: datetime,
    user: User,
    value: Any,
    note: str,
) -> DecisionResult:
    if user is None or not user.is_authenticated:
        raise Invalid("operator_required", "approvals under the two-person rule name an operator")
    edited = value is not _UNSET
    votes = list(approval.votes.select_related("user").order_by("created_at", "pk"))
    candidate = value if edited else approval_candidate(approval, votes)
    mine = next((vote for vote in votes if vote.user_id == user.pk), None)
    if mine is not None and mine.decision == Decision.APPROVE and mine.value == candidate:
        given = approvals_given(approval, votes)
        raise Conflicting(
            "already_voted",
            f"you already approved approval #{approval.pk}; {len(given)} of "
            f"{approval.required_approvals} approvals: another operator must approve",
        )
    counted = user.pk != approval.caused_by_id
    vote = _vote(
        approval, user, Decision.APPROVE, candidate, edited=edited, note=note, counted=counted
    )
    votes = [v for v in votes if v.user_id != user.pk] + [vote]
    given = approvals_given(approval, votes)
    if len(given) >= approval.required_approvals:
        names = ", ".join(v.user.get_username() for v in given)
        return _conclude(
            approval,
            res,
            queue,
            now,
            approve=True,
            user=user,
            note=note or f"approved by {names}",
            value=candidate,
        )
    event_emit(
        "approval.voted",
        team=approval.team_id,
        user=user,
        subject=approval,
        payload={
            "approval": approval.pk,
            "resource": res.name,
            "agent": approval.agent.name,
            "decision": Decision.APPROVE,
            "approvals": len(given),
            "required": approval.required_approvals,
            "counted": counted,
        },
    )
    if counted:
        detail = f"{len(given)} of {approval.required_approvals} approvals; waiting for another"
    else:
        detail = (
            f"your approval does not count: you started the run that made this write; "
            f"{len(given)} of {approval.required_approvals} approvals"
        )
    return DecisionResult(approval, False, detail)


def approvals_past_deadline() -> list[int]:
    """Ids of pending approvals whose deadline has passed by the database's clock,
    oldest deadline first (a partial index serves it)."""
    return list(
        Approval.objects.filter(
            status=ApprovalStatus.PENDING, deadline_at__isnull=False, deadline_at__lte=Now()
        )
        .order_by("deadline_at", "pk")
        .values_list("pk", flat=True)
    )


@service
def approval_deadline_pass(approval_id: int) -> str | None:
    """Apply the outcome of ``approval_id``'s deadline if it has passed and it is still
    pending: reject it (fail closed), approve it, or escalate it (tell the policy's
    second group, ``approval.escalated``, and extend the deadline once; when the
    extension passes too, it is rejected). Returns what was done, or None if nothing
    was due. Exactly once: the Approval row is locked and re-read, so a second monitor
    finds it decided, or its deadline moved."""
    try:
        res, now, approval, queue = _lock_pending(approval_id)
    except NotFound:
        return None
    if (
        approval.status != ApprovalStatus.PENDING
        or approval.deadline_at is None
        or approval.deadline_at > now
    ):
        return None
    outcome = approval.on_deadline
    if outcome == DeadlineOutcome.ESCALATE:
        extension = policies.escalation_extension(approval)
        if extension is not None:
            group = approval.policy.escalate_to
            approval.escalated_at = now
            approval.deadline_at = now + extension
            approval.save(update_fields=["escalated_at", "deadline_at"])
            event_emit(
                "approval.escalated",
                team=approval.team_id,
                actor="policy",
                subject=approval,
                payload={
                    "approval": approval.pk,
                    "resource": res.name,
                    "agent": approval.agent.name,
                    "group": group.name,
                    "group_id": group.pk,
                    "deadline_at": approval.deadline_at.isoformat(),
                },
            )
            return "escalated"
    approve = outcome == DeadlineOutcome.APPROVE
    waited = int((now - approval.created_at).total_seconds())
    escalated = " after escalation" if approval.escalated_at is not None else ""
    note = (
        f"no operator decided within the deadline{escalated} ({waited} s): "
        f"{'approved' if approve else 'rejected'} by the approval policy"
    )
    votes = list(approval.votes.order_by("created_at", "pk"))
    result = _conclude(
        approval,
        res,
        queue,
        now,
        approve=approve,
        user=None,
        note=note,
        value=approval_candidate(approval, votes) if approve else _UNSET,
        actor="policy",
        extra={"by_policy": "deadline"},
    )
    return result.approval.status
