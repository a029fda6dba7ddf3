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
