"""Recovering steps whose worker or job vanished, so that no run hangs forever.

Called by the monitor every few seconds. Three cases:

* a *running* step whose heartbeat is older than ``STALE_AFTER`` (its worker
  was killed, or the machine died), or whose RQ job failed or disappeared:
  it goes back to the queue and is retried (the retry replays the saved
  decision and skips journaled calls; writes are idempotent), at most
  ``MAX_ATTEMPTS`` times, after which it fails and its agent's locks are
  released;
* a *queued* step whose RQ job can no longer run it: Redis lost the job, or the
  job ended, or it is in no queue any more (a worker took it off the queue and
  died before the step began: the job stays "queued" or "started" in Redis with
  nobody to run it): a new job;
* a *waiting* step whose wait has ended but whose continuation job was lost:
  the continuation is enqueued again (it is idempotent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from agents.jobs import RESUME, enqueue, enqueue_step, steps_queue
from agents.steps import step_fail, wait_result
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Step
from orchestrator.core.rowlocks import lock_steps

logger = logging.getLogger(__name__)

STALE_AFTER = 30.0  # seconds without a heartbeat before a running step counts as lost
MAX_ATTEMPTS = 3
_DEAD = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


@dataclass
class Recovery:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.retried or self.failed or self.requeued or self.resumed)


def _job_status(job_id: str) -> str | None:
    """The RQ status of a job, or None if Redis no longer has it."""
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=steps_queue().connection).get_status()
    except NoSuchJobError:
        return None


def _job_lost(job_id: str) -> bool:
    """Whether the job of a step queued long ago can no longer run it.

    Only a job still waiting in its queue will: one that Redis lost or that ended
    will not, nor one taken off the queue (a worker starts a step within moments of
    that, so the step would not still be queued) by a worker that died first. A job
    that turns out to be alive after all is harmless: the step got a new job id, and
    the old job finds itself superseded (``step_begin``)."""
    status = _job_status(job_id)
    if status != JobStatus.QUEUED:
        return True
    return steps_queue().get_job_position(job_id) is None


@service
def step_retry(*, step_id: int, why: str) -> str:
    """Put a lost running step back on the queue, or fail it after MAX_ATTEMPTS."""
    (step,) = lock_steps([step_id]) or [None]
    if step is None or step.status != Step.Status.RUNNING:
        return "gone"
    if step.attempts >= MAX_ATTEMPTS:
        return "fail"
    step.status = Step.Status.QUEUED
    step.save(update_fields=["status"])
    enqueue_step(step.pk)
    event_emit(
        "step.retried",
        agent=step.agent,
        actor="system",
        subject=step,
        payload={"run": step.run_id, "number": step.number, "attempt": step.attempts, "why": why},
    )
    return "retried"


def recover_steps(*, stale_after: float = STALE_AFTER) -> Recovery:
    """One pass over running, queued and waiting steps (see the module docstring)."""
    report = Recovery()
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    running = Step.objects.filter(status=Step.Status.RUNNING).values_list(
        "pk", "job_id", "heartbeat_at", "started_at"
    )
    for pk, job_id, heartbeat, started in running:
        last = heartbeat or started
        stale = last is None or last < cutoff
        status = _job_status(job_id)
        # A fresh heartbeat means the step is alive even if its job record expired.
        if not stale and status not in _DEAD:
            continue
        why = "heartbeat lost" if stale else f"job {status}"
        outcome = step_retry(step_id=pk, why=why)
        if outcome == "retried":
            report.retried.append(pk)
        elif outcome == "fail":
            step_fail(step_id=pk, error=f"worker lost {MAX_ATTEMPTS} times ({why})")
            report.failed.append(pk)
    queued = Step.objects.filter(status=Step.Status.QUEUED, created_at__lt=cutoff).exclude(
        job_id=""
    )
    for pk, job_id in queued.values_list("pk", "job_id"):
        if _job_lost(job_id) and _requeue(step_id=pk):
            report.requeued.append(pk)
    waiting = Step.objects.filter(status=Step.Status.WAITING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)
    )
    for step in waiting.only("pk", "tool_calls"):
        pending = [c for c in step.tool_calls if c["result"].get("status") == "waiting"]
        if pending and all(wait_result(call) is not None for call in pending):
            enqueue(RESUME, step.pk)
            report.resumed.append(step.pk)
    return report


@service
def _requeue(*, step_id: int) -> bool:
    """A queued step whose job Redis lost gets a new job."""
    (step,) = lock_steps([step_id]) or [None]
    if step is None or step.status != Step.Status.QUEUED or not step.job_id:
        return False
    enqueue_step(step.pk)
    return True
