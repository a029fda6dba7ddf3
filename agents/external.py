"""Runs of agents that run elsewhere: their turns, as they report them, become steps.

A coding agent (Claude Code, say) has its own loop: no RQ job executes its turns.
Its run is started with ``run_start(..., elsewhere=True)`` (no step is created or
enqueued), and each of its turns is recorded when it ends, as a step that is
already done: the tool calls it made and what came of them, in the format of the
runtime's own steps (``tool``, ``arguments``, ``result``), so that the run's page
shows them and ``agents.checker`` reads them. The run ends when whoever drives the
agents says they are all done (:func:`external_run_end`).

The agents' locks are theirs: recording a turn, even the last, releases nothing
(the guard of a coding agent releases its locks at the end of each turn).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Max
from django.utils import timezone

from agents.runs import maybe_end_run
from orchestrator.core.errors import Conflicting
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Agent, AgentStatus, Run, Step
from orchestrator.core.rowlocks import lock_runs


@service
def external_turn_record(
    *,
    run_id: int,
    agent_id: int,
    tool_calls: list[dict[str, Any]],
    transcript: list[dict[str, Any]] | None = None,
    started_at: datetime | None = None,
    finished: bool = False,
    failed: str = "",
) -> Step:
    """Record one turn of an agent of the run as its next step, done.

    ``finished``: that was the agent's last turn and it finished its work; ``failed``
    (a reason): it could not (the step is failed, with that error). Either way the
    agent is then done with the run. Raises
    Conflicting(run_not_running) for a run that ended (an operator cancelled it, say):
    the agent should stop."""
    (run,) = lock_runs([run_id])  # as run_cancel does: the run's row first
    agent = Agent.objects.get(pk=agent_id, team_id=run.team_id)
    if run.status != Run.Status.RUNNING:
        raise Conflicting("run_not_running", f"Run #{run.pk} is {run.status}.", run=run.pk)
    last = Step.objects.filter(run=run, agent=agent).aggregate(last=Max("number"))["last"]
    now = timezone.now()
    step = Step.objects.create(
        run=run,
        agent=agent,
        number=(last or 0) + 1,
        status=Step.Status.FAILED if failed else Step.Status.DONE,
        error=failed[:5000],
        attempts=1,
        tool_calls=tool_calls,
        transcript=transcript or [],
        started_at=started_at or now,
        finished_at=now,
    )
    tools = [str(call.get("tool", "")) for call in tool_calls]
    payload = {"run": run.pk, "number": step.number, "tools": tools}
    event_emit("step.done", agent=agent, subject=step, payload=payload)
    if finished or failed:
        Agent.objects.filter(pk=agent.pk).update(
            status=AgentStatus.FAILED if failed else AgentStatus.DONE
        )
        event_emit(
            "agent.failed" if failed else "agent.finished",
            agent=agent,
            subject=agent,
            payload={"run": run.pk, "why": failed or "finished"},
        )
    return step


@service
def external_run_end(*, run_id: int) -> Run:
    """End the run once its agents' turns are all recorded: finished, or failed if one
    of its agents failed. A run that has ended already is left as it is."""
    maybe_end_run(run_id)
    return Run.objects.get(pk=run_id)
