"""The runtime's ``acquire_all`` tool: a lock set (core/lock_sets.py) taken in one call,
on real RQ (an in-process SimpleWorker in burst mode), PostgreSQL and Redis.

Granted at once, its locks are remembered for the step (a write right after carries
their fences); waiting, the step waits for the whole set and resumes with every lock
when it is granted, or with the reason when it ends (cancelled, aborted as a deadlock
victim); bad arguments get the refusal the services give; each of its locks is
released by name; an unguarded run bypasses it like ``acquire``."""

from __future__ import annotations

from typing import Any

import django_rq
import pytest

from agents.recovery import recover_steps
from agents.runtime import run_start
from agents.steps import run_tool
from orchestrator.core import wakeups
from orchestrator.core.deadlocks import deadlock_break
from orchestrator.core.errors import Invalid
from orchestrator.core.lock_sets import lock_set_acquire, lock_set_release
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Agent,
    Conflict,
    Event,
    Lock,
    LockRequest,
    LockSet,
    Resource,
    Run,
    Step,
    Team,
)
from orchestrator.core.operations import AcquireSet, parsed
from orchestrator.core.resources import resource_create
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

# Both accounts, named in the order opposite to their ids (created b first).
PAIR = ["a", "b"]
INCREMENT = {"value": {"$inc": 1}, "expected_version": "$version"}
SCRIPT = [
    {"tool": "acquire_all", "args": {"resources": PAIR}},
    {"tool": "read", "args": {"resource": "a"}},
    {"tool": "write", "args": {"resource": "a", **INCREMENT}},
    {"tool": "write", "args": {"resource": "b", **INCREMENT}},
    {"tool": "release", "args": {"resource": "a"}},
    {"tool": "release", "args": {"resource": "b"}},
]


@pytest.fixture
def queue(redis_conn):
    return django_rq.get_queue("steps")


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


@pytest.fixture
def team() -> Team:
    team = factories.team()
    for name in ("b", "a"):  # ascending id: b, then a
        resource_create(team=team, name=name, value=0)
    return team


def step_of(agent: Agent, *, unguarded: bool = False) -> Step:
    run = factories.run(team=agent.team, unguarded=unguarded)
    return Step.objects.create(run=run, agent=agent, number=1, attempts=1)


def scripted(team: Team, name: str = "teller") -> Agent:
    return factories.agent(team_=team, name=name, backend="scripted", config={"script": SCRIPT})


def first_call(run: Run, agent: Agent) -> dict[str, Any]:
    (call, *_) = Step.objects.get(run=run, agent=agent, number=1).tool_calls
    assert call["tool"] == "acquire_all"
    return call["result"]


def written_fences(resource: str) -> list[int | None]:
    return [
        event.payload["fence"]
        for event in Event.objects.filter(kind="resource.written", payload__resource=resource)
    ]


def test_granted_at_once_the_locks_are_remembered_and_a_write_uses_their_fences(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent)

    granted = run_tool(agent, step, "acquire_all", {"resources": PAIR, "ttl": 60})

    assert (granted["ok"], granted["status"]) == (True, "granted")
    locks = {lock.resource.name: lock for lock in Lock.objects.select_related("resource")}
    assert [lock["resource"] for lock in granted["locks"]] == ["b", "a"]  # the order taken
    for said in granted["locks"]:
        lock = locks[said["resource"]]
        assert said == {
            "resource": lock.resource.name,
            "mode": "exclusive",
            "fence": lock.token,
            "expires_at": lock.expires_at.isoformat(),
            "version": 0,
            "value": lock.resource.value,
        }
        assert step._granted[said["resource"]] == (lock.pk, lock.token, "exclusive")
    assert {lock.lock_set_id for lock in locks.values()} == {LockSet.objects.get().pk}

    for name in PAIR:
        written = run_tool(agent, step, "write", {"resource": name, "value": 1})
        assert written == {"ok": True, "status": "applied", "version": 1, "released": False}
        assert written_fences(name) == [locks[name].token]
    # Each lock of the set is an ordinary lock: released by its resource's name.
    for name in PAIR:
        assert run_tool(agent, step, "release", {"resource": name}) == {
            "ok": True,
            "status": "released",
        }
    assert not Lock.objects.filter(released_at__isnull=True).exists()


