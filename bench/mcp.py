"""An uncontended lock over MCP, beside the same lock over the HTTP API, on one daphne.

Run:  .venv/bin/python bench/mcp.py [--samples 200] [--rounds 5] [--json FILE]

One agent, one free resource, one daphne process serving orchestrator.asgi (the
project's ASGI application: the HTTP API under /api/v1/ and the MCP server at
/mcp/). Each sample is one acquire followed by one release of that resource,
timed from just before the acquire is sent to just after the release's answer
is read, by the client, in this process:

* mcp:  the official SDK's client (``streamable_http_client`` and a
        ``ClientSession``, initialized once), ``call_tool("acquire")`` then
        ``call_tool("release")``: two POST /mcp/ requests, JSON-RPC in JSON
        out (the server is stateless and answers in JSON).
* api:  the same HTTP client library (httpx2, one connection kept alive), POST
        /api/v1/locks then DELETE /api/v1/locks/{id}: the baseline.

The two take turns: ``--rounds`` rounds of ``--samples`` samples of each, the
order of the two flipped every round, so that a slow spell of the machine falls
on both alike; after a warm-up of 20 samples each. Printed: the median and p99
of each (all rounds together) in milliseconds, the ratio mcp/api of the
medians, and the spread of the per-round medians. Absolute figures depend on
the machine and its load (the load average is printed with them).

It uses its own database (``orchestrator_bench_mcp`` on the server of
DATABASE_URL, created and migrated on each run) and Redis database 9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import served
from locks import recreate_database

from orchestrator.processes import Helper, HelperError, free_port, http_ok

# This file is named mcp.py: its folder leaves the path, so that `import mcp` is the SDK.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "orchestrator_bench_mcp"
REDIS_URL = "redis://127.0.0.1:6379/9"
WARM_UP = 20
RESOURCE = "bench-doc"


def environment() -> dict[str, str]:
    return served.environment(BENCH_DB, REDIS_URL)


def prepare() -> str:
    """The agent's token, with the resource it locks (in the bench database)."""
    return served.bench_agent(BENCH_DB, REDIS_URL, RESOURCE, {"n": 0})


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(base: str, token: str, samples: int, rounds: int) -> dict[str, list[list[float]]]:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30, read=60)

    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as mcp_http,
        httpx2.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=timeout) as api,
        streamable_http_client(f"{base}/mcp/", http_client=mcp_http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def over_mcp() -> float:
            started = time.perf_counter()
            granted = await session.call_tool("acquire", {"resource": RESOURCE})
            lock_id = granted.structured_content["lock_id"]
            released = await session.call_tool("release", {"lock_id": lock_id})
            took = time.perf_counter() - started
            assert not granted.is_error and not released.is_error, released.content
            assert granted.structured_content["status"] == "granted"
            return took

        async def over_api() -> float:
            started = time.perf_counter()
            granted = await api.post("/locks", json={"resource": RESOURCE})
            released = await api.delete(f"/locks/{granted.json()['id']}")
            took = time.perf_counter() - started
            assert granted.status_code == 201 and released.status_code == 204, released.text
            return took

        doors = {"mcp": over_mcp, "api": over_api}
        for sample in doors.values():
            for _ in range(WARM_UP):
                await sample()
        results: dict[str, list[list[float]]] = {name: [] for name in doors}
        for round_number in range(rounds):
            order = list(doors) if round_number % 2 == 0 else list(reversed(doors))
            for name in order:
                results[name].append([1000 * await doors[name]() for _ in range(samples)])
            line = "  ".join(
                f"{name} {statistics.median(results[name][-1]):6.2f} ms" for name in doors
            )
            print(f"round {round_number + 1}/{rounds} (medians): {line}", flush=True)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per door per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    recreate_database(BENCH_DB)
    token = prepare()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ROOT / "build" / "logs" / "bench-mcp-daphne.log"
    log.unlink(missing_ok=True)
    daphne = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"{base}/healthz"), log=log, env=environment(), cwd=ROOT,
        start_timeout=60, new_session=False,
    )  # fmt: skip
    try:
        daphne.start()
    except HelperError as exc:
        raise SystemExit(str(exc)) from None
    try:
        results = asyncio.run(measure(base, token, args.samples, args.rounds))
    finally:
        daphne.stop()

    one, five, _ = os.getloadavg()
    print(
        f"\nuncontended acquire + release, {args.rounds} rounds x {args.samples} samples "
        f"per door, one daphne (load average {one:.2f} / {five:.2f}, {os.cpu_count()} CPUs)"
    )
    figures: dict[str, dict[str, float]] = {}
    for name, label in (("api", "HTTP API (baseline)"), ("mcp", "MCP")):
        every = [value for turn in results[name] for value in turn]
        medians = [statistics.median(turn) for turn in results[name]]
        figures[name] = {
            "median_ms": statistics.median(every),
            "p99_ms": percentile(every, 0.99),
            "round_median_low_ms": min(medians),
            "round_median_high_ms": max(medians),
        }
        f = figures[name]
        print(
            f"  {label:<20} median {f['median_ms']:6.2f} ms   p99 {f['p99_ms']:6.2f} ms   "
            f"(round medians {f['round_median_low_ms']:.2f}-{f['round_median_high_ms']:.2f})"
        )
    ratio = figures["mcp"]["median_ms"] / figures["api"]["median_ms"]
    print(f"  ratio mcp/api of the medians: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
