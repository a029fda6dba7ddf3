"""Lock manager throughput, beside the raw ORM loop it is built on.

Run:  .venv/bin/python bench/locks.py [--seconds 3] [--rounds 3] [--skip-api] [--web-processes 2]
                                     [--processes 1,8]

Each figure is acquire -> read -> write -> release cycles per second, summed
over N worker processes (each with its own database connection), on 10 hot
resources and on 10,000 cold ones:

* raw:      the same loop written directly with the ORM: acquire, write and
            release are each SELECT ... FOR UPDATE + save (a naive lock held
            in a column; busy -> retry after 1 ms). Three transactions, like
            ours, with no leases, fences, queue, history or events.
* protocol: our services: lock_acquire (which returns the row as locked; a
            queued agent blocks until the granting transaction wakes it, as
            the runtime does, and reads the row with its granted request),
            resource_write with the fencing token and the version read,
            lock_release. Three transactions, each with its events.
* two commits: the same services, the cycle in two transactions: lock_acquire
            (its grant carries the value and version), then resource_write with
            ``release=True``, which releases the lock in the write's own
            transaction. Compared with the one-transaction loop (target >= 0.4
            with 1 process), whose one commit per cycle is the floor.
* one-transaction loop, for reference: SELECT ... FOR UPDATE + save in a
            single transaction (the row lock is the lock, commit releases it).
* api:      the same protocol over HTTP: 8 client processes against daphne,
            POST /locks with "wait": true (when queued, long-polling
            GET /lock-requests/{id}?wait=10), GET, PUT with the fence, DELETE.

The ratio protocol/raw is the figure of merit (target >= 0.5), and api /
in-process protocol with 8 clients (target >= 0.2; the in-process figure is
measured again for it, in turns with the API measurements). Absolute numbers depend
on the machine; the ratios are what to compare.

Each figure is the median of ``--rounds`` measurements (default 3), taken in
turns (raw, protocol, two commits, one-transaction loop, raw, ...) so that a slow spell of
the machine or a checkpoint of the database falls on all three alike; the
spread (lowest-highest) is printed beside it. The raw loop on hot resources
is the noisiest figure (its waiters poll every millisecond): one measurement
of it varied between 200 and 380 cycles/s within a minute on a quiet machine.

It uses its own database (``orchestrator_bench``, or ``$BENCH_DB``, on the server
of DATABASE_URL, default postgres://postgres@127.0.0.1:5432), created and
migrated on each run, so it never touches a development or test database, and
the Redis of ``$BENCH_REDIS_URL`` (default database 9 of the local Redis).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB", "orchestrator_bench")  # one of its own per engineer
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
READY = "ready"


def bench_database_url(name: str = BENCH_DB) -> str:
    """The URL of the bench database ``name`` on the server of DATABASE_URL."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def setup_django() -> None:
    os.environ["DATABASE_URL"] = bench_database_url()
    os.environ["REDIS_URL"] = REDIS_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def recreate_database(name: str = BENCH_DB) -> None:
    """Drop and create the bench database ``name``, then migrate it."""
    import psycopg

    parts = urllib.parse.urlsplit(bench_database_url(name))
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    env = {**os.environ, "DATABASE_URL": bench_database_url(name)}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )


def prepare(n_resources: int, n_agents: int) -> None:
    """Create resources r0..rN and agents bench-0..bench-K (in the parent)."""
    from orchestrator.core.models import Agent, Resource, ResourceVersion, Team

    team, _ = Team.objects.get_or_create(name="bench", defaults={"default_lease_ttl": 30})
    Resource.objects.all().delete()
    resources = Resource.objects.bulk_create(
        Resource(name=f"r{i}", value=0, team=team) for i in range(n_resources)
    )
    ResourceVersion.objects.bulk_create(
        ResourceVersion(resource=r, version=0, value=0) for r in resources
    )
    for i in range(n_agents):
        Agent.objects.get_or_create(name=f"bench-{i}", defaults={"team": team})


