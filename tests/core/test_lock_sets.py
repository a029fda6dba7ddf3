"""Lock sets (core/lock_sets.py) on PostgreSQL, with real commits: all or nothing, in
ascending resource id, going on after the transaction that granted their request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.core import lock_sets, wakeups
from orchestrator.core.deadlocks import deadlock_break
from orchestrator.core.errors import Conflicting, Invalid, NotFound
from orchestrator.core.events import service
from orchestrator.core.lock_sets import (
    continue_lock_set,
    lock_set_acquire,
    lock_set_advance,
    lock_set_release,
    lock_sets_to_continue,
)
from orchestrator.core.locks import (
    lock_acquire,
    lock_release,
    lock_release_all,
    lock_request_cancel,
)
from orchestrator.core.models import (
    Event,
    Lock,
    LockRequest,
    LockSet,
    RequestStatus,
)
from orchestrator.core.resources import resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    return factories.team(default_lease_ttl=30)


@pytest.fixture
def agents(team):
    return [factories.agent(team_=team, name=f"a{i}") for i in range(4)]


@pytest.fixture
def names(team):
    # Created in reverse, so that ascending id is not the order of the names.
    for name in ("c", "b", "a"):
        resource_create(team=team, name=name, value=0)
    return ["a", "b", "c"]


def live(agent) -> set[str]:
    return set(
        Lock.objects.filter(agent=agent, released_at__isnull=True).values_list(
            "resource__name", flat=True
        )
    )


def test_a_free_set_is_granted_at_once_in_ascending_id(agents, names) -> None:
    a = agents[0]
    result = lock_set_acquire(agent=a, resources=names)
    assert result.status == "granted"
    ids = [lock.resource_id for lock in result.locks]
    assert ids == sorted(ids)
    assert [lock.resource.name for lock in result.locks] == ["c", "b", "a"]  # by id
    assert {lock.lock_set_id for lock in result.locks} == {result.lock_set.pk}
    assert len({lock.expires_at for lock in result.locks}) == 1  # one lease for all
    assert all(lock.token == 1 for lock in result.locks)
    assert live(a) == {"a", "b", "c"}
    assert Event.objects.filter(kind="lockset.granted").count() == 1


def test_wait_false_takes_nothing_when_one_is_busy(agents, names) -> None:
    a, b = agents[:2]
    lock_acquire(agent=b, resource="b")
    before = (Lock.objects.count(), LockRequest.objects.count(), LockSet.objects.count())
    result = lock_set_acquire(agent=a, resources=names, wait=False)
    assert result.status == "busy"
    assert list(result.busy) == ["b"]
    assert result.busy["b"][0]["agent"] == "a1"
    assert (Lock.objects.count(), LockRequest.objects.count(), LockSet.objects.count()) == before


def test_a_busy_set_holds_a_prefix_waits_as_one_and_goes_on_after_commit(
    agents, names, woken
) -> None:
    a, b = agents[:2]
    b_lock = lock_acquire(agent=b, resource="b").lock  # "b" is the middle id
    result = lock_set_acquire(agent=a, resources=names)
    assert result.status == "waiting"
    assert result.waiting_on.name == "b"
    assert result.held == 1
    assert live(a) == {"c"}  # the lowest id: "c"; "a" (highest) is not taken yet
    request = LockRequest.objects.get(lock_set=result.lock_set, status=RequestStatus.WAITING)
    assert request.resource.name == "b"
    woken.clear()
    lock_release(lock_id=b_lock.pk, agent=b)  # grants "b"; the set goes on after commit
    lock_set = LockSet.objects.get(pk=result.lock_set.pk)
    assert lock_set.status == RequestStatus.GRANTED
    assert live(a) == {"a", "b", "c"}
    assert [w["reason"] for w in woken if w["agent_id"] == a.pk] == ["lock"]  # woken once
    again = lock_set_advance(lock_set_id=lock_set.pk, agent=a)
    assert again.status == "granted"
    assert {lock.resource.name for lock in again.locks} == {"a", "b", "c"}


def test_asking_again_is_the_same_set(agents, names) -> None:
    a, b = agents[:2]
    lock_acquire(agent=b, resource="a")
    first = lock_set_acquire(agent=a, resources=names)
    second = lock_set_acquire(agent=a, resources=["b", "a", "c", "a"])
    assert second.lock_set.pk == first.lock_set.pk
    assert LockRequest.objects.filter(agent=a, status=RequestStatus.WAITING).count() == 1


def test_a_set_granted_adopts_the_locks_held_already(agents, names) -> None:
    a = agents[0]
    single = lock_acquire(agent=a, resource="b").lock
    first = lock_set_acquire(agent=a, resources=names)
    assert single.pk in {lock.pk for lock in first.locks}
    second = lock_set_acquire(agent=a, resources=names)
    assert {lock.pk for lock in second.locks} == {lock.pk for lock in first.locks}


def test_refusals_leave_nothing_taken(agents, names) -> None:
    a, b = agents[:2]
    before = (Lock.objects.count(), LockRequest.objects.count(), LockSet.objects.count())
    with pytest.raises(NotFound):
        lock_set_acquire(agent=a, resources=["a", "nope"])
    with pytest.raises(Invalid):
        lock_set_acquire(agent=a, resources=[])
    with pytest.raises(Invalid):
        lock_set_acquire(agent=a, resources=["a"], ttl=0)
    lock_acquire(agent=a, resource="c", mode="shared")
    with pytest.raises(Invalid) as upgrade:
        lock_set_acquire(agent=a, resources=names)
    assert upgrade.value.code == "upgrade_not_supported"
    lock_acquire(agent=b, resource="b")
    lock_acquire(agent=a, resource="b")  # queued alone
    with pytest.raises(Conflicting) as overlap:
        lock_set_acquire(agent=a, resources=["a", "b"])
    assert overlap.value.code == "already_waiting"
    assert LockSet.objects.count() == before[2]
    assert set(Lock.objects.filter(agent=a, released_at__isnull=True).values_list(
        "resource__name", flat=True)) == {"c"}  # fmt: skip


def test_cancelling_a_waiting_set_releases_its_prefix(agents, names) -> None:
    a, b = agents[:2]
    lock_acquire(agent=b, resource="a")  # the highest id: the set holds c and b
    result = lock_set_acquire(agent=a, resources=names)
    assert live(a) == {"b", "c"}
    ended = lock_set_release(lock_set_id=result.lock_set.pk, agent=a)
    assert ended.status == RequestStatus.CANCELLED
    assert live(a) == set()
    assert not LockRequest.objects.filter(agent=a, status=RequestStatus.WAITING).exists()


def test_cancelling_its_request_ends_the_set_and_releases_after_commit(agents, names) -> None:
    a, b = agents[:2]
    lock_acquire(agent=b, resource="a")
    result = lock_set_acquire(agent=a, resources=names)
    request = LockRequest.objects.get(lock_set=result.lock_set, status=RequestStatus.WAITING)
    lock_request_cancel(request_id=request.pk, agent=a)
    assert LockSet.objects.get(pk=result.lock_set.pk).status == RequestStatus.CANCELLED
    assert live(a) == set()
    assert lock_sets_to_continue() == []


def test_releasing_a_granted_set_frees_everything(agents, names) -> None:
    a, b = agents[:2]
    result = lock_set_acquire(agent=a, resources=names)
    waiting = lock_acquire(agent=b, resource="b")
    lock_set_release(lock_set_id=result.lock_set.pk, agent=a)
    assert live(a) == set()
    assert LockRequest.objects.get(pk=waiting.request.pk).status == RequestStatus.GRANTED


def test_a_lapsed_prefix_lock_is_taken_again_in_order(agents, names) -> None:
    """The set held c and waited on b; its lock on c ran out and another agent took c:
    the set gives up its wait on b (above c) and queues for c again."""
    a, b, c = agents[:3]
    held_b = lock_acquire(agent=b, resource="b").lock
    result = lock_set_acquire(agent=a, resources=names)
    past = timezone.now() - timedelta(seconds=60)
    Lock.objects.filter(agent=a, released_at__isnull=True).update(
        acquired_at=past, expires_at=past + timedelta(seconds=30)
    )  # the lease on c is over
    taken = lock_acquire(agent=c, resource="c")
    assert taken.status == "granted"
    again = lock_set_advance(lock_set_id=result.lock_set.pk, agent=a)
    assert again.status == "waiting"
    assert again.waiting_on.name == "c"
    assert again.held == 0
    waits = LockRequest.objects.filter(lock_set=result.lock_set, status=RequestStatus.WAITING)
    assert list(waits.values_list("resource__name", flat=True)) == ["c"]
    lock_release(lock_id=held_b.pk, agent=b)
    lock_release(lock_id=taken.lock.pk, agent=c)
    assert LockSet.objects.get(pk=result.lock_set.pk).status == RequestStatus.GRANTED
    assert live(a) == {"a", "b", "c"}


def test_a_set_chosen_as_deadlock_victim_ends_and_releases(agents, names) -> None:
    """A set (holds c, waits for b) and a one-at-a-time agent (holds b, waits for c)
    close a cycle; the operator aborts the set's wait: it ends and lets c go."""
    a, b = agents[:2]
    lock_acquire(agent=b, resource="b")
    result = lock_set_acquire(agent=a, resources=names)  # holds c, waits for b
    assert (result.status, result.waiting_on.name) == ("waiting", "b")
    blocked = lock_acquire(agent=b, resource="c")  # b waits for c: the cycle is closed
    assert blocked.status == "waiting"
    assert blocked.deadlock is not None
    deadlock_break(
        conflict_id=blocked.deadlock.pk,
        victim_id=a.pk,
        action="cancel_wait",
        user=factories.superuser(),
    )
    lock_set = LockSet.objects.get(pk=result.lock_set.pk)
    assert lock_set.status == RequestStatus.ABORTED
    assert "deadlock victim" in lock_set.reason
    assert live(a) == set()  # released after the break committed
    assert LockRequest.objects.get(pk=blocked.request.pk).status == RequestStatus.GRANTED
    assert lock_sets_to_continue() == []


