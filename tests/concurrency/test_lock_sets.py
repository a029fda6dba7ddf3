"""Lock sets under contention: several processes, each with its own database
connection, lock random two or three of a few counters together, naming them in
random orders, and increment each. Sets take their locks in one global order, so
nobody deadlocks (no cycle is ever found, everyone finishes), and no increment is
lost and no two holds of a counter overlap (the history in PostgreSQL shows both).
"""

from __future__ import annotations

import time

import pytest

from orchestrator.core.models import Conflict, LockSet, RequestStatus
from orchestrator.core.monitor import monitor_sweep
from tests.concurrency.checks import check_counter_history
from tests.concurrency.processes import Workers, context
from tests.concurrency.tasks import counter_history, counter_setup

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKERS = 6
CYCLES = 40
COUNTERS = 4
TTL = 60  # long enough never to expire under load: every write should apply
DEADLINE = 240  # liveness only


def test_sets_in_random_orders_never_deadlock_and_lose_no_update() -> None:
    setup = counter_setup(agents=WORKERS, counters=COUNTERS, prefix="sets")
    ctx = context()
    start = ctx.Barrier(WORKERS)
    wake_events = {agent_id: ctx.Event() for agent_id in setup["agent_ids"]}
    sweeps = []
    began = time.monotonic()
    with Workers() as workers:
        for index, agent_id in enumerate(setup["agent_ids"]):
            workers.start(
                "tests.concurrency.tasks:lock_set_worker",
                agent_id=agent_id,
                resource_ids=setup["resource_ids"],
                cycles=CYCLES,
                seed=f"sets:{index}",
                ttl=TTL,
                start=start,
                wake_events=wake_events,
            )
        while not workers.poll(timeout=1.0):
            assert time.monotonic() - began < DEADLINE, "lock set workers did not finish"
            sweeps.append(monitor_sweep())
        results = workers.results(timeout=10)

    assert sum(r["cycles"] for r in results) == WORKERS * CYCLES
    outcomes = {key for r in results for key in r["outcomes"]}
    assert outcomes == {"write_applied", "release_granted"}, results
    writes = check_counter_history(counter_history(resource_ids=setup["resource_ids"]), results)
    assert sum(writes.values()) == sum(sum(r["picked"].values()) for r in results)
    assert not any(s.deadlocks for s in sweeps), sweeps
    assert not Conflict.objects.exists()  # no deadlock, no stale fence, no lost lease
    statuses = set(LockSet.objects.values_list("status", flat=True))
    assert statuses == {RequestStatus.GRANTED}
    queued = sum(r["queued"] for r in results)
    assert queued > 0  # the sets did contend
    print(
        f"\n{WORKERS}x{CYCLES} lock sets over {COUNTERS} counters in "
        f"{time.monotonic() - began:.1f}s; queued {queued}, writes {sorted(writes.values())}, "
        f"monitor sweeps {len(sweeps)} (continued {sum(s.lock_sets for s in sweeps)} sets)"
    )
