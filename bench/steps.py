"""Agent steps: the runtime's overhead per step, and steps per second with 1, 2, 4 workers.

Run:  .venv/bin/python bench/steps.py [--calls 200] [--steps 30] [--workers 1,2,4]
                                      [--cycles two,three] [--plot PNG]

A step here is one full agent turn: the job is claimed, the backend (a python
backend, no model latency) decides its tool calls, they run through the
coordination services, the journal records them and the next step is enqueued.
Each agent works on its own resource, so the figures are the runtime's own
cost, not contention. Two cycles (``--cycles``):

* ``two``:   acquire, then write with ``release: true`` (the write and the
             release in one transaction: two commits for the lock cycle);
* ``three``: acquire, write, release (three commits).

1. **Overhead per step, in this process** (steady state, RQ logging off, one
   in-process worker of the Procfile's class, ``SimpleStepWorker``, running
   ``--calls`` jobs of each kind in a burst):

   * a no-op RQ job (``builtins.abs``): RQ's own cost per job;
   * the lock cycle's coordination calls made directly (``lock_acquire``,
     ``resource_write``, ``lock_release``: what any client of the services pays);
   * a step with no tool call: the runtime's fixed cost;
   * a step making the cycle's calls.

   The overhead a user pays per step is the step minus the no-op job; the part
   of it that is the runtime's own (claim, decision saved, journal, next
   enqueue, the tool layer) is that minus the direct calls.

2. **Steps per second with 1, 2 and 4 worker processes** (real ``rqworker``
   processes, the Procfile's class, started and idle before the run is), with
   16 agents so that 4 workers always have work queued, and the CPU each group of
   processes used meanwhile (workers, the PostgreSQL backends of the bench
   database, the rest of PostgreSQL, Redis, this process) beside the machine's busy
   cores: where the scaling stops, and which process holds the cores.

Uses its own database (``orchestrator_bench``, or ``$BENCH_DB``) and Redis
(``$BENCH_REDIS_URL``, default database 9 of the local Redis). The default run
takes about two minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cpu
from locks import BENCH_DB, bench_database_url, recreate_database

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
WORKER_CLASS = "agents.worker.SimpleStepWorker"  # settings.RQ["WORKER_CLASS"], the Procfile's
AGENTS = 16  # per run: 4 workers always find a step queued
CYCLES = {
    "empty": "no tool call",
    "two": "acquire, write(release=true)",
    "three": "acquire, write, release",
}


def decide(context):  # the python backend of the bench agents
    """One step: the cycle named by the agent's options, on the agent's own resource."""
    from agents.backends import Decision, ToolCall

    name = f"bench-res-{context.agent}"
    n = context.step_number
    cycle = context.config.get("options", {}).get("cycle", "three")
    if cycle == "empty":
        return Decision(tool_calls=[])
    calls = [ToolCall(f"a{n}", "acquire", {"resource": name})]
    if cycle == "two":
        calls.append(ToolCall(f"w{n}", "write", {"resource": name, "value": n, "release": True}))
    else:
        calls.append(ToolCall(f"w{n}", "write", {"resource": name, "value": n}))
        calls.append(ToolCall(f"r{n}", "release", {"resource": name}))
    return Decision(tool_calls=calls)


def env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(),
        "REDIS_URL": REDIS_URL,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
    }


def team_with_agents(tag: str, cycle: str, count: int):
    """A team of ``count`` python agents doing ``cycle``, each with its own resource."""
    from orchestrator.core.models import Agent, Team
    from orchestrator.core.resources import resource_create

    team = Team.objects.create(name=f"bench-{tag}")
    agents = []
    for i in range(count):
        agent = Agent.objects.create(
            team=team,
            name=f"{tag}-{i}",
            backend="python",
            config={"callable": "steps.decide", "options": {"cycle": cycle}},
        )
        resource_create(team=team, name=f"bench-res-{agent.name}", value=0)
        agents.append(agent)
    return team, agents


def finished_run(run) -> int:
    """The number of steps done in ``run``, checked to have ended on max_steps."""
    from orchestrator.core.models import Lock, Run, Step

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED, run.status  # max_steps: the agents never finish
    failed = Step.objects.filter(run=run).exclude(status=Step.Status.DONE).count()
    assert not failed, f"{failed} steps of the run did not end done"
    live = Lock.objects.filter(agent__team=run.team, released_at__isnull=True).count()
    assert not live, f"{live} locks left live by the run"
    return Step.objects.filter(run=run, status=Step.Status.DONE).count()


# 1. Overhead per step, in this process


def in_process_worker():
    """The Procfile's worker class, in this process, without RQ's command channel
    (its pub/sub thread's stop takes up to a second at the end of a burst)."""
    import django_rq

    from agents.worker import SimpleStepWorker

    class BenchWorker(SimpleStepWorker):
        def subscribe(self) -> None:
            pass

        def unsubscribe(self) -> None:
            pass

    queues = [django_rq.get_queue("steps")]
    return BenchWorker(queues, connection=queues[0].connection)


def noop_ms(jobs: int) -> float:
    import django_rq

    queue = django_rq.get_queue("steps")
    for _ in range(jobs):
        queue.enqueue_call(func="builtins.abs", args=(1,))
    began = time.perf_counter()
    in_process_worker().work(burst=True, logging_level="WARNING")
    return (time.perf_counter() - began) * 1000 / jobs


def direct_ms(cycles: int, cycle: str) -> float:
    """The coordination calls of one cycle made directly (no runtime, no RQ)."""
    from orchestrator.core.locks import lock_acquire, lock_release
    from orchestrator.core.resources import resource_write

    _, (agent,) = team_with_agents(f"direct-{cycle}-{time.monotonic_ns()}", cycle, 1)
    name = f"bench-res-{agent.name}"
    began = time.perf_counter()
    for n in range(cycles):
        granted = lock_acquire(agent=agent, resource=name)
        written = resource_write(
            agent=agent,
            resource=name,
            value=n,
            expected_version=granted.resource.version,
            fence=granted.lock.token,
            release=cycle == "two",
        )
        assert written.status == "applied", written.detail
        if cycle == "three":
            lock_release(lock_id=granted.lock.pk, agent=agent)
    return (time.perf_counter() - began) * 1000 / cycles


def step_ms(steps: int, cycle: str) -> float:
    """Steps of ``cycle`` by one in-process worker: ``steps`` in all, over 4 agents."""
    from agents.runtime import run_start

    count = 4
    team, _ = team_with_agents(f"inproc-{cycle}-{time.monotonic_ns()}", cycle, count)
    run = run_start(team=team, goal="bench", max_steps=steps // count, seed=1)
    began = time.perf_counter()
    in_process_worker().work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - began
    return elapsed * 1000 / finished_run(run)


def overhead(calls: int, cycles: list[str], rounds: int) -> dict[str, float]:
    """Each kind ``rounds`` times, in turns (a slow spell of a shared machine falls on
    all kinds alike); the medians, in ms."""
    import django_rq

    django_rq.get_queue("steps").connection.flushdb()
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    kinds = {"noop": lambda: noop_ms(calls), "empty": lambda: step_ms(calls, "empty")}
    for cycle in cycles:
        kinds[f"direct-{cycle}"] = lambda cycle=cycle: direct_ms(calls, cycle)
        kinds[f"step-{cycle}"] = lambda cycle=cycle: step_ms(calls, cycle)
    # Warm up: connections, prepared statements, imports.
    noop_ms(20)
    step_ms(8, "empty")
    for cycle in cycles:
        direct_ms(10, cycle)
        step_ms(8, cycle)
    measured: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, measure in kinds.items():
            measured[kind].append(measure())
    f = {kind: statistics.median(values) for kind, values in measured.items()}

    def ms(kind: str) -> str:
        return f"{f[kind]:6.2f} ms [{min(measured[kind]):.1f}-{max(measured[kind]):.1f}]"

    print(f"In this process, one {WORKER_CLASS}, {calls} of each x {rounds} rounds (median):")
    print(f"  no-op RQ job                           {ms('noop')}")
    print(
        f"  step with no tool call                 {ms('empty')}   "
        f"the runtime's fixed cost per step {f['empty'] - f['noop']:5.2f} ms"
    )
    for cycle in cycles:
        step, direct = f[f"step-{cycle}"], f[f"direct-{cycle}"]
        print(
            f"  step {CYCLES[cycle]:<33} {ms(f'step-{cycle}')}\n"
            f"      overhead per step {step - f['noop']:5.2f} ms (step - no-op job) = "
            f"the calls made directly {ms(f'direct-{cycle}')} + the runtime's own "
            f"{step - f['noop'] - direct:5.2f} ms",
            flush=True,
        )
    return f


# 2. Steps per second with 1, 2, 4 worker processes


def start_workers(count: int) -> list[subprocess.Popen]:
    """``count`` rqworker processes on the steps queue, idle and registered."""
    import django_rq
    from rq import Worker

    command = [sys.executable, "manage.py", "rqworker", "steps", "--worker-class", WORKER_CLASS]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(count)
    ]
    connection = django_rq.get_queue("steps").connection
    deadline = time.monotonic() + 60
    while Worker.count(connection=connection) < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            stop_workers(processes)
            raise SystemExit("the workers did not start")
        time.sleep(0.05)
    return processes


def stop_workers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # warm shutdown
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def meter(workers: list[subprocess.Popen]) -> cpu.CpuMeter:
    return cpu.CpuMeter(
        {
            "workers": cpu.fixed(p.pid for p in workers),
            "postgres (bench db)": cpu.postgres_backends(BENCH_DB),
            "postgres (rest)": cpu.postgres_others(BENCH_DB),
            "redis": cpu.redis_server,
            "bench": cpu.fixed([os.getpid()]),
        }
    )


def noop_rate(jobs: int, workers: list[subprocess.Popen]) -> float:
    import django_rq

    queue = django_rq.get_queue("steps")
    done = queue.finished_job_registry.count + jobs
    began = time.monotonic()
    for _ in range(jobs):
        queue.enqueue_call(func="builtins.abs", args=(1,))
    while queue.finished_job_registry.count < done:
        if any(p.poll() is not None for p in workers):
            raise SystemExit("a worker exited")
        time.sleep(0.01)
    return jobs / (time.monotonic() - began)


def steps_rate(steps_per_agent: int, cycle: str, workers: list[subprocess.Popen]):
    from agents.runtime import run_start
    from orchestrator.core.models import Run

    team, _ = team_with_agents(f"w{len(workers)}-{cycle}-{time.monotonic_ns()}", cycle, AGENTS)
    cores = meter(workers)
    cores.start()
    began = time.monotonic()
    run = run_start(team=team, goal="bench", max_steps=steps_per_agent, seed=1)
    deadline = began + 300
    while Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the run did not finish in 5 minutes")
        if any(p.poll() is not None for p in workers):
            raise SystemExit("a worker exited")
        time.sleep(0.02)
    elapsed = time.monotonic() - began
    used = cores.stop()
    return finished_run(run) / elapsed, used


def scaling(counts: list[int], cycles: list[str], steps: int, noops: int, rounds: int):
    """Steps/s for each worker count and cycle, ``rounds`` times in turns: the median
    (of two rounds, the higher), with the CPU of that round."""
    print(f"\nReal worker processes ({WORKER_CLASS}), {AGENTS} agents x {steps} steps:")
    measured: dict[tuple[int, str], list] = {}
    noop_rates: dict[int, list[float]] = {}
    for _ in range(rounds):
        for count in counts:
            processes = start_workers(count)
            try:
                noop_rates.setdefault(count, []).append(noop_rate(noops, processes))
                for cycle in cycles:
                    measured.setdefault((count, cycle), []).append(
                        steps_rate(steps, cycle, processes)
                    )
            finally:
                stop_workers(processes)
    rows = []
    for count in counts:
        noop = statistics.median(noop_rates[count])
        for cycle in cycles:
            runs = sorted(measured[count, cycle], key=lambda r: r[0])
            rate, used = runs[len(runs) // 2]
            rates = [r for r, _ in runs]
            rows.append((count, cycle, rate, noop, used))
            label = f"{count} worker{'s' if count > 1 else ''}"
            print(
                f"  {label:<10} {CYCLES[cycle]:<30} steps {rate:6.1f}/s "
                f"[{min(rates):.0f}-{max(rates):.0f}]   (no-op jobs {noop:6.1f}/s)\n"
                f"             CPU, cores: {cpu.describe(used)}",
                flush=True,
            )
    for cycle in cycles:
        base = next(rate for count, c, rate, _, _ in rows if c == cycle)
        speedups = [f"{count}: {rate / base:.2f}x" for count, c, rate, _, _ in rows if c == cycle]
        print(f"  speed-up over 1 worker, {CYCLES[cycle]}: {', '.join(speedups)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="jobs of each kind, in process")
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds, in turns")
    parser.add_argument("--worker-rounds", type=int, default=2, help="worker rounds, in turns")
    parser.add_argument("--steps", type=int, default=20, help=f"steps per agent ({AGENTS} agents)")
    parser.add_argument("--noop", type=int, default=400, help="no-op jobs per worker count")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--cycles", default="two,three", help="two, three or both")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--plot", type=Path, help="draw the worker scaling into this PNG")
    args = parser.parse_args()
    cycles = [c for c in args.cycles.split(",") if c]
    assert set(cycles) <= {"two", "three"}, cycles
    recreate_database()
    os.environ.update({"DATABASE_URL": bench_database_url(), "REDIS_URL": REDIS_URL})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    import django_rq

    django_rq.get_queue("steps").connection.flushdb()
    print(f"{cpu.CORES} cores; database {BENCH_DB}, Redis {REDIS_URL}")
    if not args.skip_overhead:
        overhead(args.calls, cycles, args.rounds)
    if args.skip_workers:
        return
    counts = [int(c) for c in args.workers.split(",")]
    rows = scaling(counts, cycles, args.steps, args.noop, args.worker_rounds)
    if args.plot:
        from plot import grouped_bars

        cycle = cycles[0]
        picked = [row for row in rows if row[1] == cycle]
        grouped_bars(
            args.plot,
            title=f"Agent steps per second on real RQ workers ({CYCLES[cycle]} per step)",
            groups=[f"{count} worker{'s' if count > 1 else ''}" for count, *_ in picked],
            series={
                "no-op RQ jobs": [noop for *_, noop, _ in picked],
                "agent steps": [rate for _, _, rate, _, _ in picked],
            },
            ratios=[rate / picked[0][2] for _, _, rate, _, _ in picked],
            ratio_label="agent steps / agent steps with 1 worker",
            target=1.0,
            unit="per second",
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
