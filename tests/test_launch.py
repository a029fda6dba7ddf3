"""`make run` from a fresh copy of the repository, with no database or Redis
configured: it comes up on the embedded PostgreSQL and Redis, the printed operator
credentials log in, the demo makes progress, four API clients incrementing one
counter under exclusive locks lose no update (the row locks are real), SIGTERM
leaves no process behind, and a second `make run`, past a stale postmaster.pid,
finds the operator, the counter and the events where they were."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator import embedded
from orchestrator.processes import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = re.compile(r"username (\S+)\s+password (\S+)")
CLIENTS, INCREMENTS = 4, 10


def fresh_copy(target: Path) -> None:
    """The files a clone would have (tracked, plus new files not ignored), nothing else."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def session_members(sid: int) -> list[str]:
    """Command lines of the live processes of session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def wait_for(condition, what: str, timeout: float, alive: subprocess.Popen, output: list[str]):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if alive.poll() is not None:
            pytest.fail(f"make run exited ({alive.returncode}) before {what}:\n" + "".join(output))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n" + "".join(output[-40:]))
        time.sleep(0.2)


class Launch:
    """One `make run` in ``copy``, its output collected."""

    def __init__(self, copy: Path, port: int) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "ORCHESTRATOR_DATA_DIR")
        }
        # The project's virtual environment is already installed; make's own install
        # step is exercised by CI from a clean clone. It must not run here: it would
        # point the shared environment's editable install at this copy, so the copy
        # gets an install stamp of its own, newer than its pyproject.toml.
        env.update(VENV=str(ROOT / ".venv"), PORT=str(port), PYTHONUNBUFFERED="1")
        stamp = copy.parent / "installed"
        stamp.touch()
        self.env, self.copy, self.base = env, copy, f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            ["make", "run", f"STAMP={stamp}"], cwd=copy, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output: list[str] = []
        threading.Thread(
            target=lambda: self.output.extend(self.process.stdout), daemon=True
        ).start()

    def text(self) -> str:
        return "".join(self.output)

    def wait_for(self, condition, what: str, timeout: float):
        return wait_for(condition, what, timeout, self.process, self.output)

    def wait_until_up(self) -> None:
        def login_page() -> bool:
            try:
                with urllib.request.urlopen(f"{self.base}/login/", timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        self.wait_for(login_page, "the login page", 180)

    def stop(self) -> None:
        """SIGTERM, as a process manager would send; then nothing may be left."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise
        deadline = time.monotonic() + 30
        while (left := session_members(self.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"processes left behind: {left}"


def log_in(base: str, username: str, password: str) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base}/login/", timeout=10).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf}
    ).encode()
    request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": base})
    with opener.open(request, timeout=10) as response:
        page = response.read().decode()
        assert response.status == 200 and response.url.rstrip("/") == base, response.url
    return page


def call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One agent API request; returns the status and the decoded JSON (None if empty)."""
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else None


def increment(base: str, token: str, times: int, results: list[int]) -> None:
    """Add one to the counter ``times`` times, each under its exclusive lock."""
    for _ in range(times):
        acquire = {"resource": "counter", "mode": "exclusive", "ttl": 30, "wait": True}
        status, lock = call(base, token, "POST", "/locks", acquire)
        if status == 202:  # queued: long-poll until granted
            poll = f"/lock-requests/{lock['request_id']}?wait=25"
            while (answer := call(base, token, "GET", poll))[1]["status"] == "waiting":
                pass
            assert answer[1]["status"] == "granted", answer
            status, lock = 201, answer[1]["lock"]
        assert status == 201, (status, lock)
        _, state = call(base, token, "GET", "/resources/counter")
        write = {
            "value": state["value"] + 1,
            "expected_version": state["version"],
            "fence": lock["fence"],
        }
        status, written = call(base, token, "PUT", "/resources/counter", write)
        assert status == 200, (status, written)
        assert call(base, token, "DELETE", f"/locks/{lock['id']}")[0] == 204
        results.append(written["version"])


def agent_tokens(copy: Path, env: dict[str, str]) -> list[str]:
    """API tokens of CLIENTS agents of one team, made in the copy (on its embedded database)."""
    script = (
        "from orchestrator.core.agents import agent_ensure\n"
        "from orchestrator.core.tokens import agent_token_reset\n"
        f"for n in range({CLIENTS}):\n"
        "    agent, _ = agent_ensure(name=f'counter-{n}', team_name='counters')\n"
        "    print(agent_token_reset(agent=agent, actor='test'))\n"
    )
    env = {**env, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    run = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=copy, check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return run.stdout.split()[-CLIENTS:]


def query(copy: Path, sql: str) -> Any:
    """One value read from the copy's embedded database, through its socket."""
    host = embedded.postgres_socket_dir(copy / "data")
    with psycopg.connect(host=str(host), user="postgres", dbname="orchestrator") as conn:
        return conn.execute(sql).fetchone()[0]


def test_make_run_from_a_fresh_copy_and_again(tmp_path: Path) -> None:
    copy = tmp_path / "orchestrator"
    fresh_copy(copy)
    launch = Launch(copy, free_port())
    try:
        launch.wait_until_up()
        text = launch.text()
        assert "database: embedded PostgreSQL" in text and "redis: embedded" in text
        assert str(copy / "data" / "postgres") in text
        username, password = CREDENTIALS.search(text).groups()
        page = log_in(launch.base, username, password)
        assert "Overview" in page and "Approvals" in page
        assert query(copy, "SELECT current_setting('data_directory')") == str(
            copy / "data" / "postgres"
        )

        # The demo makes progress: steps keep getting done.
        def steps_done() -> int:
            return query(copy, "SELECT count(*) FROM core_step WHERE status = 'done'")

        first = launch.wait_for(steps_done, "a first step done", 60)
        launch.wait_for(lambda: steps_done() >= first + 5, "the demo to go on", 90)

        # Four API clients, one counter, exclusive locks: no update is lost.
        tokens = agent_tokens(copy, launch.env)
        status, _ = call(
            launch.base, tokens[0], "POST", "/resources", {"name": "counter", "value": 0}
        )
        assert status == 201
        versions: list[int] = []
        clients = [
            threading.Thread(target=increment, args=(launch.base, token, INCREMENTS, versions))
            for token in tokens
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(180)
        assert not any(client.is_alive() for client in clients)
        total = CLIENTS * INCREMENTS
        assert sorted(versions) == list(range(1, total + 1))  # each write saw the one before
        _, state = call(launch.base, tokens[0], "GET", "/resources/counter")
        assert (state["value"], state["version"]) == (total, total)
        events = query(copy, "SELECT count(*) FROM core_event")
        runs = query(copy, "SELECT count(*) FROM core_run")
    finally:
        launch.stop()
    assert not (copy / "data" / "redis.sock").exists()
    assert not (copy / "data" / "postgres" / "postmaster.pid").exists()  # a clean shutdown

    # A killed server leaves its postmaster.pid, naming a pid that may be another
    # process's by the next start (here this one's): it must not stop the next start.
    (copy / "data" / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n{copy}\n")
    again = Launch(copy, free_port())
    try:
        again.wait_until_up()
        assert CREDENTIALS.search(again.text()) is None  # the operator exists already
        log_in(again.base, username, password)
        _, state = call(again.base, tokens[0], "GET", "/resources/counter")
        assert (state["value"], state["version"]) == (total, total)
        assert query(copy, "SELECT count(*) FROM core_event") >= events
        assert query(copy, "SELECT count(*) FROM core_run") >= runs
    finally:
        again.stop()
