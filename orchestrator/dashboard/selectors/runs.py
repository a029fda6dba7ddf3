"""A run in detail: its agents' steps with transcripts and tool calls."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.models import Agent, Run, Step
from orchestrator.dashboard.selectors.board import OPEN_STEP_STATUSES

STEPS_PER_AGENT_LIMIT = 200


@dataclass
class AgentSteps:
    agent: Agent
    steps: list[Step]
    finished: bool


@dataclass
class RunDetail:
    run: Run
    agents: list[AgentSteps]
    steps_done: int


def run_detail(*, run: Run) -> RunDetail:
    """Each agent of the run with its steps in order (the latest STEPS_PER_AGENT_LIMIT)."""
    steps = list(
        Step.objects.filter(run=run).select_related("agent").order_by("agent__name", "number")
    )
    by_agent: dict[int, AgentSteps] = {}
    for step in steps:
        entry = by_agent.setdefault(step.agent_id, AgentSteps(step.agent, [], True))
        entry.steps.append(step)
        if step.status in OPEN_STEP_STATUSES:
            entry.finished = False
    for entry in by_agent.values():
        entry.steps = entry.steps[-STEPS_PER_AGENT_LIMIT:]
    return RunDetail(
        run=run,
        agents=list(by_agent.values()),
        steps_done=sum(1 for step in steps if step.status == Step.Status.DONE),
    )
