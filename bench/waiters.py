"""Many waiting long polls on one daphne process: its threads, its memory, and how soon
each waiter is answered when its holder lets go.

Run:  .venv/bin/python bench/waiters.py [--waiters 500] [--mode both] [--json FILE]
      [--server-root DIR]

One daphne process serving orchestrator.asgi, started by the bench on a database of
its own ($BENCH_DB, default ``orchestrator_bench_waiters``, created and migrated on
each run) and Redis ($BENCH_REDIS_URL, default redis://127.0.0.1:6379/10, emptied).
One team: a holder agent, and ``--waiters`` agents, one wait each (under the default
ORCHESTRATOR_MAX_WAITS_PER_AGENT). Two scenes, each with every waiter's long poll
(``GET /api/v1/lock-requests/{id}?wait=30``, one connection per waiter: asyncio and
httpx in this process) waiting at once:

* ``one-by-one``: the holder holds one resource per waiter (exclusive); each waiter's
  request is queued on its own. The holder releases them one after the other
  (``DELETE /locks/{id}`` over its own connection, each sent when the previous one
  was answered): the grant latency of a waiter is the time from its resource's
  release being sent to its poll's answer.
* ``burst``: the holder holds one resource exclusively; every waiter's request is for
  a shared lock on it, so that one release grants all of them in one transaction:
  the latency is from that release being sent to each answer.

While all of them wait (the server's wait slots on Redis count every waiter, and
the thread count has been steady for a second), the daphne process's thread count and
RSS are read from /proc/<pid>/status. Printed per scene: threads and RSS before the
waits and while they wait, the grant latency (p50, p99, max), daphne's CPU while the
waits are parked (cores, from /proc/<pid>/stat) and this client's CPU during the
releases (so that it is seen not to be the bottleneck), and the load average: the
machine may be shared (absolute figures depend on it).

``--server-root DIR`` serves daphne from another checkout (a git worktree of an older
commit, made by hand) with this bench, to compare code paths without a flag in the
product.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import served
from locks import recreate_database

from orchestrator.processes import Helper, HelperError, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB") or "orchestrator_bench_waiters"
REDIS_URL = os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/10"
WAIT = 30  # seconds each long poll may wait
SETTLE_DEADLINE = 120.0  # seconds for every waiter to be parked


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def proc_status(pid: int) -> dict[str, int]:
    """Threads and RSS (kB) of ``pid``, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of ``pid`` so far, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Scene:
    """The bench's setup for one scene: tokens, and what each waiter waits for."""

    name: str
    holder_token: str
    lock_ids: list[int]  # the holder's locks, in the order they are released
    waiters: list[tuple[str, int]]  # (token, request id), waiter i behind lock_ids[i] or [0]
    figures: dict[str, Any] = field(default_factory=dict)


def setup_django() -> None:
    os.environ.update(served.environment(BENCH_DB, REDIS_URL))
    import django

    django.setup()


def prepare(name: str, waiters: int) -> Scene:
    """A team, its holder and ``waiters`` agents with a queued request each."""
    from orchestrator.core.locks import lock_acquire
    from orchestrator.core.models import Agent, LockMode, Team
    from orchestrator.core.resources import resource_create
    from orchestrator.core.tokens import agent_token_reset

    team = Team.objects.create(name=f"bench-{name}", default_lease_ttl=600)
    holder = Agent.objects.create(name=f"{name}-holder", team=team)
    holder_token = agent_token_reset(agent=holder)
    burst = name == "burst"
    resources = [
        resource_create(name=f"{name}-doc-{i}", value={"n": 0}, team=team)
        for i in range(1 if burst else waiters)
    ]
    lock_ids = [lock_acquire(agent=holder, resource=res).lock.pk for res in resources]
    queued: list[tuple[str, int]] = []
    for i in range(waiters):
        agent = Agent.objects.create(name=f"{name}-waiter-{i}", team=team)
        result = lock_acquire(
            agent=agent,
            resource=resources[0 if burst else i],
            mode=LockMode.SHARED if burst else LockMode.EXCLUSIVE,
            wait=True,
        )
        assert result.status == "waiting", result.status
        queued.append((agent_token_reset(agent=agent), result.request.pk))
    return Scene(name, holder_token, lock_ids, queued)


