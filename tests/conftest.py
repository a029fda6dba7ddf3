"""Test-wide set-up: the suite runs on PostgreSQL and a real Redis, or not at all.

Without DATABASE_URL or REDIS_URL, orchestrator/pytest_servers.py starts
embedded servers for the run before the settings are read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # the browser tests drive Debian's Chromium
NO_BROWSER = (
    f"NO BROWSER: {CHROMIUM} is missing, so the dashboard's browser tests are SKIPPED "
    "(apt-get install chromium; with CI=true this fails the run)"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_report_header() -> list[str]:
    return [] if CHROMIUM.exists() else [NO_BROWSER]


def pytest_sessionstart(session: pytest.Session) -> None:
    if not CHROMIUM.exists() and _in_ci():
        pytest.exit(f"CI=true: {NO_BROWSER}", returncode=3)
    import redis
    from django.conf import settings

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.exit(f"the test suite needs Redis at {settings.REDIS_URL}: {exc}", returncode=3)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CHROMIUM.exists():
        terminalreporter.write_sep("!", NO_BROWSER, red=True, bold=True)


@pytest.fixture
def redis_conn():
    """The test Redis database, emptied before and after the test."""
    import django_rq

    conn = django_rq.get_connection("default")
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture(scope="session", autouse=True)
def _end_stray_connections(django_db_setup, django_db_blocker):
    """Before the test database is dropped, end the sessions still connected to it.

    Outside the web server a thread keeps its connection (CONN_MAX_AGE=None), so a
    thread that a test ran ORM code in (``sync_to_async``, a heartbeat) may still
    hold one at the end of the run, and PostgreSQL would refuse to drop the
    database, leaving it behind on the server."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
