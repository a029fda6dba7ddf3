"""One step: an agent turn, from claiming the step to its next step.

1. ``step_begin`` (a short transaction) checks that the system, the team, the
   agent and the run are not paused or cancelled (agents.stops) and marks the
   step running. A paused step stays queued; resuming re-enqueues it (once).
2. Outside any transaction, the backend decides.
3. Each tool call runs through the coordination services (its own short
   transaction), journaled as it returns; pause and cancel are re-checked
   between calls. A call that must wait ends the job with the step ``waiting``;
   the grant or the decision wakes the agent after commit
   (orchestrator.core.wakeups) and ``step_resume`` completes the turn.
4. ``step_finish`` records the transcript and enqueues the next step, unless the
   agent finished or reached its step limit (agents.runs).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from typing import Any

from django.utils import timezone

from agents import tracing
from agents.backends import BackendError, StepContext, ToolCall, get_backend
from agents.heartbeat import Heartbeat
from agents.jobs import RESUME, create_step, current_job_id, enqueue, resume_queued
from agents.runs import maybe_end_run, step_limit
from agents.stops import stop_reason
from agents.tools import TOOL_SPECS
from agents.tools_exec import granted_lock, lock_set_outcome
from orchestrator.core import wakeups
from orchestrator.core.errors import ProtocolError
from orchestrator.core.events import event_emit, service
from orchestrator.core.locks import lock_release_all
from orchestrator.core.models import (
    Agent,
    AgentStatus,
    Approval,
    ApprovalStatus,
    LockRequest,
    RequestStatus,
    Run,
    Step,
)
from orchestrator.core.rowlocks import lock_step_in_context, lock_steps
from orchestrator.core.selectors import lock_request_with_lock
from orchestrator.core.sql import journal_step, transcript_turns

logger = logging.getLogger(__name__)

# Step.job_id is the id of the RQ job that runs it (set when it is enqueued); a
# step with job_id "" is parked (paused) and needs a new job to go on.
# Messages given to the backend. It must cover the scripted backend's retry limit:
# 20 refused writes with their 19 re-reads are 78 messages; with less, an agent
# whose write can never apply loops until its step limit instead of giving up.
TRANSCRIPT_WINDOW = 80


@dataclass
class Begin:
    go: bool
    step: Step | None = None
    reason: str = ""


@service
def step_begin(*, step_id: int, job_id: str = "") -> Begin:
    """Claim a queued step for execution, or leave it queued (paused) or cancel it.

    The step comes back with its agent, team and run loaded (lock_step_in_context)."""
    step = lock_step_in_context(step_id)
    if step is None or step.status != Step.Status.QUEUED:
        return Begin(False, reason="not runnable")  # a duplicate delivery, or already done
    if job_id and step.job_id and job_id != step.job_id:
        return Begin(False, reason="superseded")  # the step was re-enqueued since
    reason = stop_reason(step, loaded=True)
    if reason == "cancelled":
        step.status = Step.Status.CANCELLED
        step.finished_at = timezone.now()
        step.save(update_fields=["status", "finished_at"])
        return Begin(False, step, reason)
    if reason == "paused":
        step.status = Step.Status.QUEUED
        step.job_id = ""
        step.save(update_fields=["status", "job_id"])
        event_emit("step.deferred", agent=step.agent, subject=step, payload={"reason": "paused"})
        return Begin(False, step, reason)
    step.status = Step.Status.RUNNING
    step.attempts += 1
    step.started_at = step.started_at or timezone.now()
    step.heartbeat_at = timezone.now()
    step.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
    event_emit(
        "step.started",
        agent=step.agent,
        subject=step,
        payload={"run": step.run_id, "number": step.number, "attempt": step.attempts},
    )
    return Begin(True, step)


def transcript_of(run_id: int, agent_id: int, before: int) -> list[dict[str, Any]]:
    """The agent's messages in this run, from the steps before ``before``.

    Whole turns (an assistant message with all its tool results) are kept, the most
    recent ones within ``TRANSCRIPT_WINDOW`` messages (at least the last turn), so a
    model never sees a result without its call."""
    turns = transcript_turns(run_id, agent_id, before, TRANSCRIPT_WINDOW)
    return [message for turn in turns for message in turn]


def run_step(step_id: int) -> str:
    """RQ job: one agent turn. Returns the step's status.

    Crash-safe: the backend's decision is saved before any tool call runs and
    each call's result is journaled as soon as it returns, so a step retried
    after its worker died replays the same calls and skips those already done;
    writes carry an idempotency key (step and call id), so a write whose result
    was not journaled before the crash is found, not applied again.
    """
    begin = step_begin(step_id=step_id, job_id=current_job_id())
    if not begin.go:
        return begin.reason
    step = begin.step
    agent = step.agent
    step._run_unguarded = step.run.unguarded  # read by agents.tools_exec
    with tracing.agent_step(step, agent) as traced:
        status = _turn(step, agent)
        traced.ended(status)
    return status


def _turn(step: Step, agent: Agent) -> str:
    """Decide (or replay the decision), run the calls and finish: the step's status."""
    with Heartbeat(step.pk, agent, renew_now=step.agent_holds_locks):
        if step.decision:  # a retry: replay what was decided
            assistant = step.decision["assistant"]
            calls = [ToolCall(**call) for call in step.decision["calls"]]
        else:
            decided = _decide(step, agent)
            if isinstance(decided, str):
                return decided
            assistant, calls = decided
        executed = _run_calls(step, agent, calls)
    return step_finish(
        step_id=step.pk,
        assistant=assistant,
        executed=executed,
        waiting=any(call["result"].get("status") == "waiting" for call in executed),
        finished=any(call["tool"] == "finish" and call["result"].get("ok") for call in executed),
    )