def waits_on_redis() -> int:
    """How many wait slots the server holds on Redis now (core/wakeups.py)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    return sum(client.zcard(key) for key in client.scan_iter("orchestrator:waits:agent:*"))


async def run_scene(base: str, pid: int, scene: Scene, old_server: bool) -> None:
    import httpx

    before = proc_status(pid)
    answered: dict[int, float] = {}
    statuses: dict[int, str] = {}
    timeout = httpx.Timeout(WAIT + 30)
    # A client (a connection pool) per waiter: httpcore's pool looks at each of its
    # connections on every request's end, which with 500 in one pool costs this process
    # more CPU than the server spends answering.
    pollers = [
        httpx.AsyncClient(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        for token, _request_id in scene.waiters
    ]  # fmt: skip
    async with (
        contextlib.AsyncExitStack() as stack,
        httpx.AsyncClient(
            base_url=f"{base}/api/v1",
            headers={"Authorization": f"Bearer {scene.holder_token}"},
            timeout=timeout,
        ) as holder,
    ):
        for client in pollers:
            await stack.enter_async_context(client)

        async def poll(index: int, request_id: int) -> None:
            response = await pollers[index].get(
                f"/lock-requests/{request_id}", params={"wait": WAIT}
            )
            answered[index] = time.perf_counter()
            response.raise_for_status()
            statuses[index] = response.json()["status"]

        tasks = [
            asyncio.create_task(poll(i, request_id))
            for i, (_token, request_id) in enumerate(scene.waiters)
        ]
        parked_at = await parked(pid, len(scene.waiters), old_server, tasks)
        during = proc_status(pid)
        cpu_0, wall_0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(2.0)  # daphne's CPU while every wait is parked
        parked_cores = (cpu_seconds(pid) - cpu_0) / (time.perf_counter() - wall_0)

        # No collection of this process's heap (500 clients) in the middle of the answers.
        gc.collect()
        gc.disable()
        client_cpu_0, daphne_cpu_0 = cpu_seconds(), cpu_seconds(pid)
        released: list[float] = []
        release_ms: list[float] = []
        started = time.perf_counter()
        for lock_id in scene.lock_ids:
            released.append(time.perf_counter())
            response = await holder.delete(f"/locks/{lock_id}")
            release_ms.append(1000 * (time.perf_counter() - released[-1]))
            assert response.status_code == 204, response.text
        await asyncio.gather(*tasks)
        took = time.perf_counter() - started
        gc.enable()
        client_cores = (cpu_seconds() - client_cpu_0) / took
        daphne_cores = (cpu_seconds(pid) - daphne_cpu_0) / took

    assert set(statuses.values()) == {"granted"}, statuses
    latencies = [
        1000 * (answered[i] - released[0 if len(released) == 1 else i])
        for i in range(len(scene.waiters))
    ]
    scene.figures = {
        "waiters": len(scene.waiters),
        "parked_after_s": parked_at,
        "threads_before": before["Threads"],
        "threads_waiting": during["Threads"],
        "rss_before_mb": before["VmRSS"] / 1024,
        "rss_waiting_mb": during["VmRSS"] / 1024,
        "daphne_cores_parked": parked_cores,
        "grant_p50_ms": statistics.median(latencies),
        "grant_p99_ms": percentile(latencies, 0.99),
        "grant_max_ms": max(latencies),
        "releases_s": took,
        "daphne_cores_releasing": daphne_cores,
        "client_cores_releasing": client_cores,
        "release_p50_ms": statistics.median(release_ms),
        "latencies_ms": [round(value, 1) for value in latencies],
    }


async def parked(pid: int, count: int, old_server: bool, tasks: list[asyncio.Task]) -> float:
    """Seconds until every waiter's poll is parked in the server: all its wait slots
    taken (the old code has none: then once its thread count has risen by ``count``),
    and the thread count steady for a second."""
    began = time.perf_counter()
    base_threads = proc_status(pid)["Threads"]
    steady_since, last = time.perf_counter(), -1
    while time.perf_counter() - began < SETTLE_DEADLINE:
        for task in tasks:
            if task.done():
                task.result()  # a poll answered early: raise its error
                raise SystemExit("a poll was answered before its lock was released")
        threads = proc_status(pid)["Threads"]
        if threads != last:
            steady_since, last = time.perf_counter(), threads
        all_in = threads - base_threads >= count if old_server else waits_on_redis() >= count
        if all_in and time.perf_counter() - steady_since >= 1.0:
            return time.perf_counter() - began
        await asyncio.sleep(0.1)
    raise SystemExit(f"the {count} polls were not all parked after {SETTLE_DEADLINE:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--mode", choices=("one-by-one", "burst", "both"), default="both")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout daphne runs")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    old_server = args.server_root.resolve() != ROOT

    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    recreate_database(BENCH_DB)
    setup_django()
    names = ["one-by-one", "burst"] if args.mode == "both" else [args.mode]
    scenes = [prepare(name, args.waiters) for name in names]
    from django.db import connections

    connections.close_all()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ROOT / "build" / "logs" / "bench-waiters-daphne.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    env = {**served.environment(BENCH_DB, REDIS_URL), "PYTHONPATH": str(args.server_root)}
    daphne = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"{base}/healthz"), log=log, env=env,
        cwd=args.server_root, start_timeout=60, new_session=False,
    )  # fmt: skip
    try:
        daphne.start()
    except HelperError as exc:
        raise SystemExit(str(exc)) from None
    try:
        assert daphne.pid is not None
        for scene in scenes:
            asyncio.run(run_scene(base, daphne.pid, scene, old_server))
    finally:
        daphne.stop()

    one, five, _ = os.getloadavg()
    print(
        f"\n{args.waiters} waiting long polls on one daphne ({args.server_root}), "
        f"load average {one:.2f} / {five:.2f}, {os.cpu_count()} CPUs"
    )
    for scene in scenes:
        f = scene.figures
        print(
            f"  {scene.name:<10}  threads {f['threads_before']} -> {f['threads_waiting']} "
            f"while {f['waiters']} wait   RSS {f['rss_before_mb']:.0f} -> "
            f"{f['rss_waiting_mb']:.0f} MB   daphne parked {f['daphne_cores_parked']:.2f} cores\n"
            f"              grant p50 {f['grant_p50_ms']:.1f} ms   p99 {f['grant_p99_ms']:.1f} ms"
            f"   max {f['grant_max_ms']:.1f} ms   (a release's answer: median "
            f"{f['release_p50_ms']:.1f} ms; releases and answers {f['releases_s']:.2f} s; "
            f"daphne {f['daphne_cores_releasing']:.2f} cores, this client "
            f"{f['client_cores_releasing']:.2f} cores)"
        )
    if args.json:
        args.json.write_text(
            json.dumps({scene.name: scene.figures for scene in scenes}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
