"""Runs: starting one, its step limits, ending it when its agents are done, and
cancelling it."""

from __future__ import annotations

from django.utils import timezone

from agents.jobs import create_step
from orchestrator.core.errors import Conflicting, Invalid
from orchestrator.core.events import event_emit, service
from orchestrator.core.locks import lock_release_all
from orchestrator.core.models import Agent, AgentStatus, Run, Step, Team
from orchestrator.core.rowlocks import lock_agents, lock_run_ending, lock_runs
from orchestrator.core.types import User

# A step in one of these is not over: its agent is still at work in that run.
OPEN_STEP_STATUSES = (Step.Status.QUEUED, Step.Status.RUNNING, Step.Status.WAITING)


@service
def run_start(
    *,
    team: Team,
    goal: str,
    agents: list[Agent] | None = None,
    max_steps: int = 50,
    seed: int | None = None,
    unguarded: bool = False,
    elsewhere: bool = False,
    user: User = None,
) -> Run:
    """Create a run and enqueue the first step of each of its agents (after commit).

    ``unguarded`` bypasses the protocol for this run's tool calls (agents.tools_exec).
    ``elsewhere``: its agents run elsewhere (coding agents with their own loop), so no
    step is created or enqueued; agents.external records their turns as steps.
    Refuses, leaving nothing behind, a run without agents, an agent of another team,
    and an agent still taking steps in another active run (checked with the agents'
    rows locked, so two operators starting runs at once cannot both take an agent).
    """
    members = agents if agents is not None else list(team.agents.order_by("pk"))
    if not members:
        raise Invalid("no_agents", f"Team {team.name} has no agents: add some in the admin first.")
    strangers = [a.name for a in members if a.team_id != team.pk]
    if strangers:
        raise Invalid(
            "agent_not_in_team", f"Not agents of team {team.name}: {', '.join(strangers)}."
        )
    members = lock_agents(a.pk for a in members)
    busy = (
        Step.objects.filter(
            agent__in=members,
            status__in=OPEN_STEP_STATUSES,
            run__status__in=[Run.Status.RUNNING, Run.Status.PAUSED],
        )
        .values_list("agent__name", "run_id")
        .order_by("agent__name")
        .first()
    )
    if busy is not None:
        raise Conflicting(
            "agent_busy", f"Agent {busy[0]} is still taking steps in run #{busy[1]}.", run=busy[1]
        )
    run = Run.objects.create(
        team=team,
        goal=goal,
        status=Run.Status.RUNNING,
        max_steps=max_steps,
        seed=seed,
        unguarded=unguarded,
        created_by=user if user is not None and user.is_authenticated else None,
        started_at=timezone.now(),
    )
    for agent in members:
        agent.status = AgentStatus.RUNNING
        agent.save(update_fields=["status"])
        if not elsewhere:
            create_step(run_id=run.pk, agent_id=agent.pk, number=1)
    event_emit(
        "run.started",
        team=team,
        user=user,
        subject=run,
        payload={"run": run.pk, "goal": goal[:500], "agents": [a.name for a in members]},
    )
    return run


def step_limit(run: Run, agent: Agent) -> int:
    """How many steps ``agent`` may take in ``run``: the run's limit, or the agent's own
    ``max_steps`` (its backend config) when that is smaller."""
    own = agent.config.get("max_steps") if isinstance(agent.config, dict) else None
    return min(run.max_steps, own) if isinstance(own, int) else run.max_steps


def maybe_end_run(run_id: int) -> None:
    """End the run if none of its steps is open any more: failed if an agent failed.
    Inside a service; serialized per run by ``lock_run_ending``."""
    lock_run_ending(run_id)
    if Step.objects.filter(run_id=run_id, status__in=OPEN_STEP_STATUSES).exists():
        return
    run = Run.objects.get(pk=run_id)
    if run.status != Run.Status.RUNNING:
        return
    failed = Agent.objects.filter(steps__run_id=run_id, status=AgentStatus.FAILED).exists()
    run.status = Run.Status.FAILED if failed else Run.Status.FINISHED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at"])
    event_emit(f"run.{run.status}", team=run.team_id, subject=run, payload={"run": run.pk})


@service
def run_cancel(*, run_id: int, user: User = None) -> Run:
    """Cancel a run: no further tool call executes; its agents' locks and waits end."""
    (run,) = lock_runs([run_id])
    if run.status in (Run.Status.FINISHED, Run.Status.FAILED, Run.Status.CANCELLED):
        return run
    run.status = Run.Status.CANCELLED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at"])
    open_steps = Step.objects.filter(run=run, status__in=[Step.Status.QUEUED, Step.Status.WAITING])
    agent_ids = set(open_steps.values_list("agent_id", flat=True))
    open_steps.update(status=Step.Status.CANCELLED, finished_at=timezone.now())
    event_emit("run.cancelled", team=run.team_id, user=user, subject=run, payload={"run": run.pk})
    for agent_id in sorted(agent_ids | set(run.steps.values_list("agent_id", flat=True))):
        lock_release_all(agent_id=agent_id, reason=f"run {run.pk} cancelled", user=user)
    return run
