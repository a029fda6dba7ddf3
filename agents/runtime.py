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
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import django_rq
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from agents.backends import BackendError, StepContext, ToolCall, get_backend
from agents.tools import TOOL_SPECS
from orchestrator.core import wakeups
from orchestrator.core.errors import Conflicting, Invalid, ProtocolError
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    AgentStatus,
    Approval,
    ApprovalStatus,
    Lock,
    LockRequest,
    RequestStatus,
    Run,
    Step,
    Switchboard,
    Team,
)
from orchestrator.core.rowlocks import (
    lock_agents,
    lock_run_ending,
    lock_runs,
    lock_step_in_context,
    lock_steps,
)
from orchestrator.core.selectors import lock_request_with_lock
from orchestrator.core.sql import journal_step, transcript_turns
from orchestrator.core.types import User

logger = logging.getLogger(__name__)

QUEUE = "steps"
# Step.job_id is the id of the RQ job that runs it (set when it is enqueued); a
# step with job_id "" is parked (paused) and needs a new job to go on.
# Messages given to the backend. It must cover the scripted backend's retry limit:
# 20 refused writes with their 19 re-reads are 78 messages; with less, an agent
# whose write can never apply loops until its step limit instead of giving up.
TRANSCRIPT_WINDOW = 80
HEARTBEAT_SECONDS = 5.0
# A step in one of these is not over: its agent is still at work in that run.
OPEN_STEP_STATUSES = (Step.Status.QUEUED, Step.Status.RUNNING, Step.Status.WAITING)


_queue: tuple[int, Any] = (0, None)


def steps_queue() -> Any:
    """The ``steps`` queue, one per process: ``django_rq.get_queue`` builds a new
    Redis client (and connection) on every call, which cost ~6 ms per enqueue."""
    global _queue
    if _queue[0] != os.getpid():
        _queue = (os.getpid(), django_rq.get_queue(QUEUE))
    return _queue[1]


def enqueue(func: Any, *args: Any, job_id: str | None = None) -> None:
    """Enqueue a job on the steps queue once the current transaction commits."""
    steps_queue().enqueue(func, *args, job_timeout=600, job_id=job_id)


def new_job_id() -> str:
    return f"step-{uuid.uuid4().hex}"


def enqueue_step(step_id: int) -> str:
    """Give an existing step a new job (after commit). Caller holds the step's row."""
    job_id = new_job_id()
    Step.objects.filter(pk=step_id).update(job_id=job_id)
    enqueue(execute_step, step_id, job_id=job_id)
    return job_id


def create_step(*, run_id: int, agent_id: int, number: int) -> Step:
    """Create a step with its job id in the same insert, and enqueue it after commit."""
    step = Step.objects.create(run_id=run_id, agent_id=agent_id, number=number, job_id=new_job_id())
    enqueue(execute_step, step.pk, job_id=step.job_id)
    return step


# --- starting a run -------------------------------------------------------------------


