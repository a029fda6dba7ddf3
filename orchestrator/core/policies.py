"""Approval policies: what decides an approval when no operator is watching.

A team's :class:`~orchestrator.core.models.ApprovalPolicy` (or one for a
resource, or for a name prefix, which overrides it there) gives each approval,
when it is opened, its terms: a deadline and what happens when it passes
(reject, the default: fail closed; approve; or escalate: tell a second group
and extend the deadline once), and how many distinct operators must approve
(the two-person rule). A :class:`~orchestrator.core.models.StandingRule` is a
decision taken in advance: always approve, or always reject, the writes of an
agent (or any) to a resource (or a prefix), until a date or for a number of
uses.

This module finds the policy and the rules that apply and takes a rule's use;
core/approvals.py applies them (it opens and decides approvals). An approving
rule never decides an approval that needs more than one operator: a write that
needs two people cannot pass with one, and a rule is one person's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Q

from orchestrator.core.errors import Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalPolicy,
    DeadlineOutcome,
    Resource,
    RuleAction,
    StandingRule,
)
from orchestrator.core.types import User


@dataclass(frozen=True)
class Terms:
    """An approval's terms under its policy (the defaults without one)."""

    policy: ApprovalPolicy | None
    required_approvals: int = 1
    deadline_at: datetime | None = None
    on_deadline: str = DeadlineOutcome.REJECT


def policy_for(res: Resource) -> ApprovalPolicy | None:
    """The policy that applies to ``res``: its own, else the longest prefix of its name
    among its team's prefix policies, else its team's (no resource, empty prefix).
    One query over the team's policies, which are few."""
    best: ApprovalPolicy | None = None
    best_rank = (-1, -1)
    for policy in ApprovalPolicy.objects.filter(
        Q(resource_id=res.pk) | Q(resource__isnull=True), team_id=res.team_id
    ).select_related("escalate_to"):
        if policy.resource_id is not None:
            return policy
        if res.name.startswith(policy.prefix):
            rank = (1 if policy.prefix else 0, len(policy.prefix))
            if rank > best_rank:
                best, best_rank = policy, rank
    return best


def terms_for(res: Resource, now: datetime) -> Terms:
    """The terms an approval on ``res`` opened at ``now`` takes."""
    policy = policy_for(res)
    if policy is None:
        return Terms(policy=None)
    deadline = None
    if policy.deadline_seconds is not None:
        deadline = now + timedelta(seconds=policy.deadline_seconds)
    return Terms(
        policy=policy,
        required_approvals=policy.required_approvals,
        deadline_at=deadline,
        on_deadline=policy.on_deadline,
    )


def escalation_extension(approval: Approval) -> timedelta | None:
    """How long an escalation extends ``approval``'s deadline, and None when it cannot
    escalate (already escalated, or its policy or the policy's group is gone)."""
    policy = approval.policy
    if approval.escalated_at is not None or policy is None or policy.escalate_to_id is None:
        return None
    seconds = policy.escalation_seconds or policy.deadline_seconds
    return timedelta(seconds=seconds) if seconds else None


def _matching_rules(*, res: Resource, agent: Agent, now: datetime) -> list[StandingRule]:
    rules = StandingRule.objects.filter(
        Q(agent_id=agent.pk) | Q(agent__isnull=True),
        Q(resource_id=res.pk) | Q(resource__isnull=True),
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")),
        team_id=res.team_id,
        active=True,
    ).select_related("agent", "resource")  # for the decision's note (rule_describe)
    found = [r for r in rules if r.resource_id is not None or res.name.startswith(r.prefix)]

    def rank(rule: StandingRule) -> tuple[int, int, int, int, int]:
        # Rejections first (the safe side), then the most specific, then the oldest.
        return (
            0 if rule.action == RuleAction.REJECT else 1,
            0 if rule.resource_id is not None else 1,
            -len(rule.prefix),
            0 if rule.agent_id is not None else 1,
            rule.pk,
        )

    return sorted(found, key=rank)


