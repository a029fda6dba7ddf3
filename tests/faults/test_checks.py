"""The fault run's checks can fail: the same workload, unguarded (no locks, no
version checks) and drained in this process, breaks the invariants they check;
guarded, only the missing zombie incident is reported (no nemesis ran)."""

from __future__ import annotations

import django_rq
import pytest

from tests.faults.checks import check
from tests.faults.nemesis import Log
from tests.faults.workload import Plan, build
from tests.workers import SimpleWorker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]

SMALL = {
    "operations": 160,
    "counters": 2,
    "counter_agents": 4,
    "zombie_agents": 0,
    "booking_agents": 4,
    "bookings_per_agent": 2,
    "slots": 3,
    "think": (0.0, 0.0),
}


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def test_unguarded_runs_break_what_the_checks_check(redis_conn) -> None:
    built = build(Plan(seed=5, unguarded=True, **SMALL))
    drain()
    problems = "\n".join(check(built, Log()).problems)
    assert "a lost update" in problems
    assert "a double booking" in problems
    assert "was not written by the holder of that fence" in problems
    assert "checker, run" in problems
    assert "no zombie incident happened" in problems


def test_a_guarded_run_without_faults_keeps_every_invariant(redis_conn) -> None:
    built = build(Plan(seed=5, **SMALL))
    drain()
    report = check(built, Log())
    assert report.problems == ["no zombie incident happened"]
    assert report.figures["operations"] >= SMALL["operations"]
