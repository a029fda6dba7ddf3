"""Rows an operator action names, or NotFound: actions answer 404, never 500."""

from __future__ import annotations

from orchestrator.core.errors import NotFound
from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    ConflictKind,
    Lock,
    Run,
    StandingRule,
    Team,
)


def agent_get(*, agent_id: int) -> Agent:
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        raise NotFound("agent_not_found", f"no agent with id {agent_id}")
    return agent


def team_get(*, team_id: int) -> Team:
    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        raise NotFound("team_not_found", f"no team with id {team_id}")
    return team


def run_get(*, run_id: int) -> Run:
    run = Run.objects.select_related("team").filter(pk=run_id).first()
    if run is None:
        raise NotFound("run_not_found", f"no run with id {run_id}")
    return run


def lock_get(*, lock_id: int) -> Lock:
    lock = Lock.objects.select_related("agent", "resource").filter(pk=lock_id).first()
    if lock is None:
        raise NotFound("lock_not_found", f"no lock with id {lock_id}")
    return lock


def deadlock_get(*, conflict_id: int) -> Conflict:
    conflict = Conflict.objects.filter(pk=conflict_id, kind=ConflictKind.DEADLOCK).first()
    if conflict is None:
        raise NotFound("conflict_not_found", f"no deadlock with id {conflict_id}")
    return conflict


def approval_get(*, approval_id: int) -> Approval:
    approval = (
        Approval.objects.select_related("resource", "agent", "decided_by")
        .filter(pk=approval_id)
        .first()
    )
    if approval is None:
        raise NotFound("approval_not_found", f"no approval with id {approval_id}")
    return approval


def rule_get(*, rule_id: int) -> StandingRule:
    rule = StandingRule.objects.filter(pk=rule_id).first()
    if rule is None:
        raise NotFound("rule_not_found", f"no standing rule with id {rule_id}")
    return rule
