"""What orchestrator-guard adds to an edit, uncontended, beside two baselines.

Run:  .venv/bin/python bench/guard.py [--samples 40] [--rounds 5] [--json FILE]

One agent, one git repository with one file, one daphne process serving
orchestrator.asgi. Each guard sample is the hook cycle of one edit, each hook a
process of its own started as Claude Code starts it (the console script, the
hook's JSON on stdin, timed from just before the process is spawned to just
after it has exited):

* pre (take):     PreToolUse on the file, whose lock is free: one acquire;
* pre (confirm):  PreToolUse again, as for a second edit in the same turn;
* post:           PostToolUse: the new hash written with the lock's fence;
* stop:           Stop: the lock released.

Baselines, in the same run and interleaved with it:

* python:  ``python -c pass``, the cost of starting the interpreter (of this
           virtual environment, whose site packages any hook pays for too);
* http:    one acquire plus one release over the HTTP API from a warm httpx
           client in this process (two round trips, no process start).

Rounds take turns, the order flipped every round, so that a slow spell of the
machine falls on all alike; after a warm-up. Printed: median and p99 of each in
milliseconds, the ratios of the guard's to the baselines', and the CPU time of a
``pre (take)`` process beside ``python``'s (which load does not inflate). Absolute
figures depend on the machine and its load (printed with them). The client's
bytecode is compiled first, as an install compiles it. It uses its own
database (``orchestrator_bench_guard`` on the server of DATABASE_URL, created
and migrated on each run) and the Redis of BENCH_REDIS_URL (database 9).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import served
from locks import recreate_database

from orchestrator.processes import Helper, HelperError, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "orchestrator_bench_guard"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
GUARD = Path(sys.executable).with_name("orchestrator-guard")
WARM_UP = 5
FILE = "src/app.py"


def environment() -> dict[str, str]:
    return served.environment(BENCH_DB, REDIS_URL)


def prepare() -> str:
    """The agent's token, with the resource it locks (in the bench database)."""
    return served.bench_agent(BENCH_DB, REDIS_URL, "bench-doc", 0)


