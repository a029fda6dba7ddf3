"""Folder locks under contention: processes with their own database connections lock a
folder or files under it, exclusively, at random. A folder's holds never overlap a hold
of a file under it (nor two holds of one resource), and no increment is lost: the
team's path lock makes each decision see the other side's grants."""

from __future__ import annotations

import time

import pytest

from orchestrator.core.models import Conflict, Resource
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.checks import check_folder_holds
from tests.concurrency.processes import Workers, context

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKERS = 6
CYCLES = 40
FILES = 3
DEADLINE = 240  # liveness only


def test_a_folder_and_the_files_under_it_are_never_held_at_once() -> None:
    team = factories.team(default_lease_ttl=60)
    agent_ids = [factories.agent(team_=team, name=f"path-{i}").pk for i in range(WORKERS)]
    folder = resource_create(team=team, name="src/", value=0)
    files = [resource_create(team=team, name=f"src/f{i}.py", value=0) for i in range(FILES)]
    ctx = context()
    start = ctx.Barrier(WORKERS)
    wake_events = {agent_id: ctx.Event() for agent_id in agent_ids}
    began = time.monotonic()
    with Workers() as workers:
        for index, agent_id in enumerate(agent_ids):
            workers.start(
                "tests.concurrency.tasks:path_worker",
                agent_id=agent_id,
                folder_id=folder.pk,
                file_ids=[f.pk for f in files],
                cycles=CYCLES,
                seed=f"paths:{index}",
                ttl=60,
                start=start,
                wake_events=wake_events,
            )
        while not workers.poll(timeout=1.0):
            assert time.monotonic() - began < DEADLINE, "path workers did not finish"
            monitor_sweep()
        results = workers.results(timeout=10)

    outcomes = {key for r in results for key in r["outcomes"]}
    assert outcomes == {"write_applied", "release_released"}, results
    holds = check_folder_holds(folder.pk, [f.pk for f in files])
    for res in Resource.objects.filter(pk__in=holds):
        written = sum(r["writes"].get(res.pk, 0) for r in results)
        assert (res.value, res.version) == (written, written)  # no lost update
    assert sum(len(v) for v in holds.values()) == WORKERS * CYCLES
    assert len(holds[folder.pk]) > 0 and all(holds[f.pk] for f in files)
    assert not Conflict.objects.exists()
    print(
        f"\n{WORKERS}x{CYCLES} folder/file locks in {time.monotonic() - began:.1f}s: "
        f"folder held {len(holds[folder.pk])} times, files {[len(holds[f.pk]) for f in files]}"
    )
