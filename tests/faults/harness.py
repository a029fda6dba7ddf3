"""A fault run from start to verdict: shared by tests/faults/test_faults.py (short)
and bench/faults.py (long).

``run_faults`` starts a private Redis, the workers and the monitor (cluster.py),
builds and starts the seeded workload (workload.py), lets the nemesis strike on
its seeded schedule (nemesis.py) while restarting any process that died on its
own, waits for the runs to end, stops every process it started and checks the
invariants (checks.py). Waits are on conditions with deadlines; the only sleeps
are the nemesis's own pauses and the polling interval.

Operations are the tool calls acquire, read, write and release recorded in the
steps' journals (refused calls included; a call replayed from the journal after
a crash counts once). The nemesis strikes at fractions of the planned operations;
progress is measured by steps created (one scripted call per step).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checks import Report, check
from tests.faults.cluster import Cluster
from tests.faults.nemesis import Fault, Log, Nemesis, schedule
from tests.faults.workload import Built, Plan, build

STALE_AFTER = 12.0  # the monitor retries a running step after this long without a heartbeat


@dataclass
class Outcome:
    plan: Plan
    built: Built
    faults: list[Fault]
    log: Log
    report: Report
    elapsed: float
    unplanned_exits: int
    logs: Path
    timeline: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.report.problems

    def figures(self) -> dict[str, Any]:
        figures = dict(self.report.figures)
        figures["seed"] = self.plan.seed
        figures["run time (s)"] = round(self.elapsed, 1)
        figures["operations per second"] = round(figures["operations"] / self.elapsed, 1)
        figures["other process exits"] = self.unplanned_exits
        return figures

    def summary(self) -> str:
        """The figures and the nemesis's timeline, for people."""
        f = self.figures()
        faults = ", ".join(f"{kind} {n}" for kind, n in f["faults injected"].items())
        lines = [
            f"seed {f['seed']}: {f['operations']} operations "
            f"({', '.join(f'{k} {v}' for k, v in f['operations by tool'].items())}) "
            f"in {f['steps']} steps, {f['run time (s)']} s ({f['operations per second']}/s)",
            f"faults injected: {faults}; zombie attempts aborted: {f['zombie attempts aborted']}; "
            f"other process exits: {f['other process exits']}",
            f"stale writes rejected: {f['stale writes rejected']} "
            f"(zombie writes rejected: {f['zombie writes rejected']}); "
            f"steps retried: {f['steps retried']} "
            f"(steps run more than once: {f['steps run more than once']})",
            f"writes applied: {f['writes applied']} (slots booked: {f['slots booked']}); "
            f"calls refused: {json.dumps(f['calls refused'])}; "
            f"agents that gave up: {f['agents that gave up']}; "
            f"leases expired: {f['leases expired']} (longest wait behind an expired lease: "
            f"{f['longest wait behind an expired lease (s)']} s); "
            f"checker anomalies: {json.dumps(f['checker anomalies'])}",
            "nemesis:",
            *(f"  {line}" for line in self.timeline),
        ]
        if self.problems:
            lines += ["PROBLEMS:", *(f"  {problem}" for problem in self.problems)]
        else:
            lines.append("every invariant holds")
        return "\n".join(lines)


@contextlib.contextmanager
def queues_on(redis_url: str) -> Iterator[None]:
    """Enqueue from this process to ``redis_url`` (the private Redis) while inside."""
    from django.test import override_settings

    from agents import jobs

    config = {"URL": redis_url, "DEFAULT_TIMEOUT": 600}
    # The runtime keeps one queue per process (agents.jobs.steps_queue): forget it
    # on the way in and out, so that it is built for the Redis in force.
    jobs._queue = (0, None)
    try:
        with override_settings(RQ_QUEUES={"steps": config, "default": config}):
            yield
    finally:
        jobs._queue = (0, None)


def _progress(built: Built) -> tuple[int, bool]:
    """(steps created so far, whether every run has ended)."""
    from orchestrator.core.models import Run, Step

    steps = Step.objects.filter(run_id__in=built.runs).count()
    running = Run.objects.filter(pk__in=built.runs, status="running").exists()
    return steps, not running


def _open_steps(built: Built) -> str:
    from orchestrator.core.models import Step

    rows = (
        Step.objects.filter(run_id__in=built.runs)
        .exclude(status__in=["done", "failed"])
        .values_list("pk", "status", "agent_id", "attempts", "job_id")[:10]
    )
    return "open steps: " + ", ".join(
        f"#{pk} {status} (agent {agent}, attempts {attempts}, job {job})"
        for pk, status, agent, attempts, job in rows
    )


def _drive(
    plan: Plan,
    built: Built,
    cluster: Cluster,
    nemesis: Nemesis,
    faults: list[Fault],
    deadline: float,
    progress: Any,
) -> str:
    """Strike each fault when its point in the run comes, restarting processes that
    died on their own; wait for the runs to end. '' if they did, else the open steps
    at the deadline."""
    shown = 0

    def tick() -> bool:
        nonlocal shown
        cluster.supervise()
        if progress is not None:
            for line in nemesis.log.lines[shown:]:
                progress(line)
            shown = len(nemesis.log.lines)
        return time.monotonic() < deadline

    for fault in faults:
        while tick():
            done, ended = _progress(built)
            if ended or done >= fault.at * plan.operations:
                break
            time.sleep(0.05)
        else:
            return _open_steps(built)
        if ended:
            nemesis.note(f"not injected (the runs had ended): {fault}")
            continue
        nemesis.note(f"{fault.kind} at {done} steps")
        nemesis.strike(fault)
    while tick():
        if _progress(built)[1]:
            tick()
            return ""
        time.sleep(0.1)
    return _open_steps(built)


def run_faults(
    plan: Plan,
    *,
    db: dict,
    workers: int,
    kills: int,
    zombies: int,
    logs: Path,
    timeout: float,
    progress: Any = None,
    redis_port: int | None = None,
) -> Outcome:
    """One fault run (see the module docstring). ``db`` is the Django settings of the
    database the processes use; ``timeout`` bounds the whole run; ``progress`` is
    called with each line of the nemesis's timeline as it happens; the private Redis
    listens on ``redis_port`` (default: a free port)."""
    cluster = Cluster(
        db=db, workers=workers, logs=logs, stale_after=STALE_AFTER, redis_port=redis_port
    )
    faults = schedule(plan.seed, workers=workers, kills=kills, zombies=zombies)
    started = time.monotonic()
    deadline = started + timeout
    cluster.start()
    try:
        with queues_on(cluster.redis.url):
            built = build(plan)
        nemesis = Nemesis(cluster, zombie_agents=built.zombie_agents, started=started)
        late = _drive(plan, built, cluster, nemesis, faults, deadline, progress)
    finally:
        cluster.stop()
    elapsed = time.monotonic() - started
    report = check(built, nemesis.log)
    if late:
        report.problems.insert(0, f"the runs did not end within {timeout:.0f}s: {late}")
    return Outcome(
        plan=plan,
        built=built,
        faults=faults,
        log=nemesis.log,
        report=report,
        elapsed=elapsed,
        unplanned_exits=cluster.unplanned_exits,
        logs=logs,
        timeline=nemesis.log.lines,
    )
