"""The Python client and orchestrator-guard as agents use them: against a real daphne
serving orchestrator.asgi on the test database (tests/dashboard/servers.py starts it,
as for the browser and MCP tests). Test data is committed (``transaction=True``) so
that the server sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from orchestrator_client import Busy, Client, Lock

from tests.dashboard import servers
from tests.mcp.conftest import Agents  # agents of one team, each with its token

ROOT = Path(__file__).resolve().parents[2]
GUARD = Path(sys.executable).with_name("orchestrator-guard")


@pytest.fixture(scope="package")
def live(django_db_setup, django_db_blocker) -> Iterator[str]:
    """The base URL of a daphne process serving the project's ASGI application (one for
    the whole of tests/client: each test's data is its own, flushed after it)."""
    with servers.live_app(ROOT / "build" / "logs" / "client") as base:
        yield base


@pytest.fixture
def agents() -> Agents:
    return Agents()


def run_guard(
    payload: dict[str, Any] | str,
    *,
    base: str,
    token: str,
    state_dir: Path,
    args: tuple[str, ...] = (),
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The installed ``orchestrator-guard`` console script, run as Claude Code runs a
    hook: the hook's JSON on stdin, the server and token in the environment."""
    environment = {
        **os.environ,
        "ORCHESTRATOR_URL": base,
        "ORCHESTRATOR_TOKEN": token,
        "ORCHESTRATOR_GUARD_STATE_DIR": str(state_dir),
        **env,
    }
    stdin = payload if isinstance(payload, str) else json.dumps(payload)
    return subprocess.run(
        [str(GUARD), *args], input=stdin, capture_output=True, text=True, env=environment,
        cwd=cwd, timeout=60,
    )  # fmt: skip


def eventually(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def free(client: Client, name: str, ttl: int = 30) -> Callable[[], Lock | None]:
    """A condition: ``name``'s lock for ``client``, if it can be had now (None while busy)."""

    def attempt() -> Lock | None:
        try:
            return client.lock(name, ttl=ttl, wait=False, renew=False).acquire()
        except Busy:
            return None

    return attempt