def raw_worker(index: int, n_resources: int, seconds: float, start, out) -> None:
    """The baseline: acquire, write and release as three plain ORM transactions.

    A naive lock: ``fence`` holds the holder's number (0 = free); acquiring is
    SELECT ... FOR UPDATE + save, retried after 1 ms while someone holds it;
    the write and the release are SELECT ... FOR UPDATE + save each. Mutual
    exclusion, nothing else: no leases, no fencing, no queue, no history, no
    events. (The bench database is its own, so borrowing ``fence`` is harmless.)
    """
    setup_django()
    from django.db import transaction

    from orchestrator.core.models import Resource

    rng = random.Random(index)
    me = index + 1
    ids = list(Resource.objects.order_by("pk").values_list("pk", flat=True))
    out.put(READY)  # set up and connected: the parent starts the clock when all are
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        rid = rng.choice(ids)
        while True:  # acquire
            with transaction.atomic():
                res = Resource.objects.select_for_update().get(pk=rid)
                if res.fence == 0:
                    res.fence = me
                    res.save(update_fields=["fence"])
                    break
            time.sleep(0.001)
        with transaction.atomic():  # write
            res = Resource.objects.select_for_update().get(pk=rid)
            assert res.fence == me
            res.value = res.value + 1
            res.version += 1
            res.save(update_fields=["value", "version", "updated_at"])
        with transaction.atomic():  # release
            res = Resource.objects.select_for_update().get(pk=rid)
            res.fence = 0
            res.save(update_fields=["fence"])
        done += 1
    out.put(done)


def raw1_worker(index: int, n_resources: int, seconds: float, start, out) -> None:
    """For reference: the whole cycle as ONE transaction (lock = row lock, release = commit)."""
    setup_django()
    from django.db import transaction

    from orchestrator.core.models import Resource

    rng = random.Random(index)
    ids = list(Resource.objects.order_by("pk").values_list("pk", flat=True))
    out.put(READY)  # set up and connected: the parent starts the clock when all are
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with transaction.atomic():
            res = Resource.objects.select_for_update().get(pk=rng.choice(ids))
            res.value = res.value + 1
            res.version += 1
            res.save(update_fields=["value", "version", "updated_at"])
        done += 1
    out.put(done)


def protocol_worker(index: int, n_resources: int, seconds: float, start, out) -> None:
    """Our services, three transactions a cycle: acquire, write, release."""
    _protocol_loop(index, seconds, start, out, release_with_write=False)


def two_commit_worker(index: int, n_resources: int, seconds: float, start, out) -> None:
    """Our services, two transactions a cycle: acquire, then write with release."""
    _protocol_loop(index, seconds, start, out, release_with_write=True)


def _protocol_loop(index: int, seconds: float, start, out, *, release_with_write: bool) -> None:
    setup_django()
    import django_rq

    from orchestrator.core import wakeups
    from orchestrator.core.locks import lock_acquire, lock_release
    from orchestrator.core.models import Agent, Resource
    from orchestrator.core.resources import resource_write
    from orchestrator.core.selectors import lock_request_with_lock

    # Waiting the way the runtime does: the transaction that grants a queued request
    # wakes its agent after commit (here through a Redis list the waiter blocks on).
    redis = django_rq.get_connection("default")
    wakeups.register(lambda agent_id, **_: redis.rpush(f"bench:wake:{agent_id}", 1))
    rng = random.Random(index)
    ids = list(Resource.objects.order_by("pk").values_list("pk", flat=True))
    agent = Agent.objects.select_related("team").get(name=f"bench-{index}")
    redis.delete(f"bench:wake:{agent.pk}")
    out.put(READY)  # set up and connected: the parent starts the clock when all are
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        rid = rng.choice(ids)
        result = lock_acquire(agent=agent, resource=rid, ttl=30)
        lock, state = result.lock, result.resource  # granted at once: the row as locked
        if lock is None:  # queued: block until woken (re-check every 0.5 s)
            while lock is None:
                redis.blpop([f"bench:wake:{agent.pk}"], timeout=0.5)
                request = lock_request_with_lock(result.request.pk)
                lock = request.lock
            # The resource as it is now that we hold it, read with the request, as the
            # runtime reads a granted request (agents.steps.wait_result).
            state = request.resource
        written = resource_write(
            agent=agent,
            resource=rid,
            value=state.value + 1,
            expected_version=state.version,
            fence=lock.token,
            release=release_with_write,
        )
        assert written.status == "applied", written.detail
        if release_with_write:
            assert written.released, "the write did not release its lock"
        else:
            lock_release(lock_id=lock.pk, agent=agent)
        done += 1
    out.put(done)