def rule_take(
    *, res: Resource, agent: Agent, now: datetime, required_approvals: int
) -> StandingRule | None:
    """Find the standing rule that decides a write of ``agent`` to ``res`` now, and take
    one of its uses. Caller holds the Resource row lock.

    A use is taken by one conditional UPDATE, so two writes racing for a rule's last
    use cannot both have it: the loser goes on to the next rule, or to an operator.
    An approving rule is skipped when the approval needs more than one operator.
    """
    for rule in _matching_rules(res=res, agent=agent, now=now):
        if rule.action == RuleAction.APPROVE and required_approvals > 1:
            continue
        taken = (
            StandingRule.objects.filter(pk=rule.pk, active=True)
            .filter(Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")))
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .update(uses=F("uses") + 1)
        )
        if taken:
            rule.uses += 1
            return rule
    return None


def rule_describe(rule: StandingRule) -> str:
    """``always approve writes by bob to doc`` (what the rule decides, for people)."""
    verb = "always approve" if rule.action == RuleAction.APPROVE else "always reject"
    who = f"by {rule.agent.name}" if rule.agent_id else "by any agent"
    where = rule.resource.name if rule.resource_id else f"{rule.prefix}*"
    limits = []
    if rule.max_uses is not None:
        limits.append(f"{rule.uses} of {rule.max_uses} uses")
    if rule.expires_at is not None:
        limits.append(f"until {rule.expires_at:%Y-%m-%d %H:%M} UTC")
    return f"rule #{rule.pk}: {verb} writes {who} to {where}" + (
        f" ({', '.join(limits)})" if limits else ""
    )


@service
def rule_create(
    *,
    user: User,
    action: str,
    approval_id: int | None = None,
    team_id: int | None = None,
    agent_id: int | None = None,
    resource_id: int | None = None,
    prefix: str = "",
    any_agent: bool = False,
    expires_at: datetime | None = None,
    max_uses: int | None = None,
    reason: str = "",
) -> StandingRule:
    """Create a standing rule, from an approval (its agent, unless ``any_agent``, and its
    resource, unless a ``prefix`` is given) or from explicit ids, and emit
    ``rule.created`` naming the user. Raises Invalid or NotFound; writes nothing then.
    """
    if action not in RuleAction.values:
        raise Invalid("invalid_action", "action must be 'approve' or 'reject'")
    if max_uses is not None and max_uses < 1:
        raise Invalid("invalid_request", "max_uses: must be at least 1")
    from_approval = None
    if approval_id is not None:
        from_approval = (
            Approval.objects.select_related("resource", "agent").filter(pk=approval_id).first()
        )
        if from_approval is None:
            raise NotFound("approval_not_found", f"no approval with id {approval_id}")
        team_id = from_approval.resource.team_id
        agent_id = None if any_agent else from_approval.agent_id
        resource_id = None if prefix else from_approval.resource_id
    if team_id is None:
        raise Invalid("invalid_request", "team: a rule needs a team (or an approval)")
    if not resource_id and not prefix:
        raise Invalid("invalid_request", "a rule needs a resource or a name prefix")
    if resource_id and not Resource.objects.filter(pk=resource_id, team_id=team_id).exists():
        raise Invalid("invalid_request", "resource: not a resource of the rule's team")
    if agent_id and not Agent.objects.filter(pk=agent_id, team_id=team_id).exists():
        raise Invalid("invalid_request", "agent: not an agent of the rule's team")
    rule = StandingRule.objects.create(
        team_id=team_id,
        action=action,
        agent_id=agent_id,
        resource_id=resource_id or None,
        prefix="" if resource_id else prefix,
        expires_at=expires_at,
        max_uses=max_uses,
        reason=reason[:5000],
        created_by=user if user is not None and user.is_authenticated else None,
        from_approval=from_approval,
    )
    rule = StandingRule.objects.select_related("agent", "resource").get(pk=rule.pk)
    event_emit(
        "rule.created",
        team=team_id,
        user=user,
        subject=rule,
        payload={
            "rule": rule.pk,
            "action": rule.action,
            "agent": rule.agent.name if rule.agent_id else None,
            "resource": rule.resource.name if rule.resource_id else f"{rule.prefix}*",
        },
    )
    return rule


@service
def rule_revoke(*, rule_id: int, user: User) -> StandingRule:
    """End a standing rule now (idempotent); ``rule.revoked`` names the user."""
    rule = StandingRule.objects.filter(pk=rule_id).first()
    if rule is None:
        raise NotFound("rule_not_found", f"no standing rule with id {rule_id}")
    if rule.active:
        StandingRule.objects.filter(pk=rule_id).update(active=False)
        rule.active = False
        event_emit("rule.revoked", team=rule.team_id, user=user, subject=rule,
                   payload={"rule": rule.pk})  # fmt: skip
    return rule