@service
def run_start(
    *,
    team: Team,
    goal: str,
    agents: list[Agent] | None = None,
    max_steps: int = 50,
    seed: int | None = None,
    unguarded: bool = False,
    user: User = None,
) -> Run:
    """Create a run and enqueue the first step of each of its agents (after commit).

    ``unguarded`` bypasses the protocol for this run's tool calls (agents.tools_exec).
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
        create_step(run_id=run.pk, agent_id=agent.pk, number=1)
    event_emit(
        "run.started",
        team=team,
        user=user,
        subject=run,
        payload={"run": run.pk, "goal": goal[:500], "agents": [a.name for a in members]},
    )
    return run


# --- pause checks ---------------------------------------------------------------------


class StopState(NamedTuple):
    """What decides whether a step may go on: see agents.runtime.stop_reason."""

    run_status: str
    run_paused: bool
    agent_paused: bool
    team_paused: bool
    system_paused: bool

    def reason(self) -> str:
        """'' (go on), 'paused' or 'cancelled'."""
        if self.run_status == "cancelled":
            return "cancelled"
        paused = self.run_paused or self.agent_paused or self.team_paused or self.system_paused
        return "paused" if paused else ""


def stop_reason(step: Step) -> str:
    """Why this step must not go on now: '' (go), 'paused' or 'cancelled'. One query."""
    paused_agent = Agent.objects.filter(pk=OuterRef("agent_id"), paused=True)
    paused_team = Team.objects.filter(pk=OuterRef("run__team_id"), paused=True)
    row = (
        Step.objects.filter(pk=step.pk)
        .annotate(
            agent_paused=Exists(paused_agent),
            team_paused=Exists(paused_team),
            system_paused=Exists(Switchboard.objects.filter(pk=1, paused=True)),
        )
        .values("run__status", "run__paused", "agent_paused", "team_paused", "system_paused")
        .get()
    )
    return StopState(
        row["run__status"],
        row["run__paused"],
        row["agent_paused"],
        row["team_paused"],
        row["system_paused"],
    ).reason()


def _loaded_stop_reason(step: Step) -> str:
    """``stop_reason`` for a step loaded by ``lock_step_in_context`` (no query)."""
    return StopState(
        step.run.status,
        step.run.paused,
        step.agent.paused,
        step.run_team_paused,
        step.system_paused,
    ).reason()


# --- one step -------------------------------------------------------------------------


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
    reason = _loaded_stop_reason(step)
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


def _current_job_id() -> str:
    from rq import get_current_job

    job = get_current_job()
    return job.id if job is not None else ""


def execute_step(step_id: int) -> str:
    """RQ job: one agent turn (see ``run_step``)."""
    return run_step(step_id)


def run_step(step_id: int) -> str:
    """RQ job: one agent turn. Returns the step's status.

    Crash-safe: the backend's decision is saved before any tool call runs and
    each call's result is journaled as soon as it returns, so a step retried
    after its worker died replays the same calls and skips those already done;
    writes carry an idempotency key (step and call id), so a write whose result
    was not journaled before the crash is found, not applied again.
    """
    begin = step_begin(step_id=step_id, job_id=_current_job_id())
    if not begin.go:
        return begin.reason
    step = begin.step
    agent = step.agent
    step._run_unguarded = step.run.unguarded  # read by agents.tools_exec
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
        elif call.arguments is None:
            result = {"ok": False, "error": "bad_arguments", "detail": call.error}
        else:
            result = run_tool(agent, step, call.name, call.arguments, key=f"{step.pk}:{call.id}")
        executed.append(_record(call.id, call.name, call.arguments, result))
        waiting = waiting or result.get("status") == "waiting"
        stop = StopState(*journal_step(step.pk, executed, timezone.now())).reason()
    return executed


class Heartbeat:
    """While a step runs: mark it alive and keep its agent's leases from running out.

    A thread wakes every ``HEARTBEAT_SECONDS``; the monitor treats a running
    step whose heartbeat is older than ``agents.recovery.STALE_AFTER`` as lost
    (its worker died) and retries it.
    """

    def __init__(self, step_id: int, agent: Agent, *, renew_now: bool = True) -> None:
        self.step_id, self.agent, self.renew_now = step_id, agent, renew_now
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{step_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        # step_begin stamped the first heartbeat when it claimed the step.
        if self.renew_now:  # the agent holds locks from its earlier steps
            renew_leases(self.agent)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(HEARTBEAT_SECONDS * 2)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                Step.objects.filter(pk=self.step_id).update(heartbeat_at=timezone.now())
                renew_leases(self.agent)
        except Exception:  # the step itself decides its fate; the monitor covers the rest
            logger.exception("heartbeat of step %s failed", self.step_id)
        finally:
            connection.close()


def _record(call_id: str, name: str, arguments: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "tool": name, "arguments": arguments, "result": result}


def _skipped() -> dict[str, Any]:
    return {"ok": False, "error": "skipped", "detail": "an earlier call of this turn is waiting"}


def _stopped(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": "stopped", "detail": f"the run was {reason}"}


# --- tools ----------------------------------------------------------------------------


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


# --- finishing, failing, resuming -----------------------------------------------------


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


def step_limit(run: Run, agent: Agent) -> int:
    """How many steps ``agent`` may take in ``run``: the run's limit, or the agent's own
    ``max_steps`` (its backend config) when that is smaller."""
    own = agent.config.get("max_steps") if isinstance(agent.config, dict) else None
    return min(run.max_steps, own) if isinstance(own, int) else run.max_steps


def _agent_ends(step: Step, status: str, why: str) -> None:
    """An agent is done with its run: release what it still holds, maybe end the run."""
    from orchestrator.core.locks import lock_release_all

    Agent.objects.filter(pk=step.agent_id).update(status=status)
    lock_release_all(agent_id=step.agent_id, reason=why)
    event_emit(
        "agent.finished" if status == AgentStatus.DONE else "agent.failed",
        agent=step.agent,
        subject=step.agent,
        payload={"run": step.run_id, "why": why},
    )
    _maybe_end_run(step.run_id)


def _maybe_end_run(run_id: int) -> None:
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
    if "request_id" in result:
        request = lock_request_with_lock(result["request_id"])
        if request is None:
            raise LockRequest.DoesNotExist(f"lock request {result['request_id']} is gone")
        if request.status == RequestStatus.WAITING:
            return None
        if request.status == RequestStatus.GRANTED:
            return {
                "ok": True,
                "status": "granted",
                "resource": request.resource.name,
                "mode": request.mode,
                "fence": request.lock.token,
                "expires_at": request.lock.expires_at.isoformat(),
            }
        return {"ok": False, "status": request.status, "error": request.status,
                "detail": request.reason}  # fmt: skip
    approval = Approval.objects.get(pk=result["approval_id"])
    if approval.status == ApprovalStatus.PENDING:
        return None
    return {
        "ok": approval.status == ApprovalStatus.APPROVED,
        "status": approval.status,
        "version": approval.applied_version,
        "detail": approval.decision_note,
    }


def resume_step(step_id: int) -> str:
    """RQ job: a waiting step's wait ended; complete the turn and go on."""
    return step_resume(step_id)


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
        enqueue(resume_step, step_id)
    elif reason == "resumed":
        resume_queued(agent_ids=[agent_id])