def api_client(base: str, token: str, timeout: float = 30):
    """``call(method, path, body=None) -> (status, JSON body)`` on one kept-alive
    connection to ``base``, as the agent whose token is ``token``."""
    url = urllib.parse.urlsplit(base)
    conn = HTTPConnection(url.hostname, url.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else {}

    return call


def api_acquire(call, name: str) -> dict:
    """POST /locks with wait, long-polling GET /lock-requests/{id}?wait=10 when queued
    (answered when the grant commits): the granted lock (LockOut)."""
    ask = {"resource": name, "mode": "exclusive", "ttl": 30, "wait": True}
    status, body = call("POST", "/api/v1/locks", ask)
    if status == 202:
        request_id = body["request_id"]
        while status != 201:
            _, polled = call("GET", f"/api/v1/lock-requests/{request_id}?wait=10")
            assert polled["status"] in ("waiting", "granted"), polled
            if polled["status"] == "granted":
                status, body = 201, polled["lock"]
    assert status == 201, (status, body)
    return body


def api_worker(index: int, bases: list[str], tokens: list[str], seconds: float, start, out) -> None:
    rng = random.Random(index)
    call = api_client(bases[index % len(bases)], tokens[index])
    n_resources = int(os.environ["BENCH_N_RESOURCES"])

    # Warm up as the in-process workers do before READY (they have connected and
    # queried): the server's code paths and its pooled database connections.
    for _ in range(3):
        call("GET", "/api/v1/resources/r0")
    out.put(READY)  # set up and connected: the parent starts the clock when all are
    start.wait()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = f"r{rng.randrange(n_resources)}"
        body = api_acquire(call, name)
        _, state = call("GET", f"/api/v1/resources/{name}")
        write = {
            "value": state["value"] + 1,
            "expected_version": state["version"],
            "fence": body["fence"],
        }
        status, written = call("PUT", f"/api/v1/resources/{name}", write)
        assert status == 200, (status, written)
        status, _ = call("DELETE", f"/api/v1/locks/{body['id']}")
        assert status == 204, status
        done += 1
    out.put(done)


def run_workers(target, processes: int, args: tuple, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    workers = [
        ctx.Process(target=target, args=(i, *args, seconds, start, out)) for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:  # every child has imported Django and connected
        assert out.get(timeout=120) == READY
    began = time.monotonic()
    start.set()
    total = sum(out.get(timeout=seconds + 120) for _ in workers)
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {worker.exitcode})")
    return total / elapsed


def check_counters(expected_min: int) -> None:
    """Every counter equals its version: no lost update, whatever ran."""
    from orchestrator.core.models import Resource

    bad = [r.name for r in Resource.objects.all() if r.value != r.version]
    assert not bad, f"lost updates on {bad[:5]}"
    assert sum(Resource.objects.values_list("version", flat=True)) >= expected_min


def check_no_live_locks() -> None:
    """Every lock ended with its write: a write with release leaves none behind."""
    from orchestrator.core.models import Lock

    live = Lock.objects.filter(released_at__isnull=True).count()
    assert not live, f"{live} locks still live after the two-commit cycles"


@dataclass
class Row:
    label: str
    raws: list[float]
    protocols: list[float]
    raw1s: list[float]
    twos: list[float]

    @property
    def raw(self) -> float:
        return statistics.median(self.raws)

    @property
    def protocol(self) -> float:
        return statistics.median(self.protocols)

    @property
    def raw1(self) -> float:
        return statistics.median(self.raw1s)

    @property
    def two(self) -> float:
        return statistics.median(self.twos)

    def line(self) -> str:
        return (
            f"{self.label:<26} raw {self.raw:6.1f}/s {spread(self.raws)}  "
            f"protocol {self.protocol:6.1f}/s {spread(self.protocols)}  "
            f"ratio {self.protocol / self.raw:4.2f}   (one-transaction loop {self.raw1:6.1f}/s "
            f"{spread(self.raw1s)}, ratio {self.protocol / self.raw1:4.2f})   "
            f"two commits {self.two:6.1f}/s {spread(self.twos)}, "
            f"ratio to one-transaction loop {self.two / self.raw1:4.2f}"
        )


def spread(values: list[float]) -> str:
    """The range of a figure's measurements, for the eye: ``[201-377]``."""
    return f"[{min(values):.0f}-{max(values):.0f}]"


def start_web(port: int, processes: int) -> list[subprocess.Popen]:
    env = {**os.environ, "DATABASE_URL": bench_database_url(), "REDIS_URL": REDIS_URL,
           "ALLOWED_HOSTS": "127.0.0.1"}  # fmt: skip
    servers = []
    for i in range(processes):
        servers.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "daphne"),
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port + i),
                    "orchestrator.asgi:application",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    deadline = time.monotonic() + 30
    for i in range(processes):
        while True:
            try:
                conn = HTTPConnection("127.0.0.1", port + i, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("daphne did not start")
            time.sleep(0.1)
    return servers


def api_figure(seconds: float, web_processes: int, n_resources: int) -> float:
    from orchestrator.core.models import Agent
    from orchestrator.core.tokens import agent_token_reset

    tokens = [
        agent_token_reset(agent=Agent.objects.get(name=f"bench-{i}"), actor="bench")
        for i in range(8)
    ]
    port = 8950
    servers = start_web(port, web_processes)
    os.environ["BENCH_N_RESOURCES"] = str(n_resources)
    bases = [f"http://127.0.0.1:{port + i}" for i in range(web_processes)]
    try:
        return run_workers(api_worker, 8, (bases, tokens), seconds)
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (median)")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument(
        "--processes", default="1,8", help="worker processes of the rows, comma-separated"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--plot", type=Path, help="draw the figures into this PNG (docs/benchmarks/locks.png)"
    )
    args = parser.parse_args()

    recreate_database()
    setup_django()
    from django.db import connection

    rows: list[Row] = []
    figures: dict[str, float] = {}
    for n_resources, label in ((10, "10 hot"), (10_000, "10,000 cold")):
        for processes in [int(n) for n in args.processes.split(",")]:
            label_n = f"{label}, {processes} process{'es' if processes > 1 else ''}"
            row = Row(label_n, [], [], [], [])
            for _ in range(args.rounds):
                prepare(n_resources, 8)
                connection.close()
                row.raws.append(run_workers(raw_worker, processes, (n_resources,), args.seconds))
                prepare(n_resources, 8)
                connection.close()
                row.protocols.append(
                    run_workers(protocol_worker, processes, (n_resources,), args.seconds)
                )
                check_counters(1)
                prepare(n_resources, 8)
                connection.close()
                row.twos.append(
                    run_workers(two_commit_worker, processes, (n_resources,), args.seconds)
                )
                check_counters(1)
                check_no_live_locks()
                prepare(n_resources, 8)
                connection.close()
                row.raw1s.append(run_workers(raw1_worker, processes, (n_resources,), args.seconds))
            rows.append(row)
            print(row.line(), flush=True)
            figures[f"{n_resources}_{processes}_raw"] = row.raw
            figures[f"{n_resources}_{processes}_protocol"] = row.protocol
            figures[f"{n_resources}_{processes}_raw_one_transaction"] = row.raw1
            figures[f"{n_resources}_{processes}_protocol_two_commits"] = row.two
    if not args.skip_api:
        # In turns with the in-process figure it is divided by, like the rows above.
        apis, in_processes = [], []
        for _ in range(args.rounds):
            prepare(10, 8)
            connection.close()
            in_processes.append(run_workers(protocol_worker, 8, (10,), args.seconds))
            check_counters(1)
            prepare(10, 8)
            connection.close()
            apis.append(api_figure(args.seconds, args.web_processes, 10))
            check_counters(1)
        api, in_process = statistics.median(apis), statistics.median(in_processes)
        figures["api_8_clients"] = api
        figures["api_in_process_8_processes"] = in_process
        print(
            f"{'HTTP API, 8 clients, 10 hot':<26} api {api:6.1f}/s {spread(apis)}  "
            f"in-process {in_process:6.1f}/s {spread(in_processes)}  "
            f"ratio {api / in_process:4.2f}   ({args.web_processes} daphne processes)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.plot:
        plot(args.plot, rows, figures, args.web_processes)


def plot(path: Path, rows: list[Row], figures: dict[str, float], web_processes: int) -> None:
    from plot import grouped_bars

    groups = [row.label for row in rows]
    series = {
        "raw ORM loop (baseline)": [row.raw for row in rows],
        "protocol": [row.protocol for row in rows],
        "protocol, two commits": [row.two for row in rows],
    }
    ratios = [row.protocol / row.raw for row in rows]
    targets = [0.5] * len(rows)
    if "api_8_clients" in figures:
        groups.append(f"HTTP API, 8 clients,\n10 hot ({web_processes} daphne)")
        series["raw ORM loop (baseline)"].append(0.0)
        series["protocol"].append(figures["api_in_process_8_processes"])
        series["protocol, two commits"].append(0.0)
        series["HTTP API"] = [0.0] * len(rows) + [figures["api_8_clients"]]
        ratios.append(figures["api_8_clients"] / figures["api_in_process_8_processes"])
        targets.append(0.2)
    grouped_bars(
        path,
        title="Lock cycles per second (acquire, write, release)",
        groups=groups,
        series=series,
        ratios=ratios,
        ratio_label="protocol / raw; API / in-process protocol",
        target=targets,
        unit="cycles per second",
    )
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
