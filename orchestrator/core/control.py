"""Operator control: pausing and resuming agents and teams.

Each change is a service (its own transaction) and leaves an Event naming
the user who made it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.utils import timezone

from orchestrator.core import wakeups
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Agent, ConflictKind, Event, Run, Team
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


# The conflicts that count toward a team's pause_after_conflicts: an agent that keeps
# writing with a stale token or a stale version is working on a world it does not see.
PAUSING_CONFLICTS = (ConflictKind.STALE_FENCE, ConflictKind.WRITE_CONFLICT)


def conflicts_counted(agent: Agent, since: datetime) -> int:
    """How many stale-fence and write conflicts ``agent`` had since ``since``, counting
    each refusal that repeated an earlier one (``conflict.repeated``): read from the
    event log, which has every one of them."""
    return Event.objects.filter(
        agent=agent,
        kind__in=["conflict.opened", "conflict.repeated"],
        payload__kind__in=PAUSING_CONFLICTS,
        created_at__gte=since,
    ).count()


@service
def agent_pause_by_policy(*, agent_id: int) -> bool:
    """Pause the agent if its team's ``pause_after_conflicts`` is reached: that many
    stale-fence and write conflicts in the team's ``pause_conflict_window`` minutes,
    counting only those since the agent was last resumed (an operator who resumes it
    gives it a clean slate). Emits ``agent.paused`` by "policy" with the reason.
    Returns whether it paused the agent; an agent already paused, or below the
    threshold, is left as it is. Run after the transaction that recorded the conflict
    commits (core/conflicts.py), so that its events are counted."""
    agent = next(iter(lock_agents([agent_id])), None)
    if agent is None or agent.paused:
        return False
    team = agent.team
    limit = team.pause_after_conflicts
    if limit is None:
        return False
    since = timezone.now() - timedelta(minutes=team.pause_conflict_window)
    resumed = (
        Event.objects.filter(agent=agent, kind="agent.resumed")
        .order_by("-id")
        .values_list("created_at", flat=True)
        .first()
    )
    if resumed is not None and resumed > since:
        since = resumed
    count = conflicts_counted(agent, since)
    if count < limit:
        return False
    agent.paused = True
    agent.save(update_fields=["paused"])
    event_emit(
        "agent.paused",
        agent=agent,
        actor="policy",
        subject=agent,
        payload={
            "reason": f"{count} stale-fence or write conflicts within "
            f"{team.pause_conflict_window} minutes (the team pauses an agent at {limit})"
        },
    )
    return True


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
