"""The embedded SQLite mode loses no update either.

The laptop mode has no row locks (SQLite ignores ``select_for_update``);
``BEGIN IMMEDIATE`` takes the database's write lock at the start of every
transaction instead, so lock decisions are serialized all the same. The
pytest session itself runs on PostgreSQL, so this test runs everything in
child processes whose environment has no DATABASE_URL: the project's
settings then choose the embedded SQLite in ORCHESTRATOR_DATA_DIR.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.concurrency.checks import check_counter_history
from tests.concurrency.processes import SETTINGS_MODULE, Workers, context, run_workers

pytestmark = pytest.mark.slow

WORKERS = 2
CYCLES = 200


def sqlite_env(data_dir: Path) -> dict[str, str | None]:
    return {
        "DATABASE_URL": None,
        "ORCHESTRATOR_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
    }


def test_counter_on_embedded_sqlite_loses_no_update(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    child_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=settings.BASE_DIR,
        env=child_env,
        check=True,
        timeout=120,
    )
    assert (tmp_path / "orchestrator.sqlite3").exists()

    (setup,) = run_workers(
        "tests.concurrency.tasks:counter_setup",
        [{"agents": WORKERS, "counters": 1, "prefix": "lite"}],
        timeout=60,
        database_name=None,
        env=env,
    )
    assert setup["vendor"] == "sqlite"
    ctx = context()
    start = ctx.Barrier(WORKERS)
    wake_events = {agent_id: ctx.Event() for agent_id in setup["agent_ids"]}
    with Workers(database_name=None, env=env) as workers:
        for index, agent_id in enumerate(setup["agent_ids"]):
            workers.start(
                "tests.concurrency.tasks:counter_worker",
                agent_id=agent_id,
                resource_ids=setup["resource_ids"],
                cycles=CYCLES,
                seed=f"sqlite:{index}",
                ttl=30,
                start=start,
                wake_events=wake_events,
            )
        results = workers.results(timeout=90)
    (history,) = run_workers(
        "tests.concurrency.tasks:counter_history",
        [{"resource_ids": setup["resource_ids"]}],
        timeout=60,
        database_name=None,
        env=env,
    )

    outcomes = {key for r in results for key in r["outcomes"]}
    assert outcomes == {"write_applied", "release_released"}, results
    writes = check_counter_history(history, results)
    assert sum(writes.values()) == WORKERS * CYCLES
    print(
        f"\nSQLite: {WORKERS}x{CYCLES} cycles, writes {writes}, "
        f"queued {sum(r['queued'] for r in results)}"
    )
