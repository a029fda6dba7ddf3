"""Lost updates and overlapping holds: many processes increment shared counters.

Each of WORKERS processes runs CYCLES acquire / read / write(value+1,
expected_version, fence) / release cycles on counters it picks with a seeded
RNG. Under the protocol no increment is lost and no two exclusive holds of
a counter overlap; the history in PostgreSQL shows both. The same holds when each
write releases its lock in its own transaction (``release=True``: two commits a
cycle), where the next holder is granted in the commit of the write.
"""

from __future__ import annotations

import time

import pytest

from orchestrator.core.models import Conflict
from orchestrator.core.monitor import monitor_sweep
from tests.concurrency.checks import check_counter_history
from tests.concurrency.processes import Workers, context
from tests.concurrency.tasks import counter_history, counter_setup

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKERS = 8
CYCLES = 200
SEED = "counters"
TTL = 30  # long enough never to expire under load: every write should apply
DEADLINE = 240  # liveness only: about a minute is usual on a loaded 2-core machine


@pytest.mark.parametrize(("counters", "release_with_write"), [(1, False), (5, False), (1, True)])
def test_no_update_is_lost_and_no_holds_overlap(counters: int, release_with_write: bool) -> None:
    setup = counter_setup(agents=WORKERS, counters=counters, prefix=f"c{counters}")
    ctx = context()
    start = ctx.Barrier(WORKERS)
    wake_events = {agent_id: ctx.Event() for agent_id in setup["agent_ids"]}
    sweeps = []
    began = time.monotonic()
    with Workers() as workers:
        for index, agent_id in enumerate(setup["agent_ids"]):
            workers.start(
                "tests.concurrency.tasks:counter_worker",
                agent_id=agent_id,
                resource_ids=setup["resource_ids"],
                cycles=CYCLES,
                seed=f"{SEED}:{counters}:{index}",
                ttl=TTL,
                start=start,
                wake_events=wake_events,
                release_with_write=release_with_write,
            )
        # Meanwhile the parent plays the monitor, sweeping beside the workers.
        while not workers.poll(timeout=1.0):
            assert time.monotonic() - began < DEADLINE, "counter workers did not finish"
            sweeps.append(monitor_sweep())
        results = workers.results(timeout=10)

    assert sum(r["cycles"] for r in results) == WORKERS * CYCLES
    outcomes = {key for r in results for key in r["outcomes"]}
    released = "released_with_write_True" if release_with_write else "release_released"
    assert outcomes == {"write_applied", released}, results
    writes = check_counter_history(counter_history(resource_ids=setup["resource_ids"]), results)
    assert sum(writes.values()) == WORKERS * CYCLES
    # Nobody ever waits while holding a lock here, so there is no deadlock to find,
    # and no lease runs out.
    assert not any(s.deadlocks or s.expired for s in sweeps), sweeps
    assert not Conflict.objects.exists()
    print(
        f"\n{counters} counter(s): {WORKERS}x{CYCLES} cycles in {time.monotonic() - began:.1f}s, "
        f"writes per counter {sorted(writes.values())}, "
        f"queued {sum(r['queued'] for r in results)}, monitor sweeps {len(sweeps)}"
    )
