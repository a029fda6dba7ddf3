"""orchestrator-guard, run as Claude Code and git run it: the installed console script,
the hook's JSON on stdin exactly as Claude Code's hooks reference documents it
(https://code.claude.com/docs/en/hooks: the common input fields, then each event's),
against daphne."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from orchestrator_client import Client

from orchestrator.core.models import Lock, Resource
from orchestrator.core.resources import resource_create
from orchestrator.processes import free_port
from tests.client.conftest import GUARD, ROOT, Agents, run_guard

pytestmark = [pytest.mark.django_db(transaction=True)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        # The hook finds orchestrator-guard on PATH, as a user's shell would.
        "PATH": f"{GUARD.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, env=environment, timeout=60
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one committed file, src/app.py."""
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / "README.md").write_text("# repo\n")
    assert git(root, "init", "-q", "-b", "main").returncode == 0
    assert git(root, "add", ".").returncode == 0
    assert git(root, "commit", "-q", "-m", "start").returncode == 0
    return root


class ClaudeSession:
    """One Claude Code session of one agent: the hook events it sends the guard."""

    def __init__(self, base: str, token: str, repo: Path, state: Path, name: str, **env: str):
        self.base, self.token, self.repo, self.state = base, token, repo, state
        self.session_id = f"session-{name}"
        self.env = env

    def common(self, event: str) -> dict:
        return {
            "session_id": self.session_id,
            "transcript_path": f"/home/user/.claude/projects/repo/{self.session_id}.jsonl",
            "cwd": str(self.repo),
            "permission_mode": "default",
            "hook_event_name": event,
        }

    def send(self, payload: dict) -> subprocess.CompletedProcess[str]:
        return run_guard(
            payload, base=self.base, token=self.token, state_dir=self.state, **self.env
        )

    def before_edit(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.send({
            **self.common("PreToolUse"),
            "tool_name": "Edit",
            "tool_input": {
                "file_path": str(self.repo / name), "old_string": "hello",
                "new_string": "hello world", "replace_all": False,
            },
            "tool_use_id": "toolu_01ABC123",
        })  # fmt: skip

    def after_write(self, name: str) -> subprocess.CompletedProcess[str]:
        path = self.repo / name
        return self.send({
            **self.common("PostToolUse"),
            "tool_name": "Write",
            "tool_input": {"file_path": str(path), "content": path.read_text()},
            "tool_response": {"filePath": str(path), "type": "update"},
            "tool_use_id": "toolu_01ABC124",
            "duration_ms": 12,
        })  # fmt: skip

    def after_read(self, name: str) -> subprocess.CompletedProcess[str]:
        # The hooks reference documents Read's tool_input; its tool_response is the tool's
        # own output object, which the guard does not read.
        return self.send({
            **self.common("PostToolUse"),
            "tool_name": "Read",
            "tool_input": {"file_path": str(self.repo / name)},
            "tool_response": {"type": "text"},
            "tool_use_id": "toolu_01ABC125",
        })  # fmt: skip

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.send({
            **self.common("Stop"), "stop_hook_active": False,
            "last_assistant_message": "Done.", "background_tasks": [], "session_crons": [],
        })  # fmt: skip

    def end(self) -> subprocess.CompletedProcess[str]:
        payload = self.common("SessionEnd")
        del payload["permission_mode"]  # as documented for SessionEnd
        return self.send({**payload, "reason": "other"})


def live_locks(team, name: str) -> list[str]:
    return [
        lock.agent.name
        for lock in Lock.objects.filter(
            resource__team=team, resource__name=name, released_at__isnull=True
        ).select_related("agent")
    ]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def sessions(live, agents: Agents, repo: Path, tmp_path: Path):
    def session(name: str, **env: str) -> ClaudeSession:
        _, token = agents.make(name)
        return ClaudeSession(live, token, repo, tmp_path / "state", name, **env)

    return session


def test_two_agents_editing_one_file_the_second_is_refused_naming_the_holder(
    sessions, agents, repo
):
    alice, bob = sessions("alice"), sessions("bob")
    first = alice.before_edit("src/app.py")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    created = Resource.objects.get(team=agents.team, name="src/app.py")
    assert created.value == {"sha256": sha256(repo / "src" / "app.py")}
    assert live_locks(agents.team, "src/app.py") == ["alice"]

    refused = bob.before_edit("src/app.py")
    assert refused.returncode == 2 and refused.stdout == ""
    reason = one_line(refused)
    assert reason.startswith("orchestrator-guard: src/app.py is locked by alice (exclusive, ")
    assert "Read src/app.py again" in reason

    (repo / "src" / "app.py").write_text("print('hello world')\n")
    assert alice.after_write("src/app.py").returncode == 0
    recorded = Resource.objects.get(team=agents.team, name="src/app.py")
    assert recorded.version == 1
    assert recorded.value == {"sha256": sha256(repo / "src" / "app.py")}

    assert alice.stop().returncode == 0
    assert live_locks(agents.team, "src/app.py") == []
    assert bob.after_read("src/app.py").returncode == 0
    assert bob.before_edit("src/app.py").returncode == 0
    assert live_locks(agents.team, "src/app.py") == ["bob"]


def test_an_edit_from_a_stale_read_is_refused(sessions, agents, repo):
    alice, bob = sessions("alice"), sessions("bob")
    assert alice.after_read("src/app.py").returncode == 0  # alice reads the file...
    assert bob.before_edit("src/app.py").returncode == 0  # ...bob edits it meanwhile
    (repo / "src" / "app.py").write_text("print('bob was here')\n")
    assert bob.after_write("src/app.py").returncode == 0
    assert bob.stop().returncode == 0

    stale = alice.before_edit("src/app.py")  # alice's edit is based on what she read
    assert stale.returncode == 2
    assert one_line(stale) == (
        "orchestrator-guard: src/app.py has changed since you last read it (another agent "
        "or a person edited it): Read src/app.py again and redo your edit on what it holds "
        "now. It is locked for you meanwhile."
    )
    assert live_locks(agents.team, "src/app.py") == ["alice"]
    assert alice.after_read("src/app.py").returncode == 0
    assert alice.before_edit("src/app.py").returncode == 0

    # A change that no agent recorded (a person's) is caught the same way.
    (repo / "src" / "app.py").write_text("print('edited by hand')\n")
    assert alice.before_edit("src/app.py").returncode == 2


def test_the_documented_hook_events_take_record_and_release(sessions, agents, repo, tmp_path):
    alice = sessions("alice", ORCHESTRATOR_GUARD_TTL="60")
    (repo / "docs").mkdir()
    assert alice.before_edit("docs/new.md").returncode == 0  # a file Write will create
    (repo / "docs" / "new.md").write_text("new\n")
    assert alice.after_write("docs/new.md").returncode == 0
    assert alice.before_edit("src/app.py").returncode == 0
    lock = Lock.objects.get(resource__name="src/app.py", released_at__isnull=True)
    assert (lock.expires_at - lock.acquired_at).total_seconds() == pytest.approx(60, abs=1)
    assert alice.before_edit("src/app.py").returncode == 0  # confirmed: the same lock
    assert Lock.objects.get(resource__name="src/app.py", released_at__isnull=True).pk == lock.pk
    assert sorted(agents.team.resources.values_list("name", flat=True)) == [
        "docs/new.md", "src/app.py"
    ]  # fmt: skip
    assert Resource.objects.get(name="docs/new.md").value == {
        "sha256": sha256(repo / "docs" / "new.md")
    }
    assert alice.stop().returncode == 0
    assert Lock.objects.filter(resource__team=agents.team, released_at__isnull=True).count() == 0
    assert list((tmp_path / "state").glob("*.json"))  # what the session saw is kept...
    ended = alice.end()
    assert (ended.returncode, ended.stdout) == (0, "")
    assert not list((tmp_path / "state").glob("*.json"))  # ...until the session ends

    outside = tmp_path / "loose.txt"  # not in any repository: nothing to guard
    outside.write_text("x")
    assert alice.send({
        **alice.common("PreToolUse"), "tool_name": "Write",
        "tool_input": {"file_path": str(outside), "content": "y"}, "tool_use_id": "toolu_9",
    }).returncode == 0  # fmt: skip


def test_pre_commit_refuses_files_another_agent_holds(sessions, agents, repo, live):
    alice, bob = sessions("alice"), sessions("bob")
    install = re.search(r"^(printf .*pre-commit)$", (ROOT / "docs" / "guard.md").read_text(), re.M)
    assert install, "docs/guard.md gives the pre-commit install line"
    assert subprocess.run(install.group(1), shell=True, cwd=repo, check=False).returncode == 0

    assert alice.before_edit("src/app.py").returncode == 0
    (repo / "src" / "app.py").write_text("print('bob too')\n")
    (repo / "README.md").write_text("# repo, by bob\n")
    git(repo, "add", "src/app.py", "README.md")
    env = {"ORCHESTRATOR_URL": live, "ORCHESTRATOR_TOKEN": bob.token}
    refused = git(repo, "commit", "-q", "-m", "bob's change", **env)
    assert refused.returncode != 0
    assert "src/app.py: held by alice" in refused.stderr
    assert "README.md" not in refused.stderr
    assert git(repo, "log", "--oneline").stdout.count("\n") == 1  # nothing was committed

    assert alice.stop().returncode == 0
    with Client(live, alice.token) as client:  # a folder lock covers what is under it
        resource_create(team=agents.team, name="src/", value=None)
        folder = client.lock("src/", renew=False).acquire()
        covered = git(repo, "commit", "-q", "-m", "bob's change", **env)
        assert covered.returncode != 0
        assert "src/app.py: held by alice (through its lock on src/)" in covered.stderr
        folder.release()
    assert git(repo, "commit", "-q", "-m", "bob's change", **env).returncode == 0
    own = git(repo, "commit", "--allow-empty", "-q", "-m", "nothing staged", **env)
    assert own.returncode == 0


def test_the_fail_safe_when_the_server_cannot_be_reached(sessions, repo, tmp_path):
    nowhere = f"http://127.0.0.1:{free_port()}"
    closed = sessions("closed", ORCHESTRATOR_URL=nowhere)
    refused = closed.before_edit("src/app.py")
    assert refused.returncode == 2
    assert (
        "did not answer" in one_line(refused) and "ORCHESTRATOR_GUARD_FAIL=closed" in refused.stderr
    )

    opened = sessions("opened", ORCHESTRATOR_URL=nowhere, ORCHESTRATOR_GUARD_FAIL="open")
    allowed = opened.before_edit("src/app.py")
    assert allowed.returncode == 0
    warning = json.loads(allowed.stdout)["systemMessage"]
    assert warning.startswith("orchestrator-guard: the Orchestrator at ") and "allowed" in warning

    unset = sessions("unset", ORCHESTRATOR_TOKEN="")
    assert "ORCHESTRATOR_TOKEN not set" in one_line(unset.before_edit("src/app.py"))
    wrong = sessions("wrong", ORCHESTRATOR_TOKEN="not-a-token")
    refused = wrong.before_edit("src/app.py")
    assert refused.returncode == 2 and "refused the guard's request (unauthorized" in refused.stderr
    # Stop never exits 2 (that would keep Claude from stopping), even with the server down.
    assert closed.stop().returncode == 0

    git(repo, "add", "README.md")
    hook = [str(GUARD), "pre-commit"]
    env = {**os.environ, "ORCHESTRATOR_URL": nowhere, "ORCHESTRATOR_TOKEN": "t"}
    (repo / "README.md").write_text("changed\n")
    git(repo, "add", "README.md")
    assert subprocess.run(hook, cwd=repo, env=env, capture_output=True).returncode == 1
    env["ORCHESTRATOR_GUARD_FAIL"] = "open"
    assert subprocess.run(hook, cwd=repo, env=env, capture_output=True).returncode == 0


def test_a_malformed_hook_input_fails_closed(live, tmp_path):
    result = run_guard("not json", base=live, token="t", state_dir=tmp_path)
    assert result.returncode == 2 and "cannot check this edit" in result.stderr


def test_what_a_session_read_is_kept_when_the_server_fails_after(sessions, repo, monkeypatch):
    """Its own edit, whose record the server did not take, is not stale for it later."""
    from orchestrator_client.errors import Unreachable
    from orchestrator_client.guard import cli
    from orchestrator_client.guard.config import Settings

    alice = sessions("alice")
    assert alice.after_read("src/app.py").returncode == 0
    assert alice.before_edit("src/app.py").returncode == 0
    (repo / "src" / "app.py").write_text("print('changed')\n")

    def down(*args, **kwargs):
        raise Unreachable("no answer")

    monkeypatch.setattr(Client, "write", down)
    settings = Settings.from_env({
        "ORCHESTRATOR_URL": alice.base, "ORCHESTRATOR_TOKEN": alice.token,
        "ORCHESTRATOR_GUARD_STATE_DIR": str(alice.state), "ORCHESTRATOR_GUARD_FAIL": "open",
    })  # fmt: skip
    post = {
        **alice.common("PostToolUse"), "tool_name": "Edit", "tool_use_id": "toolu_1",
        "tool_input": {"file_path": str(repo / "src" / "app.py"), "old_string": "a",
                       "new_string": "b"},
        "tool_response": {"filePath": str(repo / "src" / "app.py")},
    }  # fmt: skip
    assert cli.hook(settings, json.dumps(post)) == 0  # failed open: a warning
    monkeypatch.undo()
    assert alice.before_edit("src/app.py").returncode == 0


def test_an_edit_under_a_folder_another_agent_holds_is_refused_naming_it(sessions, agents, live):
    alice, bob = sessions("alice"), sessions("bob")
    resource_create(team=agents.team, name="src/", value=None)
    with Client(live, bob.token) as client, client.lock("src/", renew=False):
        refused = alice.before_edit("src/app.py")
        assert refused.returncode == 2
        assert one_line(refused).startswith(
            "orchestrator-guard: src/app.py is locked by bob "
            "(exclusive, its lock on src/ covers it, "
        )
    assert alice.before_edit("src/app.py").returncode == 0
