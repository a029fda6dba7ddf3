"""The runtime's lock cycle in two tool calls: ``acquire`` (its grant says the value and
version, which count as a read) and ``write`` with ``release: true`` (the runtime adds
the fence of the lock it remembered for the step, and forgets the lock once the write
released it). Real commits on PostgreSQL; scripted agents on real RQ (SimpleWorker in
burst mode)."""

from __future__ import annotations

import django_rq
import pytest

from agents.checker import check_run
from agents.runtime import run_start
from agents.scenarios import increment_script
from agents.steps import run_tool, wait_result
from agents.tools import TOOL_SPECS
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Agent,
    Event,
    Lock,
    LockEnd,
    RequestStatus,
    Resource,
    Step,
)
from orchestrator.core.resources import resource_create, resource_write
from orchestrator.core.selectors import lock_request_with_lock
from tests import factories
from tests.injected import Injected, failing_with
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    team = factories.team(default_lease_ttl=30)
    resource_create(team=team, name="counter", value=10)
    return team


def step_of(agent: Agent, *, unguarded: bool = False) -> Step:
    run = factories.run(team=agent.team, unguarded=unguarded)
    return Step.objects.create(run=run, agent=agent, number=1, attempts=1)


def live_locks() -> list[int]:
    return list(Lock.objects.filter(released_at__isnull=True).values_list("pk", flat=True))


def test_acquire_then_write_with_release_is_the_whole_cycle(team) -> None:
    agent = factories.agent(team_=team, name="inc")
    other = factories.agent(team_=team, name="next")
    step = step_of(agent)

    granted = run_tool(agent, step, "acquire", {"resource": "counter"})
    assert (granted["status"], granted["version"], granted["value"]) == ("granted", 0, 10)
    (lock_id,) = live_locks()
    queued = lock_acquire(agent=other, resource="counter")
    assert queued.status == "waiting"

    written = run_tool(
        agent, step, "write",
        {"resource": "counter", "value": granted["value"] + 1, "expected_version": 0,
         "release": True},
    )  # fmt: skip

    assert written == {"ok": True, "status": "applied", "version": 1, "released": True}
    assert Lock.objects.get(pk=lock_id).end == LockEnd.RELEASED
    assert "counter" not in step._granted  # forgotten, as after a release
    request = lock_request_with_lock(queued.request.pk)
    assert request.status == RequestStatus.GRANTED
    assert (request.resource.value, request.resource.version) == (11, 1)
    # The lock is gone: releasing it again says so (a scripted agent counts that as done).
    assert run_tool(agent, step, "release", {"resource": "counter"})["error"] == "not_holder"


def test_a_refused_write_keeps_the_lock_for_the_retry(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent)
    run_tool(agent, step, "acquire", {"resource": "counter"})
    run_tool(agent, step, "write", {"resource": "counter", "value": 11})
    (lock_id,) = live_locks()

    stale = run_tool(
        agent, step, "write",
        {"resource": "counter", "value": 12, "expected_version": 0, "release": True},
    )  # fmt: skip

    assert (stale["ok"], stale["error"]) == (False, "version_conflict")
    assert live_locks() == [lock_id]
    again = run_tool(
        agent, step, "write",
        {"resource": "counter", "value": 12, "expected_version": 1, "release": True},
    )  # fmt: skip
    assert (again["version"], again["released"]) == (2, True)
    assert live_locks() == []


def test_release_without_a_held_lock_is_refused_and_writes_nothing(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent)

    refused = run_tool(agent, step, "write", {"resource": "counter", "value": 1, "release": True})

    assert (refused["ok"], refused["error"]) == (False, "not_holder")
    assert Resource.objects.get(name="counter").version == 0


def test_a_write_that_waits_for_an_approval_keeps_the_lock(team) -> None:
    resource_create(team=team, name="press", value=0, requires_approval=True)
    agent = factories.agent(team_=team)
    step = step_of(agent)
    run_tool(agent, step, "acquire", {"resource": "press"})

    pending = run_tool(
        agent, step, "write",
        {"resource": "press", "value": 1, "expected_version": 0, "release": True},
    )  # fmt: skip

    assert pending["status"] == "waiting" and "lock is kept" in pending["detail"]
    assert len(live_locks()) == 1
    assert "press" in step._granted


