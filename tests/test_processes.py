"""orchestrator.processes.Helper: the one way the project runs a helper process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from orchestrator.processes import Helper, HelperError, free_port, http_ok, redis_pings


def http_server(port: int, log: Path) -> Helper:
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return Helper(command, name="http.server", ready=http_ok(f"http://127.0.0.1:{port}/"), log=log)


def test_a_helper_is_ready_when_started_and_gone_when_stopped(tmp_path: Path) -> None:
    port = free_port()
    with http_server(port, tmp_path / "http.log") as helper:
        assert helper.running
        assert http_ok(f"http://127.0.0.1:{port}/")()
    assert not helper.running
    assert helper.process.returncode == -signal.SIGTERM
    assert not http_ok(f"http://127.0.0.1:{port}/")()


def test_a_helper_that_exits_before_it_is_ready_says_so_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no config file'); sys.exit(3)"]
    helper = Helper(command, name="broken", ready=lambda: False, log=tmp_path / "broken.log")
    with pytest.raises(HelperError) as failed:
        helper.start()
    assert "broken exited with code 3 before it was ready" in str(failed.value)
    assert "no config file" in str(failed.value)


def test_a_helper_never_ready_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    helper = Helper(command, name="silent", ready=lambda: False, start_timeout=0.5)
    with pytest.raises(HelperError, match=r"silent was not ready within 0\.5s"):
        helper.start()
    assert not helper.running  # stopped, not left behind


def test_kill_is_a_crash_and_a_new_start_comes_back(tmp_path: Path) -> None:
    port = free_port()
    helper = http_server(port, tmp_path / "http.log").start()
    first = helper.pid
    helper.kill()
    assert helper.process.returncode == -signal.SIGKILL
    helper.start()  # as the fault suite restarts its Redis
    try:
        assert helper.pid != first and helper.ready()
    finally:
        helper.stop()


def test_redis_pings_is_false_where_nothing_listens() -> None:
    assert redis_pings(f"redis://127.0.0.1:{free_port()}/0")() is False
