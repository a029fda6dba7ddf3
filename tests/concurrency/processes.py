"""Running test code in separate OS processes, each with its own database connection.

Children are started with multiprocessing's ``forkserver`` context: they
are forked from a fresh interpreter (started once, on first use) that has
imported a few libraries (``preload.py``) but holds none of the parent's
state: no settings, no database connection, no thread. That is as clean as
``spawn`` and several times cheaper per child on a loaded 2-core machine.

Before Django is set up, a child applies its environment overrides (``None``
removes a variable), selects ``tests.settings`` and, for PostgreSQL, points
the default database at the test database pytest-django created (the NAME
in the parent's settings while the test runs). ``settings.DATABASES`` is
read lazily, so overriding NAME before ``django.setup()`` is enough: the
connection is opened with it on first use.

Work to run is named by a dotted path (``"tests.concurrency.tasks:counter_worker"``)
and imported only after set-up, so that modules importing models are never
loaded in an unconfigured child. Arguments and results travel by pickle;
results and tracebacks come back on a queue, in start order.

Nothing here sleeps to synchronize: :func:`wait_until` waits on a condition
with a deadline, and the pool's deadlines are liveness limits only.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

SETTINGS_MODULE = "tests.settings"
_CONTEXT = multiprocessing.get_context("forkserver")
# Takes effect if this process has not started its fork server yet; otherwise
# children simply import those libraries themselves.
_CONTEXT.set_forkserver_preload(["tests.concurrency.preload"])


def context() -> Any:
    """The multiprocessing context children are started from (for Barrier, Event...)."""
    return _CONTEXT


def current_database_name() -> str:
    """The database the current test uses (pytest-django's test database while a test runs)."""
    from django.conf import settings

    return settings.DATABASES["default"]["NAME"]


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.01,
    wake: Any = None,
    what: str = "condition",
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    Between checks, wait on ``wake`` (a multiprocessing Event a notifier sets)
    for at most ``interval`` seconds, or just ``interval`` without one. The
    event is cleared before each check, so a notification that arrives after
    a check is never lost. Raises TimeoutError once ``timeout`` has passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        if wake is not None:
            wake.clear()
        value = check()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        if wake is not None:
            wake.wait(min(interval, remaining))
        else:
            time.sleep(min(interval, remaining))


def _bootstrap(
    index: int,
    target: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    database_name: str | None,
    env: Mapping[str, str | None],
    results: Any,
) -> None:
    """Entry point of a child: set up Django, run ``target(*args, **kwargs)``, report back."""
    try:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
        import django
        from django.conf import settings

        if database_name is not None:
            settings.DATABASES["default"]["NAME"] = database_name
        django.setup()
        module_name, _, func_name = target.partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
        results.put((index, True, func(*args, **kwargs)))
    except BaseException:
        results.put((index, False, traceback.format_exc()))
    finally:
        if "django.db" in sys.modules:
            from django.db import connections

            connections.close_all()


class WorkerError(AssertionError):
    """A child raised, died without reporting, or missed its deadline."""


class Workers:
    """A group of child processes started together; use as a context manager.

    ``database_name`` is the PostgreSQL database children connect to (default:
    the current test database); pass ``None`` with ``env`` overrides that
    select another database (another server). Leaving the ``with`` block
    kills children that are still running, so a failed test leaves none behind.
    """

    def __init__(
        self, *, database_name: str | None = "", env: Mapping[str, str | None] | None = None
    ) -> None:
        self.database_name = current_database_name() if database_name == "" else database_name
        self.env = dict(env or {})
        self._queue = _CONTEXT.Queue()
        self._processes: list[Any] = []
        self._results: dict[int, tuple[bool, Any]] = {}

    def start(self, target: str, *args: Any, **kwargs: Any) -> int:
        """Start one child running ``target(*args, **kwargs)``; returns its index."""
        index = len(self._processes)
        process = _CONTEXT.Process(
            target=_bootstrap,
            args=(index, target, args, kwargs, self.database_name, self.env, self._queue),
            name=f"worker-{index}",
            daemon=True,
        )
        process.start()
        self._processes.append(process)
        return index

    def poll(self, *, timeout: float = 0) -> bool:
        """Collect results, waiting up to ``timeout`` for one; True once every child reported.

        Raises WorkerError as soon as a child has failed or exited without a result.
        """
        if not self._complete():
            self._drain(block_for=timeout)
        return self._complete()

    def results(self, *, timeout: float) -> list[Any]:
        """Wait for every child (at most ``timeout`` seconds); results in start order."""
        deadline = time.monotonic() + timeout
        while not self._complete():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [p.name for i, p in enumerate(self._processes) if i not in self._results]
                raise WorkerError(f"workers {missing} did not finish within {timeout}s")
            self._drain(block_for=min(remaining, 0.5))
        for process in self._processes:
            process.join(timeout=10)
        return [self._results[i][1] for i in range(len(self._processes))]

    def _drain(self, *, block_for: float) -> None:
        self._receive(timeout=block_for)
        dead = [
            index
            for index, process in enumerate(self._processes)
            if index not in self._results and process.exitcode is not None
        ]
        if dead:
            # A child flushes its result before it exits; take what is still in the pipe.
            self._receive(timeout=1.0)
        for index in dead:
            if index not in self._results:
                process = self._processes[index]
                raise WorkerError(
                    f"{process.name} exited with code {process.exitcode} and no result"
                )

    def _receive(self, *, timeout: float) -> None:
        """Take every result on the queue, waiting up to ``timeout`` for the first."""
        while True:
            try:
                if timeout:
                    index, ok, value = self._queue.get(timeout=timeout)
                else:
                    index, ok, value = self._queue.get_nowait()
            except queue.Empty:
                return
            if not ok:
                raise WorkerError(f"{self._processes[index].name} failed:\n{value}")
            self._results[index] = (ok, value)
            timeout = 0

    def _complete(self) -> bool:
        return len(self._results) == len(self._processes)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        self._queue.close()


def run_workers(
    target: str,
    kwargs_list: list[dict[str, Any]],
    *,
    timeout: float,
    database_name: str | None = "",
    env: Mapping[str, str | None] | None = None,
) -> list[Any]:
    """Run ``target(**kwargs)`` once per dict, each in its own process; return the results."""
    with Workers(database_name=database_name, env=env) as workers:
        for kwargs in kwargs_list:
            workers.start(target, **kwargs)
        return workers.results(timeout=timeout)
