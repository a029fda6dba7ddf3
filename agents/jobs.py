"""Queue plumbing of the agents' runtime: the ``steps`` queue, one per process, and
the jobs that run steps. A job carries a step id only and re-reads the rows it
needs; jobs are enqueued after the current transaction commits (RQ's
``on_db_commit`` mode), so nobody runs a step whose row rolled back.

Jobs name their function by its dotted path (:data:`EXECUTE`, :data:`RESUME`), the
entry points in agents/runtime.py: jobs already queued keep working when the code
behind them moves.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import django_rq
from django.db import transaction

from orchestrator.core.models import Step
from orchestrator.core.rowlocks import lock_steps

QUEUE = "steps"
EXECUTE = "agents.runtime.execute_step"  # RQ job: one agent turn
RESUME = "agents.runtime.resume_step"  # RQ job: a waiting step's wait ended
# Step.job_id is the id of the RQ job that runs it (set when it is enqueued); a
# step with job_id "" is parked (paused) and needs a new job to go on.

_queue: tuple[int, Any] = (0, None)


def steps_queue() -> Any:
    """The ``steps`` queue, one per process: ``django_rq.get_queue`` builds a new
    Redis client (and connection) on every call, which cost ~6 ms per enqueue."""
    global _queue
    if _queue[0] != os.getpid():
        _queue = (os.getpid(), django_rq.get_queue(QUEUE))
    return _queue[1]


def enqueue(func: Any, *args: Any, job_id: str | None = None) -> None:
    """Enqueue a job (a function or its dotted path) on the steps queue once the
    current transaction commits."""
    steps_queue().enqueue(func, *args, job_timeout=600, job_id=job_id)


def new_job_id() -> str:
    return f"step-{uuid.uuid4().hex}"


def enqueue_step(step_id: int) -> str:
    """Give an existing step a new job (after commit). Caller holds the step's row."""
    job_id = new_job_id()
    Step.objects.filter(pk=step_id).update(job_id=job_id)
    enqueue(EXECUTE, step_id, job_id=job_id)
    return job_id


def create_step(*, run_id: int, agent_id: int, number: int) -> Step:
    """Create a step with its job id in the same insert, and enqueue it after commit."""
    step = Step.objects.create(run_id=run_id, agent_id=agent_id, number=number, job_id=new_job_id())
    enqueue(EXECUTE, step.pk, job_id=step.job_id)
    return step


def current_job_id() -> str:
    """The id of the RQ job running now, or "" outside a job."""
    from rq import get_current_job

    job = get_current_job()
    return job.id if job is not None else ""


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
