"""Fault injection, the long version of tests/faults/test_faults.py, with its figures.

Run:  .venv/bin/python bench/faults.py [--seed 1] [--operations 20000] [--workers 8]

Real RQ worker processes run scripted agents on shared counters and slots while
a seeded nemesis kills workers (SIGKILL, then restarts them), stalls lock holders
past their leases (zombie writers: SIGSTOP, another agent takes the lock and
writes, SIGCONT), restarts a private Redis (its data lost) and kills the monitor;
then every invariant of tests/faults/checks.py is checked. The machinery is the
test's (tests/faults/); this script only sizes it and prints the figures.

Uses its own database (``orchestrator_faults``, recreated on each run, on the
server of DATABASE_URL or the local PostgreSQL) and a private redis-server on a
free port. Exits 1 if an invariant does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAULTS_DB = "orchestrator_faults"


def faults_database_url() -> str:
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(base)._replace(path="/" + FAULTS_DB))


def recreate_database(url: str) -> None:
    import psycopg

    admin = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {FAULTS_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {FAULTS_DB}")
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="seeds the workload and the nemesis")
    parser.add_argument("--operations", type=int, default=20000, help="tool calls to aim at")
    parser.add_argument("--workers", type=int, default=8, help="RQ worker processes")
    args = parser.parse_args()

    url = faults_database_url()
    recreate_database(url)
    from orchestrator.processes import free_port

    redis_port = free_port()
    os.environ.update(
        {
            "DATABASE_URL": url,
            # This process enqueues to the private Redis too (and publishes there).
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        }
    )
    import django

    django.setup()
    from django.conf import settings

    from tests.faults.harness import run_faults
    from tests.faults.workload import Plan

    logs = Path(tempfile.mkdtemp(prefix=f"faults-bench-{args.seed}-"))
    began = time.monotonic()
    print(f"bench/faults.py: seed {args.seed}, {args.operations} operations, "
          f"{args.workers} workers; process logs in {logs}", flush=True)  # fmt: skip
    outcome = run_faults(
        Plan(seed=args.seed, operations=args.operations),
        db=settings.DATABASES["default"],
        workers=args.workers,
        kills=max(3, args.operations // 2000),
        zombies=max(2, args.operations // 5000),
        logs=logs,
        timeout=300 + args.operations / 10,
        progress=lambda line: print(line, flush=True),
        redis_port=redis_port,
    )
    print(outcome.summary())
    print(json.dumps(outcome.figures()))
    print(f"total {time.monotonic() - began:.0f}s (with database set-up and checks)")
    sys.exit(1 if outcome.problems else 0)


if __name__ == "__main__":
    main()
