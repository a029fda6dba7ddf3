"""The agent runtime: runs, steps, and the RQ jobs that execute them.

A step is one agent turn, executed as one RQ job on the ``steps`` queue:

1. ``step_begin`` (a short transaction) checks that the system, the team, the
   agent and the run are not paused or cancelled and marks the step running.
   A paused step stays queued; resuming re-enqueues it (exactly once).
2. Outside any transaction, the backend decides: it gets the agent's role,
   the run's goal, the recent transcript and the tool specs.
3. Each tool call runs through the coordination services (its own short
   transaction); pause and cancel are re-checked between calls. A call that
   must wait (a queued lock, a pending approval) ends the job with the step
   ``waiting``; the grant or the decision wakes the agent after commit
   (orchestrator.core.wakeups) and ``resume_step`` completes the step. No
   worker ever sleeps on a lock or a human.
4. ``step_finish`` records the transcript and enqueues the next step, unless
   the agent finished or reached its step limit; when every agent of a run is
   done the run ends.

Jobs carry ids only; every job re-reads the rows it needs.

Where it lives (this module re-exports the public names, and holds the two RQ job
entry points, whose dotted paths queued jobs keep):

- agents/jobs.py: the ``steps`` queue, enqueueing, creating steps, resuming parked ones;
- agents/steps.py: the step lifecycle (begin, decide, run the calls, finish, fail,
  resume after a wait) and the wake-up handler;
- agents/stops.py: whether a step is stopped (paused or cancelled), one function;
- agents/heartbeat.py: the heartbeat and lease renewal while a step runs;
- agents/runs.py: starting, ending and cancelling runs, step limits.
"""

from __future__ import annotations

from agents.heartbeat import HEARTBEAT_SECONDS, Heartbeat, renew_leases
from agents.jobs import (
    QUEUE,
    create_step,
    enqueue,
    enqueue_step,
    new_job_id,
    resume_queued,
    steps_queue,
)
from agents.runs import OPEN_STEP_STATUSES, maybe_end_run, run_cancel, run_start, step_limit
from agents.steps import (
    NO_TOOL_NOTE,
    TRANSCRIPT_WINDOW,
    run_step,
    run_tool,
    step_begin,
    step_fail,
    step_finish,
    step_resume,
    transcript_of,
    wait_result,
)
from agents.stops import StopState, stop_reason

__all__ = [
    "HEARTBEAT_SECONDS", "NO_TOOL_NOTE", "OPEN_STEP_STATUSES", "QUEUE", "TRANSCRIPT_WINDOW",
    "Heartbeat", "StopState", "create_step", "enqueue", "enqueue_step", "execute_step",
    "maybe_end_run", "new_job_id", "renew_leases", "resume_queued", "resume_step", "run_cancel",
    "run_start", "run_step", "run_tool", "step_begin", "step_fail", "step_finish", "step_limit",
    "step_resume", "steps_queue", "stop_reason", "transcript_of", "wait_result",
]  # fmt: skip


def execute_step(step_id: int) -> str:
    """RQ job (agents.jobs.EXECUTE): one agent turn (agents.steps.run_step)."""
    return run_step(step_id)


def resume_step(step_id: int) -> str:
    """RQ job (agents.jobs.RESUME): a waiting step's wait ended; complete the turn and go on."""
    return step_resume(step_id)
