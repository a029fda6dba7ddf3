"""Deadlock detection and breaking (single process; concurrent cycles: tests/concurrency)."""

from __future__ import annotations

import time

import pytest

from orchestrator.core.deadlocks import BreakAction, deadlock_break, deadlock_sweep, wait_for_graph
from orchestrator.core.errors import Conflicting, Invalid
from orchestrator.core.locks import lock_acquire, lock_release, lock_request_cancel
from orchestrator.core.models import (
    Conflict,
    Event,
    Lock,
    LockEnd,
    LockRequest,
    RequestStatus,
    Step,
)
from orchestrator.core.resources import resource_create, resource_write
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def make_team(policy: str = "ask_operator"):
    team = factories.team(deadlock_policy=policy)
    agents = [factories.agent(team_=team, name=f"{team.name}-a{i}") for i in range(3)]
    for name in ("r0", "r1", "r2"):
        resource_create(team=team, name=f"{team.name}-{name}", value=0)
    return team, agents


def hold(agent, resource):
    result = lock_acquire(agent=agent, resource=resource)
    assert result.status == "granted"
    return result.lock


def open_deadlocks():
    return list(Conflict.objects.filter(kind="deadlock", status="open"))


def test_two_agent_cycle_is_one_open_conflict_within_a_second() -> None:
    team, (a, b, _) = make_team()
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    hold(a, r0)
    hold(b, r1)
    started = time.monotonic()
    assert lock_acquire(agent=a, resource=r1).deadlock is None
    second = lock_acquire(agent=b, resource=r0)
    assert time.monotonic() - started < 1.0
    assert second.deadlock is not None
    (conflict,) = open_deadlocks()
    assert conflict.pk == second.deadlock.pk
    assert {x.name for x in conflict.agents.all()} == {a.name, b.name}
    assert {x.name for x in conflict.resources.all()} == {r0, r1}
    assert a.name in conflict.detail and b.name in conflict.detail
    # Seen again by the sweep: still one conflict.
    assert deadlock_sweep().detected == []
    assert len(open_deadlocks()) == 1
    assert Event.objects.filter(kind="deadlock.detected").count() == 1


def test_three_agent_cycle_then_break_lets_every_remaining_waiter_finish() -> None:
    team, (a, b, c) = make_team()
    r = [f"{team.name}-r{i}" for i in range(3)]
    locks = {a.pk: hold(a, r[0]), b.pk: hold(b, r[1]), c.pk: hold(c, r[2])}
    lock_acquire(agent=a, resource=r[1])
    lock_acquire(agent=b, resource=r[2])
    started = time.monotonic()
    last = lock_acquire(agent=c, resource=r[0])
    assert time.monotonic() - started < 1.0  # liveness deadline, not a performance claim
    conflict = last.deadlock
    assert conflict is not None
    assert conflict.agents.count() == 3
    assert len(open_deadlocks()) == 1

    operator = factories.superuser("ops")
    deadlock_break(conflict_id=conflict.pk, victim_id=a.pk, action="abort", user=operator)
    conflict.refresh_from_db()
    assert conflict.status == "resolved"
    assert conflict.resolved_by == operator
    assert "a0" in conflict.resolution
    # a's wait was aborted and its lock on r0 revoked: c got r0.
    assert LockRequest.objects.get(agent=a, status__in=["aborted"]).resource.name == r[1]
    revoked = Lock.objects.get(pk=locks[a.pk].pk)
    assert revoked.end == LockEnd.REVOKED
    c_lock = Lock.objects.get(agent=c, resource__name=r[0], released_at__isnull=True)
    # The victim's old fence is now stale.
    assert resource_write(agent=a, resource=r[0], value=9, fence=revoked.token).status == (
        "stale_fence"
    )
    # Every remaining waiter finishes: c releases both, then b gets r2 and finishes.
    lock_release(lock_id=c_lock.pk, agent=c)
    lock_release(lock_id=locks[c.pk].pk, agent=c)
    b_lock = Lock.objects.get(agent=b, resource__name=r[2], released_at__isnull=True)
    assert b_lock is not None
    assert not LockRequest.objects.filter(status=RequestStatus.WAITING).exists()
    event = Event.objects.get(kind="deadlock.broken")
    assert event.actor == "user:ops"


def test_breaking_twice_is_refused_and_victim_must_be_in_the_cycle() -> None:
    team, (a, b, c) = make_team()
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    hold(a, r0)
    hold(b, r1)
    lock_acquire(agent=a, resource=r1)
    conflict = lock_acquire(agent=b, resource=r0).deadlock
    with pytest.raises(Invalid):
        deadlock_break(conflict_id=conflict.pk, victim_id=c.pk)
    with pytest.raises(Invalid):
        deadlock_break(conflict_id=conflict.pk, victim_id=a.pk, action="explode")
    deadlock_break(conflict_id=conflict.pk, victim_id=b.pk, action=BreakAction.CANCEL_WAIT)
    with pytest.raises(Conflicting):
        deadlock_break(conflict_id=conflict.pk, victim_id=a.pk)