def test_release_by_name_finds_a_sets_lock_in_a_later_step(team) -> None:
    """``_held`` looks the lock up when the step did not take it itself."""
    agent = factories.agent(team_=team)
    run_tool(agent, step_of(agent), "acquire_all", {"resources": PAIR})
    later = step_of(agent)

    assert run_tool(agent, later, "write", {"resource": "a", "value": 5})["status"] == "applied"
    assert written_fences("a") == [Lock.objects.get(resource__name="a").token]
    assert run_tool(agent, later, "release", {"resource": "b"})["status"] == "released"
    assert list(Lock.objects.filter(released_at__isnull=True).values_list("resource__name")) == [
        ("a",)
    ]


def test_a_waiting_set_resumes_the_step_with_every_lock_when_it_is_granted(queue, team) -> None:
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="a")
    teller = scripted(team)
    run = run_start(team=team, goal="both or neither", agents=[teller])
    drain()  # returns: the step waits, no worker sleeps on the set

    waiting = first_call(run, teller)
    lock_set = LockSet.objects.get()
    assert waiting == {
        "ok": True,
        "status": "waiting",
        "lock_set_id": lock_set.pk,
        "waiting_on": "a",
        "held": 1,  # b, below a in the global order
    }
    assert Step.objects.get(run=run, number=1).status == "waiting"
    assert queue.count == 0

    lock_release(lock_id=held.lock.pk, agent=holder)  # the set goes on, then wakes the step
    assert queue.count == 1
    drain()

    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    granted = first_call(run, teller)
    set_locks = {lock.resource.name: lock for lock in Lock.objects.filter(lock_set=lock_set)}
    assert [(lock["resource"], lock["fence"]) for lock in granted["locks"]] == [
        ("b", set_locks["b"].token),
        ("a", set_locks["a"].token),
    ]
    assert (granted["ok"], granted["status"]) == (True, "granted")
    # The later steps' writes carried the set's fences.
    assert written_fences("a") == [set_locks["a"].token]
    assert written_fences("b") == [set_locks["b"].token]
    assert [r.value for r in Resource.objects.order_by("name")] == [1, 1]
    assert not Lock.objects.filter(released_at__isnull=True).exists()


def test_a_cancelled_set_tells_the_step_why_and_the_agent_asks_again(queue, team) -> None:
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="a")
    teller = scripted(team)
    run = run_start(team=team, goal="both or neither", agents=[teller])
    drain()
    lock_set = LockSet.objects.get()

    lock_set_release(lock_set_id=lock_set.pk, agent=None, user=factories.superuser())
    assert not Lock.objects.filter(agent=teller, released_at__isnull=True).exists()
    drain()  # the step resumes; the next one asks again (and waits again)

    assert first_call(run, teller) == {
        "ok": False,
        "status": "cancelled",
        "error": "cancelled",
        "detail": "cancelled by an operator",
    }
    assert LockSet.objects.filter(status="waiting").count() == 1
    lock_release(lock_id=held.lock.pk, agent=holder)
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    assert [r.value for r in Resource.objects.order_by("name")] == [1, 1]


def test_a_set_aborted_as_a_deadlock_victim_tells_the_step_and_the_agent_starts_over(
    queue, team
) -> None:
    """An agent that locks one resource at a time can still close a cycle with a set;
    the operator picks the set's agent as the victim."""
    other = factories.agent(team_=team, name="one-at-a-time")
    lock_acquire(agent=other, resource="a")
    teller = scripted(team)
    run = run_start(team=team, goal="both or neither", agents=[teller])
    drain()  # the set holds b and waits for a
    assert lock_acquire(agent=other, resource="b").status == "waiting"  # the cycle
    conflict = Conflict.objects.get(kind="deadlock", status="open")

    deadlock_break(conflict_id=conflict.pk, victim_id=teller.pk, user=factories.superuser())
    assert Lock.objects.get(agent=other, resource__name="b", released_at__isnull=True)
    drain()

    aborted = first_call(run, teller)
    assert (aborted["ok"], aborted["status"], aborted["error"]) == (False, "aborted", "aborted")
    assert f"conflict #{conflict.pk}" in aborted["detail"]
    assert not Lock.objects.filter(agent=teller, released_at__isnull=True).exists()
    for lock in Lock.objects.filter(agent=other, released_at__isnull=True):  # a, and b
        lock_release(lock_id=lock.pk, agent=other)  # (granted when the set let it go)
    drain()  # the teller starts over, takes both and finishes
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    assert [r.value for r in Resource.objects.order_by("name")] == [1, 1]


