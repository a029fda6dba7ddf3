"""Lock sets end to end: the ``transfers`` scenario on three real RQ worker processes.

Twelve scripted tellers make two transfers each between four accounts, each naming
its pair in its own order (the orders cross, as in the ``deadlock`` scenario), and
each locking both in one ``acquire_all``. Steps run truly in parallel; a waiting set
goes on in whichever worker commits the release that frees its resource, and wakes
its teller's step there. The wait-for graph is swept all along (as the monitor
would) to catch any cycle that formed; the monitor's other duties (lost jobs, lost
continuations) are left out, so that nothing papers over a lost wake-up.

Every teller finishes, no deadlock is ever found, every transfer is applied exactly
once (each balance is its opening plus its transfers, and the sum is unchanged), and
check_run finds nothing wrong. Waits are on conditions with deadlines (liveness
bounds), never sleeps.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from agents.scenarios import OPENING_BALANCE, TRANSFERS_PER_TELLER
from orchestrator.core.deadlocks import deadlock_sweep
from orchestrator.core.models import Agent, Conflict, Lock, LockSet, Resource, Run
from tests.agents.test_crash import run_state, start_worker, stop_workers
from tests.concurrency.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKERS = 3
TELLERS = 12
RUN_DEADLINE = 240  # seconds: a liveness bound (a loaded 2-core machine is slow)


def scenario(*args: str) -> Run:
    out = StringIO()
    call_command("scenario", *args, stdout=out)
    return Run.objects.get(pk=int(out.getvalue().strip().splitlines()[-1]))


def expected_balances(run: Run) -> dict[str, int]:
    """Each account's opening balance plus every debit and credit of the tellers' scripts."""
    balances = {res.name: OPENING_BALANCE for res in Resource.objects.filter(team=run.team)}
    for agent in Agent.objects.filter(team=run.team):
        for entry in agent.config["script"]:
            if entry["tool"] == "write":
                balances[entry["args"]["resource"]] += entry["args"]["value"]["$inc"]
    return balances


def test_tellers_on_real_workers_cross_their_orders_and_never_deadlock(
    redis_conn, tmp_path: Path
) -> None:
    run = scenario("transfers", "--agents", str(TELLERS), "--seed", "3")
    accounts = Resource.objects.filter(team=run.team)
    assert accounts.count() == 4
    connection.close()  # the workers and this test share the database, not a connection

    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    workers = [start_worker("agents.worker.SimpleStepWorker", log) for log in logs]
    found_cycles: list[int] = []
    try:

        def run_ended() -> bool:
            found_cycles.extend(deadlock_sweep().detected)
            run.refresh_from_db()
            return run.status != Run.Status.RUNNING

        try:
            wait_until(run_ended, what="the run to end", timeout=RUN_DEADLINE, interval=0.1)
        except TimeoutError as timed_out:
            tails = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
            raise AssertionError(f"{timed_out}\n{run_state(run)}\nworker logs:\n{tails}") from None
    finally:
        stop_workers(workers)

    assert run.status == Run.Status.FINISHED, run_state(run)
    assert found_cycles == []
    assert not Conflict.objects.filter(team=run.team, kind="deadlock").exists()
    balances = {res.name: res.value for res in accounts}
    assert balances == expected_balances(run)
    assert sum(balances.values()) == 4 * OPENING_BALANCE
    sets = LockSet.objects.filter(agent__team=run.team)
    assert sets.count() == TELLERS * TRANSFERS_PER_TELLER  # one per transfer: none retried
    assert set(sets.values_list("status", flat=True)) == {"granted"}
    assert sets.filter(requests__isnull=False).exists()  # some sets did wait for others
    assert not Lock.objects.filter(resource__team=run.team, released_at__isnull=True).exists()
    out = StringIO()
    call_command("check_run", str(run.pk), "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] is True, report["details"]
