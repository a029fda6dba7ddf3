"""Operator control: pausing and resuming agents and teams.

Each change is a service (its own transaction) and leaves an Event naming
the user who made it.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.core import wakeups
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Agent, Run, Team
from orchestrator.core.rowlocks import lock_agents, lock_runs, lock_switchboard, lock_teams
from orchestrator.core.types import User


@service
def agents_set_paused(*, agents: Iterable[Agent], paused: bool, user: User = None) -> int:
    """Pause or resume agents; returns how many changed. Unchanged ones emit nothing."""
    changed = [a for a in lock_agents(agent.pk for agent in agents) if a.paused != paused]
    for agent in changed:
        agent.paused = paused
        agent.save(update_fields=["paused"])
        event_emit(
            "agent.paused" if paused else "agent.resumed", agent=agent, user=user, subject=agent
        )
        if not paused:
            _wake_resumed([agent.pk])
    return len(changed)


@service
def teams_set_paused(*, teams: Iterable[Team], paused: bool, user: User = None) -> int:
    """Pause or resume whole teams; returns how many changed."""
    changed = [t for t in lock_teams(team.pk for team in teams) if t.paused != paused]
    for team in changed:
        team.paused = paused
        team.save(update_fields=["paused"])
        event_emit("team.paused" if paused else "team.resumed", team=team, user=user, subject=team)
        if not paused:
            _wake_resumed(list(team.agents.values_list("pk", flat=True)))
    return len(changed)


def _wake_resumed(agent_ids: list[int]) -> None:
    """After commit, the runtime re-enqueues the parked step of each agent (once)."""
    for agent_id in agent_ids:
        wakeups.schedule(agent_id=agent_id, step_id=None, reason="resumed")


@service
def runs_set_paused(*, runs: Iterable[Run], paused: bool, user: User = None) -> int:
    """Pause or resume runs; returns how many changed."""
    changed = [r for r in lock_runs(run.pk for run in runs) if r.paused != paused]
    for run in changed:
        run.paused = paused
        run.save(update_fields=["paused"])
        event_emit(
            "run.paused" if paused else "run.resumed", team=run.team_id, user=user, subject=run
        )
        if not paused:
            _wake_resumed(list(run.steps.values_list("agent_id", flat=True).distinct()))
    return len(changed)


@service
def system_set_paused(*, paused: bool, user: User = None) -> bool:
    """Pause or resume everything (the emergency stop). Returns whether it changed."""
    board = lock_switchboard()
    if board.paused == paused:
        return False
    board.paused = paused
    board.save(update_fields=["paused", "updated_at"])
    event_emit("system.paused" if paused else "system.resumed", user=user, subject=board)
    if not paused:
        _wake_resumed(list(Agent.objects.values_list("pk", flat=True)))
    return True