def test_an_advance_that_finds_the_set_granted_meanwhile_answers_its_locks(agents, names) -> None:
    """Two advances of one set race (its agent's poll, the after-commit continuation):
    the one that locks the rows second finds the set granted, and answers with the
    locks rather than as ended."""
    a = agents[0]
    granted = lock_set_acquire(agent=a, resources=names)
    stale = LockSet.objects.get(pk=granted.lock_set.pk)
    stale.status = RequestStatus.WAITING  # as the slower advance read it, before the rows
    ids = sorted(lock.resource_id for lock in granted.locks)
    again = service(lambda: lock_sets._advance(stale, ids, by_agent=True))()
    assert again.status == "granted"
    assert [lock.pk for lock in again.locks] == [lock.pk for lock in granted.locks]
    assert live(a) == {"a", "b", "c"}


def test_a_request_queued_alone_inside_a_waiting_set_becomes_the_sets(agents, names) -> None:
    """The set waits below (for c, the lowest id); meanwhile its agent queues alone for
    a (the highest): when the set gets there, that request is the set's."""
    a, b = agents[:2]
    held_c = lock_acquire(agent=b, resource="c").lock
    lock_acquire(agent=b, resource="a")
    result = lock_set_acquire(agent=a, resources=names)
    assert result.waiting_on.name == "c"
    alone = lock_acquire(agent=a, resource="a")
    assert alone.status == "waiting"
    lock_release(lock_id=held_c.pk, agent=b)  # the set takes c and b, then waits for a
    waits = LockRequest.objects.filter(agent=a, status=RequestStatus.WAITING)
    assert list(waits.values_list("pk", "lock_set_id")) == [(alone.request.pk, result.lock_set.pk)]
    assert LockSet.objects.get(pk=result.lock_set.pk).status == RequestStatus.WAITING
    held_a = Lock.objects.get(agent=b, resource__name="a", released_at__isnull=True)
    lock_release(lock_id=held_a.pk, agent=b)
    assert LockSet.objects.get(pk=result.lock_set.pk).status == RequestStatus.GRANTED
    assert live(a) == {"a", "b", "c"}