def make_repo(folder: Path) -> Path:
    repo = folder / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / FILE).write_text("print('hello')\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - started)


def children_cpu() -> float:
    """CPU seconds (user + system) of the child processes that have exited so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed_process(run: Callable[[], None], cpu: list[float]) -> float:
    """The wall time of ``run`` (one child process), its CPU time appended to ``cpu``."""
    before = children_cpu()
    took = timed(run)
    cpu.append(1000 * (children_cpu() - before))
    return took


def measure(base: str, token: str, repo: Path, state: Path, samples: int, rounds: int):
    import httpx

    env = {
        **os.environ,
        "ORCHESTRATOR_URL": base,
        "ORCHESTRATOR_TOKEN": token,
        "ORCHESTRATOR_GUARD_STATE_DIR": str(state),
    }
    path = repo / FILE
    common = {
        "session_id": "bench",
        "transcript_path": "/tmp/bench.jsonl",
        "cwd": str(repo),
        "permission_mode": "default",
    }
    pre = json.dumps({
        **common, "hook_event_name": "PreToolUse", "tool_name": "Edit",
        "tool_input": {"file_path": str(path), "old_string": "a", "new_string": "b"},
        "tool_use_id": "toolu_bench",
    })  # fmt: skip
    post = json.dumps({
        **common, "hook_event_name": "PostToolUse", "tool_name": "Edit",
        "tool_input": {"file_path": str(path), "old_string": "a", "new_string": "b"},
        "tool_response": {"filePath": str(path)}, "tool_use_id": "toolu_bench",
    })  # fmt: skip
    stop = json.dumps({**common, "hook_event_name": "Stop", "stop_hook_active": False})

    def hook(payload: str) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(
                [str(GUARD)], input=payload, env=env, capture_output=True, text=True
            )
            if done.returncode != 0 or done.stdout:
                raise SystemExit(f"the guard refused or warned: {done.stderr}{done.stdout}")

        return run

    def python_start() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"})

    def http_round_trips() -> None:
        granted = api.post("/locks", json={"resource": "bench-doc"})
        released = api.delete(f"/locks/{granted.json()['id']}")
        assert granted.status_code == 201 and released.status_code == 204, released.text

    counter = iter(range(10**9))
    cpu: dict[str, list[float]] = {"pre (take)": [], "python": []}

    def edit_cycle() -> dict[str, float]:
        took = {
            "pre (take)": timed_process(hook(pre), cpu["pre (take)"]),
            "pre (confirm)": timed(hook(pre)),
        }
        path.write_text(f"print({next(counter)})\n")
        took["post"] = timed(hook(post))
        took["stop"] = timed(hook(stop))
        return took

    kinds = {
        "guard": edit_cycle,
        "python": lambda: {"python": timed_process(python_start, cpu["python"])},
        "http": lambda: {"http": timed(http_round_trips)},
    }
    for sample in kinds.values():
        for _ in range(WARM_UP):
            sample()
    results: dict[str, list[list[float]]] = {}
    for round_number in range(rounds):
        order = list(kinds) if round_number % 2 == 0 else list(reversed(kinds))
        for kind in order:
            for _ in range(samples):
                for name, value in kinds[kind]().items():
                    results.setdefault(name, [[] for _ in range(rounds)])[round_number].append(
                        value
                    )
        line = "  ".join(
            f"{n} {statistics.median(r[round_number]):.1f}" for n, r in results.items()
        )
        print(f"round {round_number + 1}/{rounds} (medians, ms): {line}", flush=True)
    api.close()
    return results, cpu


def compile_client() -> None:
    """Write the client's bytecode, as ``pip install`` does: in an editable install run
    with PYTHONDONTWRITEBYTECODE, every hook would compile its modules again."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("orchestrator_client")
    assert spec is not None and spec.origin is not None
    compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=40, help="samples of each per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    compile_client()
    recreate_database(BENCH_DB)
    token = prepare()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ROOT / "build" / "logs" / "bench-guard-daphne.log"
    log.parent.mkdir(parents=True, exist_ok=True)
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
        with tempfile.TemporaryDirectory() as folder:
            repo = make_repo(Path(folder))
            state = Path(folder) / "state"
            results, cpu = measure(base, token, repo, state, args.samples, args.rounds)
    finally:
        daphne.stop()

    one, five, _ = os.getloadavg()
    print(
        f"\nuncontended, {args.rounds} rounds x {args.samples} samples, one daphne "
        f"(load average {one:.2f} / {five:.2f}, {os.cpu_count()} CPUs)"
    )
    figures: dict[str, dict[str, float]] = {}
    for name, turns in results.items():
        every = [value for turn in turns for value in turn]
        figures[name] = {"median_ms": statistics.median(every), "p99_ms": percentile(every, 0.99)}
        print(
            f"  {name:<14} median {figures[name]['median_ms']:7.1f} ms   "
            f"p99 {figures[name]['p99_ms']:7.1f} ms"
        )
    ratios = {
        f"{hook}/{baseline}": figures[hook]["median_ms"] / figures[baseline]["median_ms"]
        for hook in ("pre (take)", "pre (confirm)", "post", "stop")
        for baseline in ("python", "http")
    }
    print("  ratios of the medians: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    added = figures["pre (take)"]["median_ms"] - figures["python"]["median_ms"]
    print(f"  pre (take) beyond starting python: {added:.1f} ms")
    # CPU time does not grow with the machine's load as wall time does.
    cpu_ms = {name: statistics.median(values) for name, values in cpu.items()}
    print(
        f"  CPU time of the process (median): pre (take) {cpu_ms['pre (take)']:.1f} ms, "
        f"python {cpu_ms['python']:.1f} ms"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"figures": figures, "ratios": ratios, "cpu_ms": cpu_ms}, indent=2)
        )


if __name__ == "__main__":
    main()
