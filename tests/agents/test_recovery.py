"""Steps survive their worker dying: retried by the monitor, never applying a write twice."""

from __future__ import annotations

from datetime import timedelta

import django_rq
import pytest
from django.utils import timezone

from agents import steps
from agents.backends import Decision, StepContext, ToolCall
from agents.recovery import recover_steps
from agents.runtime import run_start
from orchestrator.core.models import Conflict, Event, Lock, Resource, ResourceVersion, Run, Step
from orchestrator.core.resources import resource_create
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

DECISIONS: list[int] = []


def write_then_finish(context: StepContext) -> Decision:
    """A custom agent: step 1 writes, step 2 finishes. Counts how often it is asked."""
    DECISIONS.append(context.step_number)
    if context.step_number == 1:
        return Decision(tool_calls=[ToolCall("w1", "write", {"resource": "doc", "value": "v1"})])
    return Decision(tool_calls=[ToolCall("f", "finish", {})])


def acquire_then_write_and_release(context: StepContext) -> Decision:
    """A custom agent: step 1 acquires, step 2 writes and releases, step 3 finishes."""
    DECISIONS.append(context.step_number)
    if context.step_number == 1:
        return Decision(tool_calls=[ToolCall("a1", "acquire", {"resource": "doc"})])
    if context.step_number == 2:
        write = {"resource": "doc", "value": "v1", "expected_version": 0, "release": True}
        return Decision(tool_calls=[ToolCall("w1", "write", write)])
    return Decision(tool_calls=[ToolCall("f", "finish", {})])


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


@pytest.fixture
def agent(redis_conn):
    DECISIONS.clear()
    team = factories.team()
    resource_create(team=team, name="doc", value="v0")
    return factories.agent(
        team_=team,
        name="fragile",
        backend="python",
        config={"callable": "tests.agents.test_recovery.write_then_finish"},
    )


def test_a_step_whose_worker_died_after_a_write_is_retried_without_writing_twice(
    agent, monkeypatch
) -> None:
    real_run_tool = steps.run_tool

    def dies_after_the_call(*args, **kwargs):
        real_run_tool(*args, **kwargs)  # the write commits...
        raise RuntimeError("worker killed")  # ...and the process dies before journaling it

    monkeypatch.setattr(steps, "run_tool", dies_after_the_call)
    run = run_start(team=agent.team, goal="survive", agents=[agent])
    drain()
    step = Step.objects.get(run=run, number=1)
    assert step.status == "running"  # its job failed mid-step
    assert Resource.objects.get(name="doc").version == 1

    monkeypatch.setattr(steps, "run_tool", real_run_tool)
    report = recover_steps()  # the job failed: no need to wait for the heartbeat
    assert report.retried == [step.pk]
    drain()

    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    doc = Resource.objects.get(name="doc")
    assert (doc.value, doc.version) == ("v1", 1)  # applied once
    assert ResourceVersion.objects.filter(resource=doc).count() == 2  # v0 and v1
    step.refresh_from_db()
    assert step.attempts == 2
    assert step.tool_calls[0]["result"] == {
        "ok": True,
        "status": "applied",
        "version": 1,
        "released": False,
    }
    assert DECISIONS == [1, 2]  # the retry replayed the saved decision
    assert Event.objects.filter(kind="step.retried", subject_id=step.pk).exists()


def test_a_running_step_without_heartbeat_is_retried_then_failed(agent) -> None:
    run = run_start(team=agent.team, goal="lost", agents=[agent])
    step = Step.objects.get(run=run)
    long_ago = timezone.now() - timedelta(hours=1)
    for attempt in range(1, 4):
        Step.objects.filter(pk=step.pk).update(
            status="running", attempts=attempt, heartbeat_at=long_ago, started_at=long_ago
        )
        report = recover_steps(stale_after=60)
        if attempt < 3:
            assert report.retried == [step.pk]
            assert Step.objects.get(pk=step.pk).status == "queued"
    assert report.failed == [step.pk]
    step.refresh_from_db()
    assert step.status == "failed"
    assert "worker lost 3 times" in step.error


def test_a_queued_step_whose_job_was_lost_gets_a_new_one(agent, redis_conn) -> None:
    run = run_start(team=agent.team, goal="redis restarted", agents=[agent])
    redis_conn.flushdb()  # the queue and its jobs are gone
    Step.objects.filter(run=run).update(created_at=timezone.now() - timedelta(hours=1))
    report = recover_steps(stale_after=60)
    assert len(report.requeued) == 1
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED


@pytest.mark.parametrize("status", ["queued", "started"])
def test_a_queued_step_whose_job_left_the_queue_with_a_dead_worker_gets_a_new_one(
    agent, redis_conn, status
) -> None:
    """A worker took the job off the queue (RQ moves it to an intermediate list)
    and was killed before the step began: the job stays in Redis, with nobody to
    run it."""
    run = run_start(team=agent.team, goal="worker killed while dequeuing", agents=[agent])
    step = Step.objects.get(run=run)
    queue = django_rq.get_queue("steps")
    job = queue.fetch_job(step.job_id)
    queue.remove(job)
    job.set_status(status)
    assert not recover_steps(stale_after=60)  # a recent step: its job may be on its way
    Step.objects.filter(run=run).update(created_at=timezone.now() - timedelta(hours=1))
    report = recover_steps(stale_after=60)
    assert report.requeued == [step.pk]
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED


def test_a_queued_step_whose_job_waits_in_the_queue_is_left_alone(agent, redis_conn) -> None:
    run = run_start(team=agent.team, goal="a long queue", agents=[agent])
    Step.objects.filter(run=run).update(created_at=timezone.now() - timedelta(hours=1))
    assert not recover_steps(stale_after=60)


def test_a_live_step_is_left_alone(agent) -> None:
    run = run_start(team=agent.team, goal="alive", agents=[agent])
    Step.objects.filter(run=run).update(status="running", heartbeat_at=timezone.now())
    assert not recover_steps(stale_after=60)


def test_a_write_that_released_its_lock_and_then_lost_its_worker_is_found_on_retry(
    agent, monkeypatch
) -> None:
    """The write and the release committed together before the worker died: the retry
    finds the write by its key (it carries the released lock's fence) and answers as the
    first attempt would have, neither writing nor releasing again."""
    agent.config = {"callable": "tests.agents.test_recovery.acquire_then_write_and_release"}
    agent.save(update_fields=["config"])
    real_run_tool = steps.run_tool

    def dies_after_the_write(agent_, step_, name, *args, **kwargs):
        result = real_run_tool(agent_, step_, name, *args, **kwargs)
        if name == "write":
            raise RuntimeError("worker killed")  # after the commit, before the journal
        return result

    monkeypatch.setattr(steps, "run_tool", dies_after_the_write)
    run = run_start(team=agent.team, goal="survive", agents=[agent])
    drain()
    step = Step.objects.get(run=run, number=2)
    assert step.status == "running"
    assert not Lock.objects.filter(released_at__isnull=True).exists()  # released with it

    monkeypatch.setattr(steps, "run_tool", real_run_tool)
    assert recover_steps().retried == [step.pk]
    drain()

    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    doc = Resource.objects.get(name="doc")
    assert (doc.value, doc.version) == ("v1", 1)
    step.refresh_from_db()
    assert step.tool_calls[0]["result"] == {
        "ok": True,
        "status": "applied",
        "version": 1,
        "released": True,
    }
    assert Event.objects.filter(kind="lock.released").count() == 1
    assert not Conflict.objects.exists()
