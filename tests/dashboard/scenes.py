"""Small situations for the dashboard to show: a contested write, a deadlock, a held lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalPolicy,
    Conflict,
    Lock,
    Resource,
    Team,
)
from orchestrator.core.resources import approval_request, resource_create, resource_write
from tests import factories


@dataclass
class Contested:
    team: Team
    resource: Resource
    first: Agent
    second: Agent
    approval: Approval


def contested_write(name: str = "doc", *, proposed: Any = "second draft") -> Contested:
    """Two agents write from version 0; the second write waits for an operator."""
    team = factories.team(conflict_policy="ask_operator")
    first = factories.agent(team_=team, name=f"{name}-writer-1")
    second = factories.agent(team_=team, name=f"{name}-writer-2")
    resource = resource_create(name=name, value="first draft\nline two", team=team)
    resource_write(agent=first, resource=name, value="first draft\nline 2", expected_version=0)
    result = resource_write(agent=second, resource=name, value=proposed, expected_version=0)
    assert result.status == "approval_pending", result
    return Contested(team, resource, first, second, Approval.objects.get(pk=result.approval.pk))


@dataclass
class Deadlock:
    team: Team
    agents: list[Agent]
    resources: list[Resource]
    conflict: Conflict


def deadlock(prefix: str = "ledger") -> Deadlock:
    """Two agents each hold one resource and wait for the other's (policy: ask an operator)."""
    team = factories.team(deadlock_policy="ask_operator")
    a = factories.agent(team_=team, name=f"{prefix}-clerk-a")
    b = factories.agent(team_=team, name=f"{prefix}-clerk-b")
    ra = resource_create(name=f"{prefix}-a", value=0, team=team)
    rb = resource_create(name=f"{prefix}-b", value=0, team=team)
    lock_acquire(agent=a, resource=ra.name)
    lock_acquire(agent=b, resource=rb.name)
    lock_acquire(agent=a, resource=rb.name)
    result = lock_acquire(agent=b, resource=ra.name)
    conflict = result.deadlock or Conflict.objects.get(kind="deadlock", status="open")
    return Deadlock(team, [a, b], [ra, rb], conflict)


def held_lock(resource_name: str = "printer", agent_name: str = "holder") -> Lock:
    team = factories.team()
    agent = factories.agent(team_=team, name=agent_name)
    resource_create(name=resource_name, value={"jobs": []}, team=team)
    return lock_acquire(agent=agent, resource=resource_name, ttl=600).lock


@dataclass
class UnderPolicy:
    team: Team
    resource: Resource
    agent: Agent
    policy: ApprovalPolicy
    approval: Approval


def write_under_policy(
    name: str = "budget",
    *,
    started_by: Any = None,
    proposed: Any = None,
    **policy: Any,
) -> UnderPolicy:
    """An agent's write to ``name`` waits for approval under the team's policy (keyword
    arguments: ApprovalPolicy fields, e.g. ``required_approvals=2``); ``started_by`` is
    the operator who started the agent's run (under the two-person rule, not counted)."""
    team = factories.team(name=f"{name}-team")
    agent = factories.agent(team_=team, name=f"{name}-agent")
    resource = resource_create(name=name, value={"total": 100}, team=team)
    rules = ApprovalPolicy.objects.create(team=team, **policy)
    step = None
    if started_by is not None:
        run = factories.run(team=team, created_by=started_by, status="running")
        step = run.steps.create(agent=agent, number=1)
    value = {"total": 120} if proposed is None else proposed
    asked = approval_request(agent=agent, resource=name, value=value, step=step)
    assert asked.status == "approval_pending", asked
    return UnderPolicy(team, resource, agent, rules, Approval.objects.get(pk=asked.approval.pk))