def test_recovery_resumes_a_step_whose_set_was_granted_while_its_wake_up_was_lost(
    queue, team, monkeypatch
) -> None:
    holder = factories.agent(team_=team, name="holder")
    held = lock_acquire(agent=holder, resource="a")
    teller = scripted(team)
    run = run_start(team=team, goal="both or neither", agents=[teller])
    drain()
    step = Step.objects.get(run=run, number=1)
    assert recover_steps(stale_after=0).resumed == []  # still waiting: left alone

    monkeypatch.setattr(wakeups, "_handlers", [])  # the wake-up is lost (a worker died)
    lock_release(lock_id=held.lock.pk, agent=holder)
    assert LockSet.objects.get().status == "granted"
    assert queue.count == 0
    monkeypatch.undo()

    assert recover_steps(stale_after=0).resumed == [step.pk]
    drain()
    run.refresh_from_db()
    assert run.status == Run.Status.FINISHED
    assert first_call(run, teller)["status"] == "granted"


BAD = [
    {"resources": []},
    {"resources": "a"},
    {"resources": ["a", 7]},
    {"resources": ["x"] * 65},
    {"resources": ["a"], "mode": "upgradable"},
    {"resources": ["a"], "ttl": 0},
    {"resources": ["a"], "ttl": "5"},
    {"resources": ["a"], "ttl": 86401},
]


@pytest.mark.parametrize("arguments", BAD)
def test_bad_arguments_get_the_services_refusal_and_take_nothing(team, arguments) -> None:
    agent = factories.agent(team_=team)
    with pytest.raises(Invalid) as refused:
        lock_set_acquire(agent=agent, **arguments)

    result = run_tool(agent, step_of(agent), "acquire_all", arguments)

    assert result == {"ok": False, **refused.value.as_dict()}
    assert result["error"] == "invalid_request"
    assert not (Lock.objects.exists() or LockRequest.objects.exists() or LockSet.objects.exists())


@pytest.mark.parametrize("arguments", [{}, {"resources": ["a"], "wait": False}, {"resource": "a"}])
def test_arguments_the_tool_does_not_have_are_refused_as_the_model_refuses_them(
    team, arguments
) -> None:
    agent = factories.agent(team_=team)
    with pytest.raises(Invalid) as refused:
        parsed(AcquireSet, arguments)

    result = run_tool(agent, step_of(agent), "acquire_all", arguments)

    assert result == {"ok": False, **refused.value.as_dict()}
    assert result["error"] == "invalid_request"
    assert not LockSet.objects.exists()


def test_a_missing_resource_is_not_found_and_nothing_is_taken(team) -> None:
    agent = factories.agent(team_=team)
    result = run_tool(agent, step_of(agent), "acquire_all", {"resources": ["a", "nope"]})
    assert (result["ok"], result["error"]) == (False, "resource_not_found")
    assert not (Lock.objects.exists() or LockSet.objects.exists())


def test_an_unguarded_run_bypasses_the_set(team) -> None:
    agent = factories.agent(team_=team)
    step = step_of(agent, unguarded=True)
    holder = factories.agent(team_=team, name="holder")
    lock_acquire(agent=holder, resource="a")  # would make a guarded set wait

    result = run_tool(agent, step, "acquire_all", {"resources": ["a", "b", "a"]})

    assert result == {
        "ok": True,
        "status": "granted",
        "locks": [
            {"resource": "a", "mode": "exclusive", "fence": None},
            {"resource": "b", "mode": "exclusive", "fence": None},
        ],
        "unguarded": True,
    }
    assert not LockSet.objects.exists()
    assert Lock.objects.filter(agent=agent).count() == 0
    missing = run_tool(agent, step, "acquire_all", {"resources": ["a", "nope"]})
    assert missing["error"] == "resource_not_found"
