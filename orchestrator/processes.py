"""One way to run a helper process: start it, wait until it is ready, stop it.

The embedded Redis of ``make run`` and ``make test``, the fault suite's private
Redis, the browser tests' daphne and worker, the real-model test's llama.cpp
server and the live bench's daphne all go through :class:`Helper`:

* ``start()`` launches the command (output to a log file; by default in a
  session of its own, so that a terminal's Ctrl-C reaches us first) and waits
  until ``ready()`` says yes, polling a condition with a deadline; a process
  that exits first, or a deadline that passes, raises :class:`HelperError`
  with the end of its log;
* ``stop()`` sends SIGTERM and waits, then SIGKILL after a grace period;
* ``kill()`` signals it as a crash would (SIGKILL, reaped).

It is also a context manager: leaving the block stops the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

POLL = 0.05  # seconds between two readiness checks


class HelperError(RuntimeError):
    """A helper process that did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 200."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own URL)
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    return ready


def redis_pings(url: str) -> Callable[[], bool]:
    """A readiness check: the Redis server at ``url`` (redis:// or unix://) answers PING."""

    def ready() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    return ready


class Helper:
    """A process of ours that serves something (see the module docstring)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        ready: Callable[[], bool],
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        preexec_fn: Callable[[], Any] | None = None,
        new_session: bool = True,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.ready = ready
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.preexec_fn = preexec_fn
        self.new_session = new_session  # False: it gets this terminal's Ctrl-C too
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Helper:
        """Launch the command and return once ``ready()`` holds (HelperError if not)."""
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out: Any = self.log.open("ab")
        else:
            out = subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(  # noqa: S603 (our own command line)
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=self.new_session,
                preexec_fn=self.preexec_fn,
            )
        finally:
            if self.log is not None:
                out.close()
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise HelperError(
                    f"{self.name} exited with code {self.process.returncode} before it was "
                    f"ready{self._tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise HelperError(
                    f"{self.name} was not ready within {self.start_timeout:g}s{self._tail()}"
                )
            time.sleep(POLL)  # polling a condition with a deadline
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``stop_timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (by default SIGKILL, as a crash would, then reap the process)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
        if sig == signal.SIGKILL:
            process.wait(30)

    def log_tail(self, size: int = 3000) -> str:
        if self.log is None:
            return ""
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _tail(self) -> str:
        tail = self.log_tail()
        return f":\n{tail}" if tail else ""

    def __enter__(self) -> Helper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
