"""Fault injection: 8 real RQ worker processes run scripted agents on shared counters
and slots while a seeded nemesis kills workers, stalls a lock holder past its lease
(a zombie writer), restarts Redis and kills the monitor; then every invariant of
tests/faults/checks.py must hold. The longer version is bench/faults.py.

The seed comes from FAULT_SEED (default 1), so that a failure can be replayed
with the same fault schedule: ``FAULT_SEED=7 pytest tests/faults``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from tests.faults.harness import run_faults
from tests.faults.workload import Plan

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults, pytest.mark.slow]

SEED = int(os.environ.get("FAULT_SEED", "1"))
OPERATIONS = 5000
WORKERS = 8


def test_invariants_hold_under_a_seeded_nemesis() -> None:
    logs = Path(tempfile.mkdtemp(prefix=f"faults-{SEED}-"))
    outcome = run_faults(
        Plan(seed=SEED, operations=OPERATIONS),
        db=settings.DATABASES["default"],
        workers=WORKERS,
        kills=3,
        zombies=2,
        logs=logs,
        timeout=600,  # a liveness bound: a loaded machine is slow, a hang never ends
    )
    print(outcome.summary())  # the figures, shown with -s or on failure
    figures = outcome.figures()
    assert not outcome.problems, f"{outcome.summary()}\nprocess logs: {logs}"
    assert figures["operations"] >= OPERATIONS
    injected = figures["faults injected"]
    assert injected["kill_worker"] == 3 and injected["zombie"] >= 1
    assert injected["restart_redis"] == 1 and injected["kill_monitor"] == 1
    assert figures["zombie writes rejected"] >= 1
    shutil.rmtree(logs)  # kept when the test fails: the processes' own logs
