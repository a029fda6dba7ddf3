"""Test-wide set-up: the suite runs on PostgreSQL and a real Redis, or not at all."""

from __future__ import annotations

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if engine != "django.db.backends.postgresql":
        pytest.exit(
            f"the test suite needs PostgreSQL (DATABASE_URL); got {engine}. "
            "Run it with `make test` or set DATABASE_URL=postgres://...",
            returncode=3,
        )
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.exit(f"the test suite needs Redis at {settings.REDIS_URL}: {exc}", returncode=3)


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