def _decide(step: Step, agent: Agent) -> tuple[dict[str, Any], list[ToolCall]] | str:
    """Ask the backend (outside any transaction) and save its decision on the step."""
    run = step.run
    context = StepContext(
        agent=agent.name,
        role=agent.role,
        goal=run.goal,
        config=agent.config,
        transcript=transcript_of(run.pk, agent.pk, step.number),
        tools=TOOL_SPECS,
        step_number=step.number,
        seed=random.Random(f"{run.seed}:{agent.pk}:{step.number}").randrange(2**32),  # noqa: S311
    )
    try:
        decision = get_backend(agent.backend, agent.config).decide(context)
    except BackendError as exc:
        return step_fail(step_id=step.pk, error=str(exc))
    except Exception as exc:  # a backend bug must fail the step, not the worker
        logger.exception("backend of %s crashed", agent.name)
        return step_fail(step_id=step.pk, error=f"backend crashed: {exc!r}")
    calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for call in decision.tool_calls
    ]
    # Content is "" for a turn of tool calls only, never null: OpenAI-compatible
    # servers that type it as a string (llama.cpp's) refuse a null.
    assistant: dict[str, Any] = {"role": "assistant", "content": decision.message or ""}
    if calls:
        assistant["tool_calls"] = calls
    saved = [asdict(call) for call in decision.tool_calls]
    Step.objects.filter(pk=step.pk).update(decision={"assistant": assistant, "calls": saved})
    return assistant, decision.tool_calls