wakeups.register(_wake)


# --- pause, resume, cancel ------------------------------------------------------------


@service
def run_cancel(*, run_id: int, user: User = None) -> Run:
    """Cancel a run: no further tool call executes; its agents' locks and waits end."""
    from orchestrator.core.locks import lock_release_all

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


def resume_queued(*, agent_ids: list[int] | None = None, run_id: int | None = None) -> int:
    """After a resume: enqueue each queued step with no job (exactly one per agent)."""
    steps = Step.objects.filter(status=Step.Status.QUEUED, job_id="")
    if agent_ids is not None:
        steps = steps.filter(agent_id__in=agent_ids)
    if run_id is not None:
        steps = steps.filter(run_id=run_id)
    count = 0
    for step_id in steps.values_list("pk", flat=True):
        with transaction.atomic():
            parked = lock_steps([step_id])
            if parked and parked[0].status == Step.Status.QUEUED and not parked[0].job_id:
                enqueue_step(step_id)
                count += 1
    return count


def renew_leases(agent: Agent) -> None:
    """Extend the agent's live leases to its team's TTL at the start of a step."""
    from orchestrator.core.locks import lock_renew

    for lock_id in Lock.objects.filter(agent=agent, released_at__isnull=True).values_list(
        "pk", flat=True
    ):
        try:
            lock_renew(lock_id=lock_id, agent=agent)
        except ProtocolError:
            logger.info("lease %s of %s could not be renewed", lock_id, agent.name)
