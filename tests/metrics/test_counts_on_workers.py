"""After scripted runs on two real RQ worker processes, /metrics holds the runs' true
numbers, added up over both workers and this test process, each with its own files in
one Prometheus directory (the test's own).

Three runs at once:

* ``deadlock`` (4 clerks in crossing pairs): lock waits, deadlocks detected and broken by
  the team's policy;
* ``booking`` (6 guests, about two per slot): version conflicts, refused by policy;
* a lease that runs out: an agent locks ``doc``, then waits for ``gate``, which this
  test holds; its lease on ``doc`` runs out while it waits (the test sweeps, as the
  monitor would), and once the test lets ``gate`` go, its write to ``doc`` carries the
  dead lock's token and is refused (stale fence); the agent takes ``doc`` again.

This process creates the runs, holds and releases ``gate`` (a grant here, and the grant
of the waiting agent's request), and sweeps (expiries, deadlocks); the workers run the
steps. Every figure is compared with the database after the runs ended: grants with the
Lock rows, waits with the granted requests, expiries and refusals with their events,
conflicts with their rows' occurrences, steps with their rows. Waits are conditions with
deadlines, never sleeps.
"""

from __future__ import annotations

import os
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from agents.scenarios import AgentPlan, Plan, plan_start, scenario_prefix
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Conflict,
    Event,
    Lock,
    LockRequest,
    Run,
    Step,
    Team,
)
from orchestrator.core.monitor import monitor_sweep
from tests import factories
from tests.agents.test_crash import run_state, start_worker, stop_workers
from tests.concurrency.processes import wait_until
from tests.metrics.scrape import Samples, parse, scrape, value

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RUN_DEADLINE = 240  # seconds: a liveness bound (a loaded 2-core machine is slow)
LEASE = 3  # seconds: the lease run team's TTL


def scenario(*args: str) -> Run:
    out = StringIO()
    call_command("scenario", *args, stdout=out)
    return Run.objects.get(pk=int(out.getvalue().strip().splitlines()[-1]))


def lease_run() -> tuple[Run, str, str]:
    """The run whose agent's lease on ``doc`` runs out while it waits for ``gate``."""
    prefix = scenario_prefix("lease")
    doc, gate = f"{prefix}-doc", f"{prefix}-gate"
    write = {"resource": doc, "value": {"$inc": 1}, "expected_version": "$version"}
    plan = Plan(
        goal="Update doc once the gate is yours.",
        resources={doc: 0, gate: 0},
        agents=[
            AgentPlan(
                name=f"{prefix}-writer",
                role="You update doc, behind the gate.",
                script=[
                    {"tool": "acquire", "args": {"resource": doc}},
                    {"tool": "read", "args": {"resource": doc}},
                    {"tool": "acquire", "args": {"resource": gate}},
                    {"tool": "write", "args": write},
                    {"tool": "release", "args": {"resource": gate}},
                    {"tool": "release", "args": {"resource": doc}},
                    {"tool": "finish", "args": {"summary": "doc updated"}},
                ],
            )
        ],
    )
    started = plan_start(plan=plan, prefix=prefix, seed=1)
    Team.objects.filter(pk=started.team.pk).update(default_lease_ttl=LEASE)
    return started.run, doc, gate


