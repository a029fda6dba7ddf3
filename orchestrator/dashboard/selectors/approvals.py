"""The approvals queue: pending writes with what they would change, the terms of their
policy (deadline, approvals needed and who gave them), recent decisions with who or
what took them, and the standing rules in force."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import F, Prefetch, Q

from orchestrator.core.approvals import Decision, approval_candidate, approvals_given
from orchestrator.core.models import (
    Approval,
    ApprovalStatus,
    ApprovalVote,
    DeadlineOutcome,
    Event,
    StandingRule,
)
from orchestrator.core.policies import escalation_extension, rule_describe
from orchestrator.core.types import User
from orchestrator.dashboard.diffs import DiffLine, pretty, value_diff

PENDING_LIMIT = 100
RECENT_LIMIT = 20
RULES_LIMIT = 200
DECISION_KINDS = [f"approval.{status}" for status in ApprovalStatus.values if status != "pending"]


@dataclass
class VoteView:
    """One operator's approval under the two-person rule, and why it does not count."""

    username: str
    at: datetime
    counts: bool
    why_not: str = ""


@dataclass
class ApprovalView:
    """One pending approval, ready to show: values as text, two diffs, and its terms."""

    approval: Approval
    base_text: str
    current_text: str
    proposed_text: str
    # The proposed value as JSON, to start an edit from.
    proposed_json: str
    # What approving would change (current -> proposed).
    change: list[DiffLine]
    # What others wrote since the agent read its base (base -> current).
    drift: list[DiffLine]
    # The two-person rule: the approvals that count, of ``approval.required_approvals``.
    given: int = 0
    votes: list[VoteView] = field(default_factory=list)
    # The viewing operator approved the value that would be written: approving again
    # changes nothing (the service says ``already_voted``); whether their vote counts.
    viewer_approved: bool = False
    viewer_counts: bool = True
    # What the deadline does when it passes ("rejected", "approved", "escalated to ...").
    outcome: str = ""
    # The group it was escalated to, once it was.
    escalated_to: str = ""
    time_left: str = ""


def _votes(approval: Approval, viewer: User) -> tuple[int, list[VoteView], bool, bool]:
    votes = list(approval.votes.all())
    given = approvals_given(approval, votes)
    candidate = approval_candidate(approval, votes)
    shown = []
    viewer_approved, viewer_counts = False, True
    for vote in votes:
        if vote.decision != Decision.APPROVE:
            continue
        why_not = ""
        if not vote.counted:
            why_not = "does not count: started the run that made this write"
        elif vote.value != candidate:
            why_not = "does not count: approved a value edited since"
        shown.append(VoteView(vote.user.get_username(), vote.created_at, vote in given, why_not))
        if viewer is not None and vote.user_id == viewer.pk and vote.value == candidate:
            viewer_approved, viewer_counts = True, vote.counted
    return len(given), shown, viewer_approved, viewer_counts


def _outcome(approval: Approval) -> str:
    """What approval_deadline_pass will do when the deadline passes."""
    if approval.deadline_at is None:
        return ""
    if approval.on_deadline == DeadlineOutcome.APPROVE:
        return "approved"
    if approval.on_deadline == DeadlineOutcome.ESCALATE and escalation_extension(approval):
        group = approval.policy.escalate_to.name
        return f"escalated to {group} (the deadline is extended once)"
    return "rejected (fail closed)"


def left_text(seconds: float) -> str:
    """``4m 05s left`` (as static/orchestrator/format.js ``seconds`` writes it)."""
    total = max(0, round(seconds))
    if total <= 0:
        return "deadline passed"
    if total < 60:
        shown = f"{total}s"
    elif total < 3600:
        shown = f"{total // 60}m {total % 60:02d}s"
    else:
        shown = f"{total // 3600}h {total // 60 % 60:02d}m"
    return f"{shown} left"


def approvals_pending(
    *, now: datetime, viewer: User = None, limit: int = PENDING_LIMIT
) -> list[ApprovalView]:
    """Pending approvals, oldest first (the queue's order), with their terms at ``now``
    (the database clock) and, under the two-person rule, the votes so far and whether
    ``viewer`` already approved."""
    rows = (
        Approval.objects.filter(status=ApprovalStatus.PENDING)
        .select_related("resource", "agent", "team", "policy__escalate_to")
        .prefetch_related(
            Prefetch(
                "votes",
                queryset=ApprovalVote.objects.select_related("user").order_by("created_at", "pk"),
            )
        )
        .order_by("created_at", "pk")[:limit]
    )
    views = []
    for approval in rows:
        view = ApprovalView(
            approval=approval,
            base_text=pretty(approval.base_value) if approval.base_version is not None else "",
            current_text=pretty(approval.current_value),
            proposed_text=pretty(approval.proposed_value),
            proposed_json=json.dumps(
                approval.proposed_value, indent=2, sort_keys=True, ensure_ascii=False
            ),
            change=value_diff(approval.current_value, approval.proposed_value),
            drift=value_diff(approval.base_value, approval.current_value)
            if approval.base_version is not None
            and approval.base_version != approval.current_version
            else [],
            outcome=_outcome(approval),
        )
        if approval.required_approvals > 1:
            view.given, view.votes, view.viewer_approved, view.viewer_counts = _votes(
                approval, viewer
            )
        if approval.deadline_at is not None:
            view.time_left = left_text((approval.deadline_at - now).total_seconds())
        if approval.escalated_at is not None and approval.policy and approval.policy.escalate_to:
            view.escalated_to = approval.policy.escalate_to.name
        elif approval.escalated_at is not None:
            view.escalated_to = "the second group"
        views.append(view)
    return views


@dataclass
class DecidedView:
    approval: Approval
    # Who or what decided: an operator's name, "rule #N", "policy: deadline", "system".
    by: str


def _decider(approval: Approval, payload: dict[str, Any]) -> str:
    if approval.decided_by is not None:
        return approval.decided_by.get_username()
    rule = approval.decided_by_rule_id or payload.get("rule")
    if rule:
        return f"rule #{rule}"
    if payload.get("by_policy"):
        return f"policy: {payload['by_policy']}"
    return "system"


def approvals_decided(*, limit: int = RECENT_LIMIT) -> list[DecidedView]:
    """The latest decisions, newest first, with who or what took them (an operator, a
    standing rule, or the policy's deadline: the decision's Event says which)."""
    rows = list(
        Approval.objects.exclude(status=ApprovalStatus.PENDING)
        .select_related("resource", "agent", "decided_by")
        .order_by("-decided_at", "-pk")[:limit]
    )
    unnamed = [a.pk for a in rows if a.decided_by_id is None and a.decided_by_rule_id is None]
    payloads: dict[int, dict[str, Any]] = {}
    if unnamed:
        for subject_id, payload in Event.objects.filter(
            subject_type="approval", subject_id__in=unnamed, kind__in=DECISION_KINDS
        ).values_list("subject_id", "payload"):
            payloads[subject_id] = payload
    return [DecidedView(a, _decider(a, payloads.get(a.pk, {}))) for a in rows]


@dataclass
class RuleView:
    rule: StandingRule
    described: str


def rules_in_force(*, now: datetime, limit: int = RULES_LIMIT) -> list[RuleView]:
    """Standing rules that still decide writes at ``now`` (active, not expired, uses
    left), newest first, with who made them and from which approval."""
    rows = (
        StandingRule.objects.filter(active=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .filter(Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")))
        .select_related("team", "agent", "resource", "created_by")
        .order_by("-created_at", "-pk")[:limit]
    )
    return [RuleView(rule, rule_describe(rule)) for rule in rows]
