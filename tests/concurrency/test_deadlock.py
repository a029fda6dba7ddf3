"""Deadlocks formed by requests that could not see each other.

A holds r1 and B holds r2; then, at the same moment, A asks for r2 and B for
r1, each in its own process. Each acquire checks for a cycle inside its own
transaction, which cannot see the other's uncommitted request: at most one
of them (the later to check) can see the cycle, and it may be neither. The
sweep, which reads the committed wait-for graph, must then report the cycle,
exactly once.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from orchestrator.core.deadlocks import BreakAction, deadlock_break, deadlock_sweep
from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import (
    Conflict,
    ConflictKind,
    ConflictStatus,
    Lock,
    LockEnd,
    LockRequest,
    RequestStatus,
)
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.processes import context, run_workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROUNDS = 5  # independent pairs, raced one after another by the same two processes
TTL = 60


def open_deadlocks():
    return Conflict.objects.filter(kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN)


def pair(round_: int):
    """Agents A and B of one team; A holds r1, B holds r2 (committed)."""
    team = factories.team(default_lease_ttl=TTL)
    a = factories.agent(team_=team, name=f"A-{round_}")
    b = factories.agent(team_=team, name=f"B-{round_}")
    r1 = resource_create(team=team, name=f"r1-{round_}")
    r2 = resource_create(team=team, name=f"r2-{round_}")
    assert lock_acquire(agent=a, resource=r1.pk, ttl=TTL).status == "granted"
    assert lock_acquire(agent=b, resource=r2.pk, ttl=TTL).status == "granted"
    return a, b, r1, r2


def assert_one_deadlock_naming(conflict: Conflict, agents, resources) -> None:
    assert set(conflict.agents.values_list("pk", flat=True)) == {x.pk for x in agents}
    assert set(conflict.resources.values_list("pk", flat=True)) == {x.pk for x in resources}


def test_a_cycle_of_concurrent_requests_is_reported_exactly_once() -> None:
    pairs = [pair(i) for i in range(ROUNDS)]
    barrier = context().Barrier(2)
    a_results, b_results = run_workers(
        "tests.concurrency.tasks:deadlock_requester",
        [
            {"requests": [(a.pk, r2.pk) for a, _, _, r2 in pairs], "ttl": TTL, "barrier": barrier},
            {"requests": [(b.pk, r1.pk) for _, b, r1, _ in pairs], "ttl": TTL, "barrier": barrier},
        ],
        timeout=90,
    )
    assert all(r["status"] == "waiting" for r in a_results + b_results)
    inline = [
        {r["deadlock_id"] for r in (ra, rb)} - {None}
        for ra, rb in zip(a_results, b_results, strict=True)
    ]
    # A check sees the other request only if that one committed first: never both.
    assert all(len(found) <= 1 for found in inline)

    report = monitor_sweep()  # runs deadlock_sweep over the committed graph

    assert open_deadlocks().count() == ROUNDS
    for (a, b, r1, r2), found in zip(pairs, inline, strict=True):
        (conflict,) = open_deadlocks().filter(agents=a)
        assert_one_deadlock_naming(conflict, [a, b], [r1, r2])
        # Reported by the inline check, or else by the sweep: once either way.
        assert (conflict.pk in found) != (conflict.pk in report.deadlocks)
    assert deadlock_sweep().detected == []
    print(
        f"\n{ROUNDS} races: {sum(map(len, inline))} cycle(s) seen inline, "
        f"{len(report.deadlocks)} by the sweep"
    )


def test_the_sweep_reports_a_cycle_no_acquire_saw_then_breaking_it_grants_the_other() -> None:
    a, b, r1, r2 = pair(0)
    now = timezone.now()
    # Queue both requests behind the inline check's back, as two concurrent
    # acquires may leave them.
    waits = {
        agent.pk: LockRequest.objects.create(
            resource=resource, agent=agent, mode="exclusive", ttl=TTL, requested_at=now
        )
        for agent, resource in ((a, r2), (b, r1))
    }
    assert not open_deadlocks().exists()

    result = deadlock_sweep()

    (conflict,) = open_deadlocks()
    assert result.detected == [conflict.pk]
    assert_one_deadlock_naming(conflict, [a, b], [r1, r2])

    deadlock_break(conflict_id=conflict.pk, victim_id=a.pk, action=BreakAction.ABORT)

    a_wait, b_wait = (LockRequest.objects.get(pk=waits[x.pk].pk) for x in (a, b))
    assert a_wait.status == RequestStatus.ABORTED
    assert b_wait.status == RequestStatus.GRANTED
    a_lock = Lock.objects.get(agent=a, resource=r1)
    assert a_lock.end == LockEnd.REVOKED
    b_lock = Lock.objects.get(pk=b_wait.lock_id)
    assert (b_lock.agent_id, b_lock.resource_id, b_lock.released_at) == (b.pk, r1.pk, None)
    r1.refresh_from_db()
    assert b_lock.token == r1.fence == a_lock.token + 2  # revocation bumped the fence
    conflict.refresh_from_db()
    assert conflict.status == ConflictStatus.RESOLVED

    again = deadlock_sweep()
    assert again.detected == []
    assert not open_deadlocks().exists()
    assert Conflict.objects.filter(kind=ConflictKind.DEADLOCK).count() == 1
