"""Scale-out on one machine: two daphne processes and four workers, one PostgreSQL, one Redis.

Run:  .venv/bin/python bench/scaleout.py [--seconds 8] [--rounds 2] [--clients 8] [--hot 0.1]

Lock cycles over the HTTP API, each in two requests: ``POST /api/v1/locks``
(``wait: true``; its grant carries the value and version; when queued, the client
long-polls ``GET /lock-requests/{id}?wait=10``), then ``PUT /api/v1/resources/{name}``
with the fence, the version and ``release: true``. ``--clients`` client processes,
one agent each, each on resources of its own, and a share ``--hot`` of their
cycles on two hot resources that every client contends for. Measured in turns,
``--rounds`` times each (the median is printed, the spread beside it):

* **one daphne**: every client against daphne A (B runs, idle);
* **two daphnes**: half of the clients against A, half against B: each one's
  throughput and the sum, and the sum's ratio to one daphne alone;
* **workers alone**: four ``rqworker`` processes (the Procfile's class) running
  agent steps (a python backend, acquire then write with release, 16 agents,
  no model latency), no HTTP load;
* **everything at once**: the two daphnes under the clients and the four workers
  running steps, together.

Beside each figure: the CPU each group of processes used (daphne A, daphne B,
the workers, the clients, the PostgreSQL backends of the bench database, the rest
of PostgreSQL, Redis) and the machine's busy cores, so that the bottleneck is
visible. At the end every counter is checked (value == version: no lost update)
and no lock is left live.

Uses its own database (``orchestrator_bench``, or ``$BENCH_DB``) and Redis
(``$BENCH_REDIS_URL``, default database 9). The default run takes about two minutes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cpu
import steps
from locks import (
    BENCH_DB,
    READY,
    api_acquire,
    api_client,
    bench_database_url,
    recreate_database,
    start_web,
)

OWN_RESOURCES = 50  # per client
HOT = ("hot-0", "hot-1")
STEP_AGENTS = 16


def client(index: int, base: str, token: str, hot: float, seconds: float, start, out) -> None:
    """Lock cycles in two requests until the deadline: (cycles, latencies in ms)."""
    rng = random.Random(index)
    call = api_client(base, token, timeout=60)
    own = [f"c{index}-{i}" for i in range(OWN_RESOURCES)]
    for _ in range(3):  # warm up the server's code paths and pooled connections
        call("GET", f"/api/v1/resources/{own[0]}")
    out.put(READY)
    start.wait()
    done, latencies, deadline = 0, [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        name = rng.choice(HOT) if rng.random() < hot else rng.choice(own)
        lock = api_acquire(call, name)  # its grant carries the value and version
        write = {
            "value": lock["value"] + 1,
            "expected_version": lock["version"],
            "fence": lock["fence"],
            "release": True,
        }
        status, written = call("PUT", f"/api/v1/resources/{name}", write)
        assert status == 200 and written["released"], (status, written)
        done += 1
        latencies.append((time.perf_counter() - began) * 1000)
    out.put((index, done, latencies))


def free_port_pair() -> int:
    """A port p with p and p + 1 both free on the loopback."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65000:
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise SystemExit("no two free consecutive ports")


def prepare(clients: int) -> list[str]:
    """The team, the clients' agents and resources, the hot ones; their tokens."""
    from orchestrator.core.models import Agent, Resource, ResourceVersion, Team
    from orchestrator.core.tokens import agent_token_reset

    team = Team.objects.create(name="scaleout", default_lease_ttl=30)
    names = [*HOT, *(f"c{c}-{i}" for c in range(clients) for i in range(OWN_RESOURCES))]
    resources = Resource.objects.bulk_create(Resource(name=n, value=0, team=team) for n in names)
    ResourceVersion.objects.bulk_create(
        ResourceVersion(resource=r, version=0, value=0) for r in resources
    )
    tokens = []
    for c in range(clients):
        agent = Agent.objects.create(name=f"client-{c}", team=team)
        tokens.append(agent_token_reset(agent=agent, actor="bench"))
    return tokens


