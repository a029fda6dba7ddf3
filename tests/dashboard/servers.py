"""The app as it runs in production, for the browser tests: daphne and an RQ worker,
in processes of their own, on the test database and the test Redis."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from orchestrator.processes import Helper, free_port, http_ok
from tests.databases import database_url

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; the browser tests are skipped without it
START_TIMEOUT = 30.0


def test_database_url() -> str:
    """The URL of the database pytest-django created for this run."""
    return database_url(connection.settings_dict)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DEBUG="0",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def live_app(log_dir: Path) -> Iterator[str]:
    """Start daphne and one RQ worker; yield the base URL; stop both."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"{base}/healthz"), log=log_dir / "daphne.log",
        env=env, cwd=ROOT, start_timeout=START_TIMEOUT, new_session=False,
    )  # fmt: skip
    # Jobs wait in Redis until the worker takes them: nothing to wait for at its start.
    worker = Helper(
        [sys.executable, "manage.py", "rqworker", "default", "steps"],
        name="rqworker", ready=lambda: True, log=log_dir / "worker.log", env=env, cwd=ROOT,
        new_session=False,
    )  # fmt: skip
    with web, worker:
        yield base
