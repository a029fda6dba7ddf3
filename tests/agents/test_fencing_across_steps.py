"""An agent that took a lock in one step and writes in a later one sends that lock's
fencing token, even if the lock has ended since (lease expired, force-released):
the write is rejected as stale_fence and recorded, never applied as an unfenced
write that finds the resource free. The scripted agent then takes the lock again.

One step runs one scripted call, so acquire, read, write and release are four
steps: the worker running them may stall between any two of them (a zombie). (The
scenarios' two-step cycle, acquire then write with release, has the same gap between
its two steps; these tests keep the four, which have every gap.)"""

from __future__ import annotations

from datetime import timedelta

import django_rq
import pytest

from agents.runtime import run_start
from agents.scenarios import increment_script
from orchestrator.core.locks import lock_acquire, lock_force_release, lock_release
from orchestrator.core.models import Conflict, Lock, Resource, ResourceVersion, Run, Step
from orchestrator.core.resources import resource_create, resource_write
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

INCREMENT = [
    {"tool": "acquire", "args": {"resource": "counter"}},
    {"tool": "read", "args": {"resource": "counter"}},
    {"tool": "write", "args": {"resource": "counter", "value": {"$inc": 1},
                               "expected_version": "$version"}},
    {"tool": "release", "args": {"resource": "counter"}},
]  # fmt: skip


def run_next_job() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True, max_jobs=1)


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def start(team) -> tuple[Run, object]:
    agent = factories.agent(
        team_=team, name="zombie", backend="scripted", config={"script": INCREMENT}
    )
    run = run_start(team=team, goal="count once", agents=[agent], seed=3)
    run_next_job()  # acquire
    run_next_job()  # read
    return run, agent


def write_call(run: Run, number: int) -> dict:
    (call,) = Step.objects.get(run=run, number=number).tool_calls
    assert call["tool"] == "write"
    return call


def test_a_write_after_the_lock_was_force_released_is_a_stale_fence(redis_conn) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    run, agent = start(team)
    lock = Lock.objects.get(agent=agent, released_at__isnull=True)
    lock_force_release(lock_id=lock.pk, user=factories.superuser())

    run_next_job()  # the write, in the next step: the resource is free now

    assert write_call(run, 3)["result"]["error"] == "stale_fence"
    assert Resource.objects.get(name="counter").version == 0
    conflict = Conflict.objects.get(kind="stale_fence", agents=agent)
    assert conflict.data["fence"] == lock.token
    drain()  # the agent takes the lock again and completes its increment
    run.refresh_from_db()
    counter = Resource.objects.get(name="counter")
    assert (run.status, counter.value, counter.version) == ("finished", 1, 1)


def test_a_write_after_the_lease_ran_out_and_another_wrote_is_a_stale_fence(redis_conn) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    run, agent = start(team)
    lock = Lock.objects.get(agent=agent, released_at__isnull=True)
    Lock.objects.filter(pk=lock.pk).update(expires_at=lock.acquired_at + timedelta(microseconds=1))
    other = factories.agent(team_=team, name="other")
    taken = lock_acquire(agent=other, resource="counter")  # marks the zombie's lease expired
    assert taken.status == "granted"
    resource_write(agent=other, resource="counter", value=0, fence=taken.lock.token)
    lock_release(lock_id=taken.lock.pk, agent=other)

    run_next_job()  # the zombie's write: its read (version 0) is stale as well

    assert write_call(run, 3)["result"]["error"] == "stale_fence"
    assert ResourceVersion.objects.filter(resource__name="counter", agent=agent).count() == 0
    drain()
    counter = Resource.objects.get(name="counter")
    assert (counter.value, counter.version) == (1, 2)


def test_a_lock_the_agent_released_itself_leaves_its_writes_unfenced(redis_conn) -> None:
    """Releasing is the agent's own decision: a later write goes without a token, as
    before (applied when nobody holds the resource)."""
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    script = [INCREMENT[0], INCREMENT[3], INCREMENT[1], INCREMENT[2]]
    agent = factories.agent(team_=team, name="careless", backend="scripted",
                            config={"script": script})  # fmt: skip
    run = run_start(team=team, goal="write after release", agents=[agent], seed=3)
    drain()
    assert write_call(run, 4)["result"]["status"] == "applied"
    assert ResourceVersion.objects.get(resource__name="counter", version=1).fence is None
    assert not Conflict.objects.filter(kind="stale_fence").exists()


def test_an_expired_lock_of_an_earlier_run_does_not_fence_a_new_run(redis_conn) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    agent = factories.agent(team_=team, name="again")
    old = lock_acquire(agent=agent, resource="counter")
    Lock.objects.filter(pk=old.lock.pk).update(
        expires_at=old.lock.acquired_at + timedelta(microseconds=1)
    )
    lock_acquire(agent=factories.agent(team_=team), resource="counter", wait=False)
    agent.config = {"script": [INCREMENT[1], INCREMENT[2]]}
    agent.backend = "scripted"
    agent.save()
    run = run_start(team=team, goal="an unfenced write", agents=[agent], seed=3)
    drain()
    # Somebody else holds the lock now: refused as a non-holder write, not a stale fence.
    assert write_call(run, 2)["result"]["error"] == "not_holder"


def test_a_release_after_the_lock_ended_counts_as_done(redis_conn) -> None:
    """Retrying it could never succeed: the agent goes on with its script instead of
    retrying until it gives up."""
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    agent = factories.agent(team_=team, name="late", backend="scripted",
                            config={"script": INCREMENT * 2})  # fmt: skip
    run = run_start(team=team, goal="count twice", agents=[agent], seed=3)
    for _ in range(3):  # acquire, read, write
        run_next_job()
    lock = Lock.objects.get(agent=agent, released_at__isnull=True)
    lock_force_release(lock_id=lock.pk, user=factories.superuser())
    drain()
    run.refresh_from_db()
    counter = Resource.objects.get(name="counter")
    assert (run.status, counter.value) == ("finished", 2)
    assert Step.objects.filter(run=run).count() == 9  # two increments and the finish
    (release,) = Step.objects.get(run=run, number=4).tool_calls
    assert release["result"]["error"] == "not_holder"  # its lock is gone


def test_the_two_step_cycle_after_the_lock_was_force_released_is_a_stale_fence(
    redis_conn,
) -> None:
    """acquire, then (a zombie later) write with release: the write carries the ended
    lock's token, is refused, releases nothing; the agent takes the lock again."""
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    agent = factories.agent(team_=team, name="zombie", backend="scripted",
                            config={"script": increment_script("counter")})  # fmt: skip
    run = run_start(team=team, goal="count once", agents=[agent], seed=3)
    run_next_job()  # acquire
    lock = Lock.objects.get(agent=agent, released_at__isnull=True)
    lock_force_release(lock_id=lock.pk, user=factories.superuser())

    run_next_job()  # the write with release

    result = write_call(run, 2)["result"]
    assert (result["error"], "released" in result) == ("stale_fence", False)
    assert Resource.objects.get(name="counter").version == 0
    drain()
    run.refresh_from_db()
    counter = Resource.objects.get(name="counter")
    assert (run.status, counter.value, counter.version) == ("finished", 1, 1)
    assert not Lock.objects.filter(agent=agent, released_at__isnull=True).exists()