def drive(bases: list[str], tokens: list[str], hot: float, seconds: float, measure):
    """Clients against ``bases`` (client i on bases[i % len]): cycles/s per base, the
    client latencies, and what ``measure`` (a CpuMeter given the clients' pids) saw."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=client, args=(i, bases[i % len(bases)], token, hot, seconds, start, out))
        for i, token in enumerate(tokens)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        assert out.get(timeout=120) == READY
    meter = measure([p.pid for p in processes])
    meter.start()
    began = time.monotonic()
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in processes]
    elapsed = time.monotonic() - began
    used = meter.stop()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a client failed (exit code {process.exitcode})")
    per_base = [0.0] * len(bases)
    latencies = []
    for index, done, times in results:
        per_base[index % len(bases)] += done / elapsed
        latencies += times
    return per_base, latencies, used


def steps_done(team) -> int:
    from orchestrator.core.models import Step

    return Step.objects.filter(run__team=team, status=Step.Status.DONE).count()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spread(values: list[float]) -> str:
    return f"[{min(values):.0f}-{max(values):.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8, help="client processes (agents)")
    parser.add_argument("--hot", type=float, default=0.1, help="share of cycles on 2 hot ones")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    recreate_database()
    os.environ.update({"DATABASE_URL": bench_database_url(), "REDIS_URL": steps.REDIS_URL})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    import django_rq

    from agents.runs import run_cancel
    from agents.runtime import run_start
    from orchestrator.core.models import Lock, Resource

    django_rq.get_queue("steps").connection.flushdb()
    tokens = prepare(args.clients)
    step_team, _ = steps.team_with_agents("steps", "two", STEP_AGENTS)
    port = free_port_pair()
    daphnes = start_web(port, 2)
    workers = steps.start_workers(args.workers)
    bases = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    print(
        f"{cpu.CORES} cores; database {BENCH_DB}, Redis {steps.REDIS_URL}; 2 daphnes "
        f"(:{port}, :{port + 1}), {args.workers} workers, {args.clients} client processes, "
        f"{args.hot:.0%} of cycles on 2 hot resources; {args.seconds:g} s x {args.rounds} rounds",
        flush=True,
    )

    def groups(clients: list[int]) -> cpu.CpuMeter:
        return cpu.CpuMeter(
            {
                "daphne A": cpu.fixed([daphnes[0].pid]),
                "daphne B": cpu.fixed([daphnes[1].pid]),
                "workers": cpu.fixed(w.pid for w in workers),
                "clients": cpu.fixed(clients),
                "postgres (bench db)": cpu.postgres_backends(BENCH_DB),
                "postgres (rest)": cpu.postgres_others(BENCH_DB),
                "redis": cpu.redis_server,
            }
        )

    figures: dict[str, list] = {k: [] for k in ("one", "two", "steps", "all")}
    run = None
    try:
        for _ in range(args.rounds):
            one, lat1, cpu1 = drive(bases[:1], tokens, args.hot, args.seconds, groups)
            figures["one"].append((one[0], lat1, cpu1))
            two, lat2, cpu2 = drive(bases, tokens, args.hot, args.seconds, groups)
            figures["two"].append((two, lat2, cpu2))
            # The workers: a run of agent steps, alone, then under the HTTP load.
            run = run_start(team=step_team, goal="bench", max_steps=1_000_000, seed=1)
            while steps_done(step_team) < STEP_AGENTS:  # every agent has taken a step
                time.sleep(0.05)
            meter = groups([])
            before, began = steps_done(step_team), time.monotonic()
            meter.start()
            time.sleep(args.seconds)
            rate = (steps_done(step_team) - before) / (time.monotonic() - began)
            figures["steps"].append((rate, meter.stop()))
            before, began = steps_done(step_team), time.monotonic()
            both, lat3, cpu3 = drive(bases, tokens, args.hot, args.seconds, groups)
            rate = (steps_done(step_team) - before) / (time.monotonic() - began)
            figures["all"].append((both, rate, lat3, cpu3))
            run_cancel(run_id=run.pk)
            run = None
            deadline = time.monotonic() + 60  # the steps in flight end
            while django_rq.get_queue("steps").started_job_registry.count:
                if time.monotonic() > deadline:
                    raise SystemExit("steps still running a minute after the cancel")
                time.sleep(0.05)
    finally:
        if run is not None:
            run_cancel(run_id=run.pk)
        steps.stop_workers(workers)
        for daphne in daphnes:
            daphne.terminate()
            daphne.wait(10)

    def lat(values: list[float]) -> str:
        return f"p50 {percentile(values, 0.5):.0f} ms, p99 {percentile(values, 0.99):.0f} ms"

    ones = [f[0] for f in figures["one"]]
    sums = [sum(f[0]) for f in figures["two"]]
    one, total = statistics.median(ones), statistics.median(sums)
    print(f"\none daphne          {one:6.1f} cycles/s {spread(ones)}")
    print(f"  {lat(figures['one'][-1][1])}; CPU, cores: {cpu.describe(figures['one'][-1][2])}")
    a = statistics.median(f[0][0] for f in figures["two"])
    b = statistics.median(f[0][1] for f in figures["two"])
    print(
        f"two daphnes         A {a:6.1f} + B {b:6.1f} = {total:6.1f} cycles/s {spread(sums)}   "
        f"ratio to one daphne {total / one:4.2f}"
    )
    print(f"  {lat(figures['two'][-1][1])}; CPU, cores: {cpu.describe(figures['two'][-1][2])}")
    rates = [f[0] for f in figures["steps"]]
    print(
        f"{args.workers} workers alone     {statistics.median(rates):6.1f} steps/s {spread(rates)}"
    )
    print(f"  CPU, cores: {cpu.describe(figures['steps'][-1][1])}")
    alls = [sum(f[0]) for f in figures["all"]]
    step_rates = [f[1] for f in figures["all"]]
    print(
        f"everything at once  API {statistics.median(alls):6.1f} cycles/s {spread(alls)} "
        f"+ steps {statistics.median(step_rates):6.1f}/s {spread(step_rates)}"
    )
    print(f"  {lat(figures['all'][-1][2])}; CPU, cores: {cpu.describe(figures['all'][-1][3])}")
    bad = [r.name for r in Resource.objects.exclude(team=step_team) if r.value != r.version]
    assert not bad, f"lost updates on {bad[:5]}"
    live = Lock.objects.filter(released_at__isnull=True).exclude(agent__team=step_team).count()
    assert not live, f"{live} client locks left live"
    cycles = sum(Resource.objects.exclude(team=step_team).values_list("version", flat=True))
    print(f"checked: {cycles} client cycles, every counter == its version, no lock left live")


if __name__ == "__main__":
    main()
