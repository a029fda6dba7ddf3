"""Operator control: pausing and resuming agents and teams.

Each change is a service (its own transaction) and leaves an Event naming
the user who made it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Agent, Team
from orchestrator.core.rowlocks import lock_agents, lock_teams

User = AbstractBaseUser | AnonymousUser | None


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
    return len(changed)


@service
def teams_set_paused(*, teams: Iterable[Team], paused: bool, user: User = None) -> int:
    """Pause or resume whole teams; returns how many changed."""
    changed = [t for t in lock_teams(team.pk for team in teams) if t.paused != paused]
    for team in changed:
        team.paused = paused
        team.save(update_fields=["paused"])
        event_emit("team.paused" if paused else "team.resumed", team=team, user=user, subject=team)
    return len(changed)