def test_a_transaction_failing_after_the_write_leaves_value_and_lock_unchanged(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent)
    run_tool(agent, step, "acquire", {"resource": "counter"})
    (lock_id,) = live_locks()

    with failing_with("resource.written"), pytest.raises(Injected):
        run_tool(agent, step, "write", {"resource": "counter", "value": 11, "release": True})

    res = Resource.objects.get(name="counter")
    assert (res.value, res.version) == (10, 0)
    assert live_locks() == [lock_id]
    assert "counter" in step._granted  # still held: a retry writes with the same fence


def test_a_grant_after_a_wait_says_the_value_and_version(team) -> None:
    holder = factories.agent(team_=team, name="holder")
    agent = factories.agent(team_=team, name="waiter")
    step = step_of(agent)
    held = lock_acquire(agent=holder, resource="counter").lock
    waiting = run_tool(agent, step, "acquire", {"resource": "counter"})
    assert waiting["status"] == "waiting"
    call = {"tool": "acquire", "arguments": {"resource": "counter"}, "result": waiting}
    assert wait_result(call) is None

    resource_write(agent=holder, resource="counter", value=20, fence=held.token, release=True)

    final = wait_result(call)
    assert (final["status"], final["version"], final["value"]) == ("granted", 1, 20)


def test_an_unguarded_acquire_reads_and_its_write_says_released(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent, unguarded=True)

    granted = run_tool(agent, step, "acquire", {"resource": "counter"})
    written = run_tool(agent, step, "write", {"resource": "counter", "value": 11, "release": True})

    assert (granted["fence"], granted["version"], granted["value"]) == (None, 0, 10)
    assert (written["status"], written["released"]) == ("applied", True)
    assert live_locks() == []


def test_the_write_tool_offers_release_and_request_approval_does_not() -> None:
    specs = {spec["function"]["name"]: spec["function"] for spec in TOOL_SPECS}

    assert specs["write"]["parameters"]["properties"]["release"]["type"] == "boolean"
    assert "release" not in specs["request_approval"]["parameters"]["properties"]
    assert "release: true" in specs["write"]["description"]


def test_scripted_agents_count_in_two_transactions_a_cycle(team, redis_conn) -> None:
    """Three agents, three rounds each of acquire then write-and-release: the counter is
    exact, no lock is left, and every write released its lock in its own commit."""
    agents = [
        factories.agent(
            team_=team,
            name=f"inc-{i}",
            backend="scripted",
            config={"script": increment_script("counter") * 3},
        )
        for i in range(3)
    ]
    run = run_start(team=team, goal="count", agents=agents, seed=1)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)

    run.refresh_from_db()
    assert run.status == "finished"
    assert Resource.objects.get(name="counter").value == 10 + 9
    assert live_locks() == []
    writes = [
        call
        for step in Step.objects.filter(run=run)
        for call in step.tool_calls
        if call["tool"] == "write"
    ]
    assert len(writes) >= 9 and all(call["arguments"]["release"] for call in writes)
    applied = [call["result"] for call in writes if call["result"].get("status") == "applied"]
    assert len(applied) == 9 and all(result["released"] for result in applied)
    assert not [
        call for step in Step.objects.filter(run=run) for call in step.tool_calls
        if call["tool"] in ("read", "release")
    ]  # fmt: skip
    report = check_run(run_id=run.pk)
    assert report.ok, report.as_dict()
    # Each applied write's lock.released follows its resource.written in one transaction:
    # no event of another service between them.
    kinds = list(Event.objects.order_by("pk").values_list("kind", flat=True))
    for index, kind in enumerate(kinds):
        if kind == "resource.written":
            assert kinds[index + 1] == "lock.released"


def test_release_by_hand_still_works(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent)
    run_tool(agent, step, "acquire", {"resource": "counter"})
    (lock_id,) = live_locks()

    assert run_tool(agent, step, "release", {"resource": "counter"})["status"] == "released"
    assert lock_release(lock_id=lock_id, agent=agent).status == "released"
