"""`make run` from a fresh copy of the repository, with no database or Redis
configured: it comes up with embedded SQLite and Redis, the printed operator
credentials log in, the demo makes progress, and SIGTERM leaves no process behind."""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = re.compile(r"username (\S+)\s+password (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_make_run_from_a_fresh_copy(tmp_path: Path) -> None:
    copy = tmp_path / "orchestrator"
    fresh_copy(copy)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # The project's virtual environment is already installed; make's own install
    # step is exercised by CI from a clean clone.
    env.update(VENV=str(ROOT / ".venv"), PORT=str(port), PYTHONUNBUFFERED="1")
    make = subprocess.Popen(
        ["make", "run"], cwd=copy, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(make.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:

        def login_page() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/login/", timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for(login_page, "the login page", 180, make, output)
        text = "".join(output)
        assert "embedded SQLite" in text and "redis: embedded" in text
        username, password = CREDENTIALS.search(text).groups()

        # Log in with the printed credentials; the dashboard answers.
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
        assert "Overview" in page and "Approvals" in page

        # The demo makes progress: steps keep getting done.
        database = copy / "data" / "orchestrator.sqlite3"

        def steps_done() -> int:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
                query = "SELECT count(*) FROM core_step WHERE status = 'done'"
                return db.execute(query).fetchone()[0]

        first = wait_for(steps_done, "a first step done", 60, make, output)
        wait_for(lambda: steps_done() >= first + 5, "the demo to go on", 90, make, output)
    finally:
        make.send_signal(signal.SIGTERM)
        try:
            make.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 30
    while (left := session_members(make.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes left behind: {left}"
    assert not (copy / "data" / "redis.sock").exists()