def _run_calls(step: Step, agent: Agent, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Execute the calls not yet journaled; journal each result as it comes."""
    journal = {call["id"]: call for call in step.tool_calls or []}
    executed: list[dict[str, Any]] = []
    waiting = False
    stop: str | None = None  # read with each journal write: the state before the next call
    for call in calls:
        if call.id in journal:
            executed.append(journal[call.id])
            waiting = waiting or journal[call.id]["result"].get("status") == "waiting"
            continue
        if executed and not waiting and stop is None:
            stop = stop_reason(step)  # a retry: the journal was written by the earlier attempt
        if waiting:
            result = _skipped()
        elif stop:
            result = _stopped(stop)
        else:
            result = _execute(agent, step, call)
        executed.append(_record(call.id, call.name, call.arguments, result))
        waiting = waiting or result.get("status") == "waiting"
        stop = stop_reason(step, journaled=journal_step(step.pk, executed, timezone.now()))
    return executed


def _execute(agent: Agent, step: Step, call: ToolCall) -> dict[str, Any]:
    """One call of the model, traced (``execute_tool``): run, or refused if the backend
    could not read its arguments."""
    with tracing.tool_call(call.name, call.id) as traced:
        if call.arguments is None:
            result = {"ok": False, "error": "bad_arguments", "detail": call.error}
        else:
            result = run_tool(agent, step, call.name, call.arguments, key=f"{step.pk}:{call.id}")
        traced.result(result)
    return result


def _record(call_id: str, name: str, arguments: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "tool": name, "arguments": arguments, "result": result}


def _skipped() -> dict[str, Any]:
    return {"ok": False, "error": "skipped", "detail": "an earlier call of this turn is waiting"}


def _stopped(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": "stopped", "detail": f"the run was {reason}"}


def run_tool(
    agent: Agent, step: Step, name: str, args: dict[str, Any], *, key: str = ""
) -> dict[str, Any]:
    """Execute one tool call through the services; the JSON-safe result for the model.

    ``key`` identifies the call (step and call id) so that a retried call is not
    applied twice."""
    from agents import tools_exec

    try:
        return tools_exec.execute(agent, step, name, args, key=key)
    except ProtocolError as exc:
        return {"ok": False, **exc.as_dict()}


# Recorded after a turn in which the agent called no tool: the operator reading the
# transcript, and the model on its next step, see plainly that nothing was done.
NO_TOOL_NOTE = (
    "You called no tool in that turn, so nothing was done. Act only through the tools, "
    "and call finish when the goal is done."
)


def _tool_messages(executed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not executed:
        return [{"role": "user", "content": NO_TOOL_NOTE}]
    return [
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(call["result"])}
        for call in executed
    ]


@service
def step_finish(
    *,
    step_id: int,
    assistant: dict[str, Any],
    executed: list[dict[str, Any]],
    waiting: bool,
    finished: bool,
) -> str:
    """Record a turn; then wait, or enqueue the next step, or end the agent."""
    step = lock_step_in_context(step_id)
    step.tool_calls = executed
    step.transcript = [assistant]
    # The wait may already be over: a grant committed after the call answered
    # "waiting" wakes resume_step, which found this step still running and left.
    if waiting and _settle_waits(step) is None:
        # The tool messages are written when the wait ends (resume_step).
        step.status = Step.Status.WAITING
        step.save(update_fields=["tool_calls", "transcript", "status"])
        event_emit("step.waiting", agent=step.agent, subject=step, payload=_summary(step))
        return step.status
    step.transcript = [assistant, *_tool_messages(step.tool_calls)]
    return _complete(step, finished=finished)


def _settle_waits(step: Step) -> list[dict[str, Any]] | None:
    """Replace the step's waiting results by their outcomes, or None if one still waits."""
    calls = list(step.tool_calls)
    for index, call in enumerate(calls):
        if call["result"].get("status") == "waiting":
            final = wait_result(call)
            if final is None:
                return None
            calls[index] = {**call, "result": final}
    step.tool_calls = calls
    return calls


def _summary(step: Step) -> dict[str, Any]:
    return {
        "run": step.run_id,
        "number": step.number,
        "tools": [call["tool"] for call in step.tool_calls],
    }


def _complete(step: Step, *, finished: bool) -> str:
    """Mark a step done and continue the agent. Inside a service, step row locked."""
    step.status = Step.Status.DONE
    step.finished_at = timezone.now()
    step.save(update_fields=["tool_calls", "transcript", "status", "finished_at"])
    event_emit("step.done", agent=step.agent, subject=step, payload=_summary(step))
    run = step.run  # read with the step's row lock (lock_step_in_context)
    limit = step_limit(run, step.agent)
    if finished:
        _agent_ends(step, AgentStatus.DONE, "finished")
    elif step.number >= limit:
        _agent_ends(step, AgentStatus.FAILED, f"reached its step limit ({limit})")
    elif run.status == Run.Status.CANCELLED:
        pass
    else:
        create_step(run_id=step.run_id, agent_id=step.agent_id, number=step.number + 1)
    return step.status


def _agent_ends(step: Step, status: str, why: str) -> None:
    """An agent is done with its run: release what it still holds, maybe end the run."""
    Agent.objects.filter(pk=step.agent_id).update(status=status)
    lock_release_all(agent_id=step.agent_id, reason=why)
    event_emit(
        "agent.finished" if status == AgentStatus.DONE else "agent.failed",
        agent=step.agent,
        subject=step.agent,
        payload={"run": step.run_id, "why": why},
    )
    maybe_end_run(step.run_id)


@service
def step_fail(*, step_id: int, error: str) -> str:
    """The step cannot go on (its backend failed): the agent fails, its locks are released."""
    (step,) = lock_steps([step_id])
    step.status = Step.Status.FAILED
    step.error = error[:5000]
    step.finished_at = timezone.now()
    step.save(update_fields=["status", "error", "finished_at"])
    event_emit("step.failed", agent=step.agent, subject=step, payload={"error": step.error})
    _agent_ends(step, AgentStatus.FAILED, error[:200])
    return step.status


def wait_result(call: dict[str, Any]) -> dict[str, Any] | None:
    """The final result of a waiting call, or None if it is still waiting."""
    result = call["result"]
    if "lock_set_id" in result:  # acquire_all
        return lock_set_outcome(result["lock_set_id"])
    if "request_id" in result:
        request = lock_request_with_lock(result["request_id"])
        if request is None:
            raise LockRequest.DoesNotExist(f"lock request {result['request_id']} is gone")
        if request.status == RequestStatus.WAITING:
            return None
        if request.status == RequestStatus.GRANTED:
            return {"ok": True, "status": "granted",
                    **granted_lock(request.resource.name, request.lock)}  # fmt: skip
        return {"ok": False, "status": request.status, "error": request.status,
                "detail": request.reason}  # fmt: skip
    approval = Approval.objects.get(pk=result["approval_id"])
    if approval.status == ApprovalStatus.PENDING:
        return None
    # The operator's reason (or the policy's, or the rule's) reaches the agent here, in
    # its next step's transcript; an edit says what was written instead.
    answer = {
        "ok": approval.status == ApprovalStatus.APPROVED,
        "status": approval.status,
        "version": approval.applied_version,
        "detail": approval.decision_note,
    }
    if (
        approval.status == ApprovalStatus.APPROVED
        and approval.applied_value != approval.proposed_value
    ):
        answer["status"] = "edited"
        answer["value"] = approval.applied_value
    return answer


@service
def step_resume(step_id: int) -> str:
    """Complete a waiting step whose waits have all ended (idempotent)."""
    step = lock_step_in_context(step_id)
    if step is None or step.status != Step.Status.WAITING:
        return "not waiting"
    calls = _settle_waits(step)
    if calls is None:
        return "still waiting"
    step.transcript = [*step.transcript[:1], *_tool_messages(calls)]
    return _complete(step, finished=False)


def _wake(*, agent_id: int, step_id: int | None, reason: str) -> None:
    """Wake-up handler (after commit): a wait ended, or the agent may go on again."""
    if step_id is not None:
        enqueue(RESUME, step_id)
    elif reason == "resumed":
        resume_queued(agent_ids=[agent_id])


wakeups.register(_wake)