def by_process(directory: Path, scratch: Path) -> dict[str, Samples]:
    """The counters of each process that wrote to ``directory``, by its identifier."""
    found = {}
    for counters in sorted(directory.glob("counter_*.db")):
        alone = scratch / counters.stem
        alone.mkdir(parents=True)
        shutil.copy(counters, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        found[counters.stem.removeprefix("counter_")] = parse(generate_latest(registry).decode())
    return found


def test_counters_hold_the_runs_numbers_summed_over_two_workers_and_this_process(
    redis_conn, metrics_token: str, metrics_dir: Path, tmp_path: Path
) -> None:
    runs = [scenario("deadlock", "--agents", "4", "--seed", "1")]
    runs.append(scenario("booking", "--agents", "6", "--seed", "2"))
    lease, doc, gate = lease_run()
    runs.append(lease)
    teams = [run.team_id for run in runs]
    gatekeeper = factories.agent(team_=lease.team, name=f"{lease.team.name}-gatekeeper")
    held = lock_acquire(agent=gatekeeper, resource=gate, ttl=600).lock
    connection.close()  # the workers and this test share the database, not a connection

    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [start_worker("agents.worker.SimpleStepWorker", log) for log in logs]
    try:

        def swept(condition):
            def check() -> bool:
                monitor_sweep()  # as the monitor would: expiries, grants, deadlocks
                return condition()

            return check

        def doc_expired() -> bool:
            return Event.objects.filter(kind="lock.expired", payload__resource=doc).exists()

        def runs_ended() -> bool:
            return not Run.objects.filter(pk__in=[r.pk for r in runs], status="running").exists()

        try:
            wait_until(swept(doc_expired), what="doc's lease to run out", timeout=RUN_DEADLINE)
            lock_release(lock_id=held.pk, agent=gatekeeper)
            wait_until(swept(runs_ended), what="the runs to end", timeout=RUN_DEADLINE)
        except TimeoutError as timed_out:
            states = "\n".join(run_state(run) for run in runs)
            tails = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
            raise AssertionError(f"{timed_out}\n{states}\nworker logs:\n{tails}") from None
    finally:
        stop_workers(workers)  # SIGTERM (their warm shutdown), a liveness bound, then SIGKILL

    statuses = set(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True))
    assert statuses <= {"finished", "failed"}, statuses
    samples = scrape()

    # Grants: one Lock row each, by mode; a queued request's wait: one granted request each.
    locks = Lock.objects.filter(resource__team__in=teams)
    for mode in ("exclusive", "shared"):
        grants = value(samples, "orchestrator_lock_grants_total", mode=mode)
        assert grants == locks.filter(mode=mode).count(), mode
    assert value(samples, "orchestrator_lock_grants_total", mode="exclusive") > 0
    waits = LockRequest.objects.filter(resource__team__in=teams, status="granted")
    assert value(samples, "orchestrator_lock_wait_seconds_count") == waits.count() > 0
    waited = [
        event.payload["waited"]
        for event in Event.objects.filter(kind="lock.granted", team__in=teams)
        if "waited" in event.payload
    ]
    assert len(waited) == waits.count()
    assert value(samples, "orchestrator_lock_wait_seconds_sum") == pytest.approx(sum(waited))

    # Expiries and stale-fence refusals: their events (and the refusals' conflicts).
    expired = Event.objects.filter(kind="lock.expired", team__in=teams).count()
    assert value(samples, "orchestrator_lease_expired_total") == expired >= 1
    stale = Event.objects.filter(
        kind="write.rejected", team__in=teams, payload__error="stale_fence"
    ).count()
    assert value(samples, "orchestrator_fencing_rejections_total") == stale >= 1
    stale_conflicts = Conflict.objects.filter(team__in=teams, kind="stale_fence")
    assert stale_conflicts.aggregate(n=Sum("occurrences"))["n"] == stale

    # Version conflicts: every one, repeats included (their rows' occurrences).
    conflicts = Conflict.objects.filter(team__in=teams, kind="write_conflict")
    occurrences = conflicts.aggregate(n=Sum("occurrences"))["n"] or 0
    assert value(samples, "orchestrator_write_conflicts_total") == occurrences >= 1

    # Deadlocks: each detected once, each ended by the policy or dissolved.
    deadlocks = Conflict.objects.filter(team__in=teams, kind="deadlock")
    assert value(samples, "orchestrator_deadlocks_total", resolution="detected") == (
        deadlocks.count()
    )
    assert deadlocks.count() >= 1
    broken = Event.objects.filter(kind="deadlock.broken", team__in=teams)
    assert value(samples, "orchestrator_deadlocks_total", resolution="policy") == broken.count()
    assert value(samples, "orchestrator_deadlocks_total", resolution="operator") == 0
    dissolved = Event.objects.filter(
        kind="conflict.resolved", team__in=teams, payload__kind="deadlock"
    ).count()
    assert value(samples, "orchestrator_deadlocks_total", resolution="dissolved") == dissolved
    assert value(samples, "orchestrator_deadlocks_open") == 0
    assert not deadlocks.filter(status="open").exists()

    # Steps: every one that ended, with its time.
    steps = Step.objects.filter(
        run__in=runs, status__in=["done", "failed"], started_at__isnull=False
    )
    assert value(samples, "orchestrator_step_duration_seconds_count", backend="scripted") == (
        steps.count()
    )
    total = sum((s.finished_at - s.started_at).total_seconds() for s in steps)
    assert value(
        samples, "orchestrator_step_duration_seconds_sum", backend="scripted"
    ) == pytest.approx(total)
    assert value(samples, "orchestrator_approvals_pending") == 0
    assert value(samples, "orchestrator_queue_jobs", queue="steps") == redis_conn.llen(
        "rq:queue:steps"
    )

    # The totals are the sums of three processes' files: both workers and this test.
    processes = by_process(metrics_dir, tmp_path / "by-process")
    pids = {str(worker.pid) for worker in workers}
    assert pids < set(processes), sorted(processes)
    here = next(name for name in processes if name.startswith(f"{os.getpid()}-"))
    assert set(processes) == pids | {here}
    grants = {
        name: value(found, "orchestrator_lock_grants_total", mode="exclusive")
        for name, found in processes.items()
    }
    assert all(grants[pid] > 0 for pid in pids), grants
    assert grants[here] >= 2  # the gate's two grants: to the test, then to the waiting agent
    assert sum(grants.values()) == value(
        samples, "orchestrator_lock_grants_total", mode="exclusive"
    )
