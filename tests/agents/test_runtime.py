"""The runtime on real RQ (in-process SimpleWorker in burst mode), PostgreSQL and Redis."""

from __future__ import annotations

import django_rq
import pytest

from agents.backends import Decision, StepContext, ToolCall
from agents.runtime import run_cancel, run_start
from agents.scenarios import increment_script
from orchestrator.core.control import agents_set_paused, system_set_paused
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import Agent, Event, Lock, Resource, Run, Step
from orchestrator.core.resources import resource_create
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

COUNTER_SCRIPT = increment_script("counter")


@pytest.fixture
def queue(redis_conn):
    return django_rq.get_queue("steps")


def drain() -> None:
    """Run every queued job (and the jobs they enqueue) in this process, then return."""
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def scripted(team, name: str, script: list[dict], **config) -> Agent:
    return factories.agent(
        team_=team, name=name, backend="scripted", config={"script": script, **config}
    )


def test_a_run_of_scripted_agents_finishes_without_losing_updates(queue) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    agents = [scripted(team, f"inc-{i}", COUNTER_SCRIPT * 3) for i in range(3)]
    run = run_start(team=team, goal="count to nine", seed=1)
    assert queue.count == 3
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    counter = Resource.objects.get(name="counter")
    assert (counter.value, counter.version) == (9, 9)
    for agent in agents:
        agent.refresh_from_db()
        assert agent.status == "done"
        steps = list(Step.objects.filter(run=run, agent=agent).order_by("number"))
        assert all(step.status == "done" for step in steps)
        assert steps[-1].tool_calls[0]["tool"] == "finish"
        assert steps[0].transcript[0]["tool_calls"][0]["function"]["name"] == "acquire"
    assert not Lock.objects.filter(released_at__isnull=True).exists()
    assert Event.objects.filter(kind="run.finished", subject_id=run.pk).exists()


def test_a_waiting_step_ends_its_job_and_the_grant_continues_it(queue) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="counter")
    agent = scripted(team, "waiter", COUNTER_SCRIPT)
    run = run_start(team=team, goal="wait", agents=[agent])
    drain()  # returns: no worker sleeps on the lock
    step = Step.objects.get(run=run, agent=agent, number=1)
    assert step.status == "waiting"
    assert queue.count == 0
    lock_release(lock_id=held.lock.pk, agent=holder)  # the grant enqueues the continuation
    assert queue.count == 1
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    step.refresh_from_db()
    granted = step.tool_calls[0]["result"]
    assert (granted["status"], granted["fence"]) == ("granted", 2)
    assert step.transcript[1]["role"] == "tool"
    assert Resource.objects.get(name="counter").value == 1


def pausing_decider(context: StepContext) -> Decision:
    """A custom agent that pauses itself after its first call (a human pressing pause)."""
    if context.step_number == 1:
        agents_set_paused(agents=[Agent.objects.get(name=context.agent)], paused=True)
        return Decision(
            tool_calls=[
                ToolCall("c1", "read", {"resource": "doc"}),
                ToolCall("c2", "write", {"resource": "doc", "value": "x"}),
            ]
        )
    return Decision(tool_calls=[ToolCall(f"f{context.step_number}", "finish", {})])


def test_pause_stops_between_tool_calls_and_resume_continues_once(queue) -> None:
    team = factories.team()
    resource_create(team=team, name="doc", value="original")
    agent = factories.agent(
        team_=team,
        name="pausable",
        backend="python",
        config={"callable": "tests.agents.test_runtime.pausing_decider"},
    )
    run = run_start(team=team, goal="pause me", agents=[agent])
    drain()
    first = Step.objects.get(run=run, number=1)
    results = [call["result"] for call in first.tool_calls]
    assert results[0]["ok"] and results[1]["error"] == "stopped"
    assert Resource.objects.get(name="doc").value == "original"
    second = Step.objects.get(run=run, number=2)
    assert (second.status, second.job_id) == ("queued", "")  # parked while paused
    assert queue.count == 0
    agents_set_paused(agents=[agent], paused=False)
    agents_set_paused(agents=[agent], paused=False)  # a second resume changes nothing
    assert queue.count == 1
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED


def test_pause_everything_parks_every_step(queue) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    scripted(team, "a", COUNTER_SCRIPT)
    scripted(team, "b", COUNTER_SCRIPT)
    system_set_paused(paused=True)
    run = run_start(team=team, goal="parked")
    drain()
    assert Step.objects.filter(run=run, status="queued", job_id="").count() == 2
    system_set_paused(paused=False)
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    assert Resource.objects.get(name="counter").value == 2


def test_cancel_stops_the_run_and_releases_its_locks(queue) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="counter")
    hog = scripted(
        team,
        "hog",
        [
            {"tool": "acquire", "args": {"resource": "other"}},
            {"tool": "acquire", "args": {"resource": "counter"}},  # waits behind the holder
        ],
    )
    resource_create(team=team, name="other")
    waiter = scripted(team, "waiter", COUNTER_SCRIPT)
    run = run_start(team=team, goal="cancel me", agents=[hog, waiter])
    drain()
    assert Lock.objects.filter(agent=hog, released_at__isnull=True).exists()
    run_cancel(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert not Lock.objects.filter(agent=hog, released_at__isnull=True).exists()
    assert not Step.objects.filter(run=run, status__in=["queued", "waiting"]).exists()
    lock_release(lock_id=held.lock.pk, agent=holder)  # the waiter's request was cancelled
    drain()
    assert Resource.objects.get(name="counter").value == 0


def test_a_failing_backend_fails_the_step_with_its_error(queue) -> None:
    team = factories.team()
    agent = factories.agent(
        team_=team, name="broken", backend="python", config={"callable": "no.such.thing"}
    )
    run = run_start(team=team, goal="fail", agents=[agent])
    drain()
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    assert "no.such.thing" in step.error
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED


def test_the_transcript_window_keeps_whole_turns(monkeypatch) -> None:
    from agents import steps

    team = factories.team()
    agent = factories.agent(team_=team)
    run = factories.run(team=team)
    for number, calls in ((1, 3), (2, 1), (3, 2)):
        turn = [
            {"role": "assistant", "tool_calls": [{"id": f"{number}-{i}"} for i in range(calls)]}
        ]
        turn += [{"role": "tool", "tool_call_id": f"{number}-{i}"} for i in range(calls)]
        Step.objects.create(run=run, agent=agent, number=number, status="done", transcript=turn)
    monkeypatch.setattr(steps, "TRANSCRIPT_WINDOW", 6)
    messages = steps.transcript_of(run.pk, agent.pk, before=4)
    # Turns of 4, 2 and 3 messages: the last two fit in 6, the first is dropped whole.
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant", "tool", "tool"]
    assert messages[0]["tool_calls"][0]["id"] == "2-0"
    # The newest turn is kept whole even when it alone is larger than the window.
    monkeypatch.setattr(steps, "TRANSCRIPT_WINDOW", 1)
    messages = steps.transcript_of(run.pk, agent.pk, before=4)
    assert [m.get("tool_call_id") for m in messages] == [None, "3-0", "3-1"]


def test_a_grant_that_lands_before_the_step_records_its_wait_is_not_lost(
    queue, monkeypatch
) -> None:
    """The lock is granted between the acquire answering "waiting" and the step being
    marked waiting: the continuation finds a running step and leaves; the step must
    notice the grant itself instead of waiting forever."""
    from agents import runtime, steps

    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="counter")
    agent = scripted(team, "racer", COUNTER_SCRIPT)
    real_run_calls = steps._run_calls

    def release_in_between(step, agent_, calls):
        executed = real_run_calls(step, agent_, calls)  # acquire answered "waiting"
        lock_release(lock_id=held.lock.pk, agent=holder)  # the grant commits now...
        assert runtime.resume_step(step.pk) == "not waiting"  # ...its wake-up finds it running
        return executed

    monkeypatch.setattr(steps, "_run_calls", release_in_between)
    run = run_start(team=team, goal="race", agents=[agent])
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True, max_jobs=1)
    monkeypatch.setattr(steps, "_run_calls", real_run_calls)
    first = Step.objects.get(run=run, number=1)
    assert first.status == "done"
    assert first.tool_calls[0]["result"]["status"] == "granted"
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED


def test_the_last_two_agents_finishing_at_once_end_the_run(queue, monkeypatch) -> None:
    """Two workers close the last steps of a run side by side: each transaction has
    closed its own step and not committed when it looks for open steps. One of them
    must still end the run (without the run-ending lock neither did: each saw the
    other's step open, and the run stayed "running" for ever)."""
    import threading

    from django.db import connection

    from agents import runs, runtime

    team = factories.team()
    finish = [{"tool": "finish", "args": {"summary": "done"}}]
    agents = [scripted(team, f"last-{i}", finish) for i in range(2)]  # one step each
    run = run_start(team=team, goal="finish together", agents=agents)
    step_ids = list(Step.objects.filter(run=run).values_list("pk", flat=True))
    both_closed = threading.Barrier(2, timeout=30)
    real_lock = runs.lock_run_ending

    def when_both_steps_are_closed(run_id: int) -> None:
        both_closed.wait()  # both transactions closed their step and did not commit
        real_lock(run_id)

    monkeypatch.setattr(runs, "lock_run_ending", when_both_steps_are_closed)
    results: list[str] = []

    def worker(step_id: int) -> None:
        try:
            results.append(runtime.execute_step(step_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(step_id,)) for step_id in step_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["done", "done"]
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    assert Event.objects.filter(kind="run.finished", subject_id=run.pk).count() == 1


@pytest.mark.parametrize(("agent_limit", "run_limit", "steps"), [(2, 10, 2), (10, 3, 3)])
def test_the_smaller_of_the_agents_and_the_runs_step_limit_applies(
    queue, agent_limit: int, run_limit: int, steps: int
) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    # One increment per step, for ever: only a step limit ends the agent.
    agent = scripted(team, "looper", COUNTER_SCRIPT, loop=True, max_steps=agent_limit)
    run = run_start(team=team, goal="count", max_steps=run_limit)
    drain()
    agent.refresh_from_db()
    assert agent.status == "failed"
    assert Step.objects.filter(run=run, agent=agent).count() == steps
    why = Event.objects.get(kind="agent.failed", subject_id=agent.pk).payload["why"]
    assert why == f"reached its step limit ({steps})"


def test_a_run_is_refused_without_agents_with_a_stranger_or_with_a_busy_agent(queue) -> None:
    from orchestrator.core.errors import ProtocolError

    empty, team, other = factories.team(), factories.team(), factories.team()
    member = scripted(team, "member", COUNTER_SCRIPT)
    stranger = scripted(other, "stranger", COUNTER_SCRIPT)
    with pytest.raises(ProtocolError) as refused:
        run_start(team=empty, goal="nobody")
    assert refused.value.code == "no_agents"
    with pytest.raises(ProtocolError) as refused:
        run_start(team=team, goal="mixed", agents=[member, stranger])
    assert refused.value.code == "agent_not_in_team"
    first = run_start(team=team, goal="first")
    with pytest.raises(ProtocolError) as refused:
        run_start(team=team, goal="second")
    assert (refused.value.code, refused.value.status) == ("agent_busy", 409)
    assert f"run #{first.pk}" in refused.value.detail
    # Refusals leave nothing behind: one run, one queued first step.
    assert list(Run.objects.values_list("pk", flat=True)) == [first.pk]
    assert queue.count == 1
    drain()  # once the first run is over, its agent may start another
    run_start(team=team, goal="second")
    assert Run.objects.count() == 2