def test_a_set_overlapping_another_waiting_set_is_refused(agents, names) -> None:
    a, b = agents[:2]
    lock_acquire(agent=b, resource="c")
    lock_set_acquire(agent=a, resources=names)  # waits for c, the lowest
    with pytest.raises(Conflicting) as overlap:
        lock_set_acquire(agent=a, resources=["a"])
    assert overlap.value.code == "already_waiting"


def test_an_agent_whose_run_ends_keeps_no_set_going_on_late(agents, names, monkeypatch) -> None:
    """The set's request is granted, but its continuation has not run yet when its
    agent's locks are all released (its run ended): the set ends, and going on later
    takes nothing again."""
    a, b = agents[:2]
    held = lock_acquire(agent=b, resource="b").lock
    result = lock_set_acquire(agent=a, resources=names)
    with monkeypatch.context() as late:
        late.setattr(wakeups.LOCK_SETS, "_handlers", [])  # the continuation is late
        lock_release(lock_id=held.pk, agent=b)
    assert LockSet.objects.get(pk=result.lock_set.pk).status == RequestStatus.WAITING
    service(lambda: lock_release_all(agent_id=a.pk, reason="run cancelled"))()
    continue_lock_set(result.lock_set.pk)  # as the continuation would, late
    lock_set = LockSet.objects.get(pk=result.lock_set.pk)
    assert (lock_set.status, lock_set.reason) == (RequestStatus.CANCELLED, "run cancelled")
    assert live(a) == set()


def test_a_set_granted_at_once_wakes_nobody(agents, names, woken) -> None:
    lock_set_acquire(agent=agents[0], resources=names)
    assert woken == []
