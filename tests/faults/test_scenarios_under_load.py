"""The scenarios from the field, guarded, on 3 real RQ worker processes and the
monitor, while two busy processes load the machine's 2 cores and one worker is
SIGKILLed (in the middle of a step of an agent holding a lock, nearly always):
every run finishes, every agent is done, and check_run finds nothing wrong.

The booking case is issue 12's reproduction (``scenario booking --agents 8
--seed 11``, a worker killed 3 s in): booking agents whose slot was taken re-read
and retried the write while holding the slot's lock, and one whose lock ran out
meanwhile (its worker dead) started its count of retries over, until the run's
step limit ended it ``failed`` (2 runs out of 3 here, before the fix; the third
time the kill fell between two steps). The monitor runs as ``make run`` starts it:
a lost step is retried after ``agents.recovery.STALE_AFTER`` seconds without a
heartbeat, as long as a lease lasts, so the killed agent's lock runs out first.

The killed worker is not restarted. Waits are on conditions with deadlines, which
are liveness bounds; the one clock is the moment of the kill, the fault's schedule.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from agents.recovery import STALE_AFTER
from orchestrator.core.models import Agent, AgentStatus, Lock, Resource, Run, Step
from tests.faults.cluster import Cluster, orphan_guard, wait_for
from tests.faults.harness import STALE_AFTER as FAULT_STALE_AFTER
from tests.faults.harness import queues_on

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults, pytest.mark.slow]

WORKERS = 3
BUSY_LOOPS = 2  # one per core of the CI machine
KILL_AFTER = 3.0  # seconds into the run, as in the issue
RUN_DEADLINE = 300  # seconds: a liveness bound (a loaded 2-core machine is slow)


@contextlib.contextmanager
def busy_loops(count: int):
    """``count`` processes spinning on the CPU until the block ends."""
    loops = [
        subprocess.Popen(
            [*orphan_guard(), sys.executable, "-c", "while True: pass"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for loop in loops:
            with contextlib.suppress(ProcessLookupError):
                os.kill(loop.pid, signal.SIGKILL)
            loop.wait(10)


def lock_holder_at_work(cluster: Cluster, runs: list[Run]) -> tuple[int, int] | None:
    """(worker slot, step id) of a live worker running a step of one of ``runs``
    whose agent holds a lock, or None."""
    import redis
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    connection = redis.Redis.from_url(cluster.redis.url, socket_connect_timeout=2)
    holders = Lock.objects.filter(released_at__isnull=True).values("agent_id")
    running = Step.objects.filter(run__in=runs, status=Step.Status.RUNNING, agent_id__in=holders)
    for step_id, job_id in running.values_list("pk", "job_id"):
        try:
            slot = cluster.slot_of(Job.fetch(job_id, connection=connection).worker_name or "")
        except NoSuchJobError:
            continue
        if slot is not None and cluster.workers[slot].poll() is None:
            return slot, step_id
    return None


def half_done(runs: list[Run]) -> bool:
    """Whether half of the runs' agents (or more) are done."""
    agents = Agent.objects.filter(team__in=[run.team_id for run in runs])
    return 2 * agents.filter(status=AgentStatus.DONE).count() >= agents.count()


def workers_ready(cluster: Cluster) -> bool:
    """Whether every worker of the cluster has registered with Redis (it is listening)."""
    import redis
    from rq.worker import Worker

    connection = redis.Redis.from_url(cluster.redis.url, socket_connect_timeout=2)
    return set(cluster.names) <= {worker.name for worker in Worker.all(connection=connection)}


def scenario(*args: str) -> Run:
    out = StringIO()
    call_command("scenario", *args, stdout=out)
    return Run.objects.get(pk=int(out.getvalue().strip().splitlines()[-1]))


def under_load_with_a_worker_killed(
    logs: Path, *scenarios: tuple[str, ...], stale_after: float = STALE_AFTER
) -> list[Run]:
    """Start the scenarios once the workers listen, under load; kill a worker
    ``KILL_AFTER`` seconds into the runs, or earlier once half of their agents are
    done (so that the kill falls while they go on, however fast the machine): the
    worker of a lock holder at work, if one comes within 2 s, else any. Wait for every
    run to end and return them. A step cut off by the kill must have been retried."""
    cluster = Cluster(
        db=settings.DATABASES["default"], workers=WORKERS, logs=logs, stale_after=stale_after
    )
    with busy_loops(BUSY_LOOPS):
        cluster.start()
        try:
            wait_for(lambda: workers_ready(cluster), "the workers to listen", timeout=120)
            with queues_on(cluster.redis.url):
                runs = [scenario(*args) for args in scenarios]
            started = time.monotonic()
            wait_for(
                lambda: time.monotonic() - started >= KILL_AFTER or half_done(runs),
                "the moment to kill a worker",
                timeout=120,
            )
            try:  # the worker of a lock holder at work, if one comes soon; else any
                slot, step_id = wait_for(
                    lambda: lock_holder_at_work(cluster, runs), "a lock holder", timeout=2
                )
            except TimeoutError:
                slot, step_id = 0, None
            cluster.kill_worker(slot)
            cut_off = Step.objects.filter(pk=step_id, status=Step.Status.RUNNING).exists()
            wait_for(
                lambda: not Run.objects.filter(pk__in=[r.pk for r in runs], status="running"),
                "the runs to end",
                timeout=RUN_DEADLINE,
            )
        finally:
            cluster.stop()
    if cut_off:
        assert Step.objects.get(pk=step_id).attempts >= 2  # the monitor retried it
    for run in runs:
        run.refresh_from_db()
    return runs


def assert_finished_and_ok(run: Run, logs: Path) -> None:
    not_done = dict(
        Agent.objects.filter(team=run.team)
        .exclude(status=AgentStatus.DONE)
        .values_list("name", "status")
    )
    assert (run.status, not_done) == (Run.Status.FINISHED, {}), f"process logs: {logs}"
    out = StringIO()
    call_command("check_run", str(run.pk), "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] is True, report
    assert report["unfinished_agents"] == [] and not any(report["anomalies"].values())
    text = StringIO()
    call_command("check_run", str(run.pk), stdout=text)
    assert text.getvalue().strip().splitlines()[-1] == "OK"


def test_the_booking_finishes_under_load_with_a_worker_killed(tmp_path: Path) -> None:
    (run,) = under_load_with_a_worker_killed(tmp_path, ("booking", "--agents", "8", "--seed", "11"))
    assert_finished_and_ok(run, tmp_path)
    for slot in Resource.objects.filter(team=run.team):
        assert len(slot.value) <= 1, f"{slot.name} is double-booked: {slot.value}"


def test_the_pipeline_and_the_deadlock_finish_under_load_with_a_worker_killed(
    tmp_path: Path,
) -> None:
    runs = under_load_with_a_worker_killed(
        tmp_path,
        ("pipeline", "--agents", "8", "--seed", "11"),
        ("deadlock", "--agents", "8", "--seed", "11"),
        stale_after=FAULT_STALE_AFTER,  # the fault test's: 18 s less to wait for the retry
    )
    for run in runs:
        assert_finished_and_ok(run, tmp_path)
