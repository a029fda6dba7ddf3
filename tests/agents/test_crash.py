"""A real RQ worker is killed with SIGKILL in the middle of a step: the run still
completes, and no update is lost or applied twice. Both worker classes: the forking
one (the worker and its work horse are killed) and the default in-process one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from agents.recovery import recover_steps
from agents.runtime import run_start
from agents.scenarios import increment_script
from orchestrator.core.models import Lock, LockRequest, Resource, Run, Step
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.processes import wait_until
from tests.databases import database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = increment_script("counter")
AGENTS, ROUNDS = 4, 4


WORKER_CLASSES = ["agents.worker.StepWorker", "agents.worker.SimpleStepWorker"]


def start_worker(worker_class: str, log: Path | None = None) -> subprocess.Popen:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": database_url(db),
        "REDIS_URL": settings.REDIS_URL,
    }
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "steps", "--worker-class", worker_class],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log:
            out.close()


def stop_workers(workers: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM each worker's process group (a warm shutdown: a job in hand is finished),
    wait up to ``timeout`` seconds in all (a liveness bound: a loaded 2-core machine can
    take more than 10 s to finish a step), then SIGKILL what is left."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)


def run_state(run: Run) -> str:
    """The run's steps, locks and waiting requests, for a failure message."""
    steps = Step.objects.filter(run=run).order_by("agent_id", "number")
    lines = [f"run {run.pk}: {Run.objects.get(pk=run.pk).status}"]
    lines += [
        f"  step {s.pk} agent {s.agent_id} #{s.number} {s.status} attempts={s.attempts} "
        f"error={s.error[:120]!r}"
        for s in steps
    ]
    lines += [
        f"  lock {lock.pk} agent {lock.agent_id} expires {lock.expires_at:%H:%M:%S.%f}"
        for lock in Lock.objects.filter(released_at__isnull=True)
    ]
    lines += [
        f"  request {r.pk} agent {r.agent_id} {r.status} since {r.requested_at:%H:%M:%S.%f}"
        for r in LockRequest.objects.filter(status="waiting")
    ]
    return "\n".join(lines)


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (RQ puts its work horse in a session of its
    own, so killing the worker's process group would spare the horse)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_hard(worker: subprocess.Popen) -> None:
    """SIGKILL the worker and its work horse at once, as a machine crash would."""
    for pid in [worker.pid, *descendants(worker.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(10)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigkill_mid_step_then_the_run_completes_exactly(
    redis_conn, worker_class: str, tmp_path: Path
) -> None:
    team = factories.team(default_lease_ttl=30)
    resource_create(team=team, name="counter", value=0)
    for i in range(AGENTS):
        factories.agent(
            team_=team,
            name=f"crash-{i}",
            backend="scripted",
            config={"script": SCRIPT * ROUNDS, "think": [0.05, 0.15], "seed": i},
        )
    run = run_start(team=team, goal="count through a crash", seed=11)
    victims: list[int] = []
    for _ in range(5):  # until the kill lands inside a step (nearly always the first time)
        worker = start_worker(worker_class)
        try:
            wait_until(
                lambda: Step.objects.filter(run=run, status="running").exists(),
                what="a running step",
                timeout=90,
                interval=0.02,
            )
            kill_hard(worker)
        finally:
            if worker.poll() is None:
                kill_hard(worker)
        # Steps still running now were cut off mid-step: their worker is gone.
        victims = list(Step.objects.filter(run=run, status="running").values_list("pk", flat=True))
        if victims:
            break
    assert victims, "the worker was never killed in the middle of a step"
    assert Resource.objects.get(name="counter").version < AGENTS * ROUNDS
    connection.close()

    log = tmp_path / "survivor.log"
    survivor = start_worker(worker_class, log)
    try:

        def recovered_and_done() -> bool:
            monitor_sweep()  # what the monitor does: leases, waiters, deadlocks,
            recover_steps(stale_after=1)  # and every few seconds the lost steps
            run.refresh_from_db()
            return run.status != Run.Status.RUNNING

        # A liveness bound, not a timing: a forked horse per step is slow on a loaded
        # 2-core machine (one CI run took more than 120 s here with a fault test beside it).
        try:
            wait_until(
                recovered_and_done, what="the run to end after recovery", timeout=300, interval=0.2
            )
        except TimeoutError as timed_out:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{timed_out}\n{run_state(run)}\nworker log:\n{tail}") from None
    finally:
        os.killpg(survivor.pid, signal.SIGTERM)
        survivor.wait(10)

    assert run.status == Run.Status.FINISHED
    counter = Resource.objects.get(name="counter")
    assert (counter.value, counter.version) == (AGENTS * ROUNDS, AGENTS * ROUNDS)
    assert Step.objects.filter(pk__in=victims, attempts__gte=2).count() == len(victims)
    assert Step.objects.filter(pk__in=victims, status="done").count() == len(victims)
