"""Agent steps per second through the whole runtime, beside no-op RQ jobs on the same workers.

Run:  .venv/bin/python bench/steps.py [--steps 300] [--noop 600]

A step here is one full agent turn on real RQ worker processes: the job is
claimed, the backend (a python backend, no model latency) decides three tool
calls, and acquire, write and release run through the coordination services,
then the next step is enqueued. Each agent works on its own resource, so the
figure is the runtime's own cost, not contention. The baseline is the same
number of workers running no-op jobs (``builtins.abs``) from the same queue.
Both RQ worker classes are measured: the default forking ``Worker`` (a fork per
job, what the Procfile runs) and ``SimpleWorker`` (jobs in the worker process).

Uses its own database (``orchestrator_bench``) and Redis database 9.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locks import bench_database_url, recreate_database

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/9"
AGENTS = 8


def decide(context):  # the python backend of the bench agents
    """One step: acquire, write the step number, release (finish after the last)."""
    from agents.backends import Decision, ToolCall

    name = f"bench-res-{context.agent}"
    n = context.step_number
    return Decision(
        tool_calls=[
            ToolCall(f"a{n}", "acquire", {"resource": name}),
            ToolCall(f"w{n}", "write", {"resource": name, "value": n}),
            ToolCall(f"r{n}", "release", {"resource": name}),
        ]
    )


def env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(),
        "REDIS_URL": REDIS_URL,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
    }


def workers(count: int, worker_class: str) -> list[subprocess.Popen]:
    command = [sys.executable, "manage.py", "rqworker", "steps", "--burst"]
    command += ["--worker-class", worker_class]
    return [
        subprocess.Popen(
            command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(count)
    ]


def noop_rate(jobs: int, count: int, worker_class: str) -> float:
    import django_rq

    queue = django_rq.get_queue("steps")
    queue.connection.flushdb()
    for _ in range(jobs):
        queue.enqueue_call(func="builtins.abs", args=(1,))
    began = time.monotonic()
    for process in workers(count, worker_class):
        process.wait()
    return jobs / (time.monotonic() - began)


def steps_rate(steps_per_agent: int, count: int, worker_class: str) -> float:
    import django_rq

    from agents.runtime import run_start
    from orchestrator.core.models import Agent, Run, Step, Team
    from orchestrator.core.resources import resource_create

    django_rq.get_queue("steps").connection.flushdb()
    tag = f"{worker_class.rsplit('.', 1)[-1]}-{count}-{time.monotonic_ns()}"
    team = Team.objects.create(name=f"bench-{tag}")
    for i in range(AGENTS):
        agent = Agent.objects.create(
            team=team,
            name=f"{tag}-{i}",
            backend="python",
            config={"callable": "steps.decide"},
        )
        resource_create(team=team, name=f"bench-res-{agent.name}", value=0)
    run = run_start(team=team, goal="bench", max_steps=steps_per_agent, seed=1)
    began = time.monotonic()
    processes = workers(count, worker_class)
    deadline = began + 600
    while Run.objects.get(pk=run.pk).status == Run.Status.RUNNING:
        if all(p.poll() is not None for p in processes):  # a burst worker found it idle
            processes = workers(count, worker_class)
        if time.monotonic() > deadline:
            raise SystemExit("the run did not finish in 10 minutes")
        time.sleep(0.05)
    elapsed = time.monotonic() - began
    for process in processes:
        process.wait()
    done = Step.objects.filter(run=run, status=Step.Status.DONE).count()
    assert Run.objects.get(pk=run.pk).status == Run.Status.FAILED  # max_steps, never finish
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per agent (8 agents)")
    parser.add_argument("--noop", type=int, default=400, help="no-op jobs per measurement")
    parser.add_argument(
        "--classes",
        default="agents.worker.StepWorker,agents.worker.SimpleStepWorker",
        help="comma-separated RQ worker classes",
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--plot", type=Path, help="draw the figures into this PNG (docs/benchmarks/steps.png)"
    )
    args = parser.parse_args()
    recreate_database()
    os.environ.update({"DATABASE_URL": bench_database_url(), "REDIS_URL": REDIS_URL})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    labels, noops, stepss = [], [], []
    for worker_class in args.classes.split(","):
        for count in map(int, args.workers.split(",")):
            noop = noop_rate(args.noop, count, worker_class)
            steps = steps_rate(args.steps, count, worker_class)
            label = f"{worker_class.rsplit('.', 1)[-1]}, {count} worker{'s' if count > 1 else ''}"
            print(
                f"{label:<26} no-op jobs {noop:7.1f}/s   agent steps {steps:7.1f}/s   "
                f"ratio {steps / noop:4.2f}",
                flush=True,
            )
            labels.append(label)
            noops.append(noop)
            stepss.append(steps)
    if args.plot:
        from plot import grouped_bars

        grouped_bars(
            args.plot,
            title="Agent steps per second on real RQ workers (acquire, write, release per step)",
            groups=labels,
            series={"no-op RQ jobs (baseline)": noops, "agent steps": stepss},
            ratios=[s / n for s, n in zip(stepss, noops, strict=True)],
            ratio_label="agent steps / no-op jobs",
            target=0.5,
            unit="per second",
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
