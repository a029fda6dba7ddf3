"""What the runtime's spans (agents/tracing.py) cost per step: off, and on.

Run:  .venv/bin/python bench/tracing.py [--steps 400] [--rounds 5] [--database NAME] [--redis URL]

1. The span calls alone, as one step makes them (a step span, a model call and three
   tool calls), in nanoseconds per step, beside the same loop without them: off (the
   shared no-op) and on (the SDK's TracerProvider, spans handed to an exporter that
   drops them, so the figure is recording, not export).
2. Whole steps in this process, ``run_step`` one after the other: bench/steps.py's python
   backend (no model latency) deciding acquire, write and release through the services, on
   PostgreSQL, in milliseconds per step, tracing off and on in turns (median of
   ``--rounds``). Run from a tree without the span calls, both figures are the runtime
   before them.

Uses its own database (created and migrated on each run; ``orchestrator_bench_tracing``
on the server of DATABASE_URL unless ``--database``) and Redis database 9 unless
``--redis``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locks import bench_database_url, recreate_database

CALLS = ("acquire", "write", "release")


def dropping_provider():
    """An SDK TracerProvider whose spans are recorded, then dropped by the exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return provider


class _Stub:
    """Stands for a step, its agent and a chat completion in the span-only loop."""

    pk = run_id = number = attempts = 1
    name = backend = "bench"
    config: dict = {}
    model = id = "bench-model"
    choices: list = []
    usage = None


def spans_only(number: int) -> dict[str, float]:
    """Nanoseconds per step of the span calls: without them, off, and on."""
    from agents import tracing

    stub, request, result = _Stub(), {"model": "bench-model"}, {"ok": True, "status": "x"}

    def bare() -> None:  # the loop of the steps' calls, with nothing in it
        for _name in CALLS:
            pass

    def traced() -> None:
        with tracing.agent_step(stub, stub) as step:
            with tracing.model_call(request, endpoint="http://127.0.0.1:1/v1") as call:
                call.response(stub)
            for name in CALLS:
                with tracing.tool_call(name, name) as tool:
                    tool.result(result)
            step.ended("done")

    provider = dropping_provider()
    figures = {}
    for label, on in (("without span calls", None), ("tracing off", False), ("tracing on", True)):
        if on is not None:
            tracing.configure(on, tracer_provider=provider)
        loop = bare if on is None else traced
        best = min(timeit.repeat(loop, number=number, repeat=5))
        figures[label] = best / number * 1e9
    tracing.configure(False)
    return figures


def step_ms(steps: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per whole step, tracing off and on in turns."""
    from agents import tracing
    from agents.runtime import run_start, run_step
    from orchestrator.core.models import Agent, Step, Team
    from orchestrator.core.resources import resource_create

    provider = dropping_provider()
    figures: dict[str, list[float]] = {"tracing off": [], "tracing on": []}
    for round_ in range(rounds):
        for label, on in (("tracing off", False), ("tracing on", True)):
            tracing.configure(on, tracer_provider=provider)
            team = Team.objects.create(name=f"bench-{round_}-{on}-{time.monotonic_ns()}")
            agent = Agent.objects.create(
                team=team, name=team.name, backend="python", config={"callable": "steps.decide"}
            )
            resource_create(team=team, name=f"bench-res-{agent.name}", value=0)
            run = run_start(team=team, goal="bench", max_steps=steps + 1, seed=1)
            began = time.perf_counter()
            for number in range(1, steps + 1):
                step_id = Step.objects.get(run=run, number=number).pk
                assert run_step(step_id) == "done"
            figures[label].append((time.perf_counter() - began) / steps * 1000)
    tracing.configure(False)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, in turns")
    parser.add_argument("--database", default="orchestrator_bench_tracing")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    recreate_database(args.database)
    os.environ.update({"DATABASE_URL": bench_database_url(args.database), "REDIS_URL": args.redis})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    import django_rq

    django_rq.get_queue("steps").connection.flushdb()  # the next steps, never run here
    print("span calls of one step (a step, a model call, three tool calls), ns per step:")
    for label, ns in spans_only(20000).items():
        print(f"  {label:<20} {ns:9.0f}")
    print(f"whole steps in this process (acquire, write, release), ms per step, median of "
          f"{args.rounds} x {args.steps} steps (lowest-highest):")  # fmt: skip
    for label, values in step_ms(args.steps, args.rounds).items():
        print(
            f"  {label:<20} {statistics.median(values):9.3f}  ({min(values):.3f}-{max(values):.3f})"
        )
    django_rq.get_queue("steps").connection.flushdb()


if __name__ == "__main__":
    main()