def test_revoke_only_keeps_the_victim_waiting() -> None:
    team, (a, b, _) = make_team()
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    a_lock = hold(a, r0)
    hold(b, r1)
    lock_acquire(agent=a, resource=r1)
    conflict = lock_acquire(agent=b, resource=r0).deadlock
    deadlock_break(conflict_id=conflict.pk, victim_id=a.pk, action=BreakAction.REVOKE)
    assert Lock.objects.get(pk=a_lock.pk).end == LockEnd.REVOKED
    assert LockRequest.objects.get(agent=a, resource__name=r1).status == RequestStatus.WAITING
    assert LockRequest.objects.get(agent=b, resource__name=r0).status == RequestStatus.GRANTED


@pytest.mark.parametrize("policy", ["abort_youngest", "abort_least_progress"])
def test_automatic_policies_pick_a_victim(policy: str) -> None:
    team, (a, b, _) = make_team(policy)
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    hold(a, r0)
    hold(b, r1)
    if policy == "abort_least_progress":
        # b has made progress, a has not: a is the victim although b waited last.
        run = factories.run(team=team)
        Step.objects.create(run=run, agent=b, number=1, status="done")
    lock_acquire(agent=a, resource=r1)
    detected = lock_acquire(agent=b, resource=r0).deadlock
    assert detected is not None
    conflict = Conflict.objects.get(pk=detected.pk)
    assert conflict.status == "resolved"  # broken right after the detecting commit
    victim = a if policy == "abort_least_progress" else b
    assert conflict.data["victim"] == victim.name
    assert f"policy {policy}" in conflict.resolution
    survivor = b if victim == a else a
    assert not LockRequest.objects.filter(agent=survivor, status="waiting").exists()
    assert not open_deadlocks()


def test_sweep_closes_a_deadlock_that_dissolved() -> None:
    team, (a, b, _) = make_team()
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    hold(a, r0)
    hold(b, r1)
    lock_acquire(agent=a, resource=r1)
    waiting = lock_acquire(agent=b, resource=r0)
    assert open_deadlocks()
    lock_request_cancel(request_id=waiting.request.pk, agent=b)
    result = deadlock_sweep()
    assert result.dissolved == [waiting.deadlock.pk]
    assert not open_deadlocks()


def test_queue_edges_catch_a_cycle_through_a_queued_writer() -> None:
    """a holds x; b waits (exclusive) on x; c holds y shared; a asks y shared (compatible
    with c, but queued behind d's exclusive request); d waits on y; c waits on x.
    Without queue edges a's wait on y is invisible and the cycle a->d->c->a is missed."""
    team = factories.team()
    a, c, d = (factories.agent(team_=team, name=n) for n in ("qa", "qc", "qd"))
    for name in ("x", "y"):
        resource_create(team=team, name=name)
    hold(a, "x")
    assert lock_acquire(agent=c, resource="y", mode="shared").status == "granted"
    assert lock_acquire(agent=d, resource="y").status == "waiting"  # exclusive, behind c
    assert lock_acquire(agent=a, resource="y", mode="shared").status == "waiting"
    result = lock_acquire(agent=c, resource="x")
    assert result.deadlock is not None
    graph = wait_for_graph()
    assert graph.has_edge(a.pk, d.pk)
    assert set(result.deadlock.data["agent_ids"]) == {a.pk, c.pk, d.pk}


def test_a_new_cycle_behind_a_reported_one_is_reported_by_its_request() -> None:
    """Found by tests/properties: a and b deadlock over r0/r1 (reported); c and d then
    queue for both behind them, c behind d on r1 and d behind c on r0: a cycle of its
    own, which d's request closes while also waiting behind the a-b cycle. The check
    reported the a-b cycle again (already open) and left c-d to the next sweep."""
    team, (a, b, c) = make_team()
    d = factories.agent(team_=team, name=f"{team.name}-a3")
    r0, r1 = f"{team.name}-r0", f"{team.name}-r1"
    hold(b, r1)
    lock_acquire(agent=a, resource=r1)
    hold(a, r0)
    first = lock_acquire(agent=b, resource=r0).deadlock
    assert set(first.data["agent_ids"]) == {a.pk, b.pk}
    lock_acquire(agent=d, resource=r1)
    lock_acquire(agent=c, resource=r1)
    assert lock_acquire(agent=c, resource=r0).deadlock == first  # waits behind it only
    second = lock_acquire(agent=d, resource=r0).deadlock
    assert second is not None and set(second.data["agent_ids"]) == {c.pk, d.pk}
    assert {tuple(x.data["agent_ids"]) for x in open_deadlocks()} == {
        tuple(sorted((a.pk, b.pk))),
        tuple(sorted((c.pk, d.pk))),
    }
    assert deadlock_sweep().detected == []  # nothing was left for the sweep
