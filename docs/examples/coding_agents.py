"""Three coding agents edit the same files of a git repository: with orchestrator-guard
in their hooks, then without (docs/guard.md).

    make run                                   # in another terminal
    .venv/bin/python docs/examples/coding_agents.py [http://127.0.0.1:8000]

Each agent is a Claude Code-like session in a temporary repository. For each of its
edits it reads a file, writes it back with a line of its own added (the Write tool:
the whole file, from what it read) and ends its turn. Guarded, the script runs
orchestrator-guard as Claude Code's hooks would, with the hook's JSON on stdin and
the agent's ORCHESTRATOR_URL and ORCHESTRATOR_TOKEN in its environment: PostToolUse
after a Read, PreToolUse before a Write (exit 2 refuses it, the reason on stderr),
PostToolUse after it, Stop at the end of each turn, SessionEnd at the end.

So that the agents clash for certain, they work in rounds: all read, then one after
the other they write, then all end their turns. Unguarded, a later writer drops the
line of the agent that wrote the file before it. Guarded, it is refused while the
other holds the file; in the next round it tries again from what it had read and is
refused again, the file having changed since; it reads the file again and makes its
edit on what the file holds now. Nothing is lost.

The tokens are made with ``manage.py agent_token`` of this checkout (agents coder-1
to coder-3 of team coding-demo), or given comma-separated in ORCHESTRATOR_TOKENS.
The same demo recorded as a run for check_run: ``manage.py scenario coding``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator_client import Client

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("coder-1", "coder-2", "coder-3")
FILES = {"src/app.py": '"""The app."""\n', "README.md": "# A shared repository\n"}
EDITS = 3  # per agent


def sh(*command: str, **options: object) -> subprocess.CompletedProcess[str]:
    """Run one of the demo's commands (git, manage.py, the guard): its output captured."""
    return subprocess.run(command, capture_output=True, text=True, **options)  # noqa: S603


def make_tokens() -> list[str]:
    given = os.environ.get("ORCHESTRATOR_TOKENS")
    if given:
        return given.split(",")
    manage = (sys.executable, str(ROOT / "manage.py"), "agent_token")
    return [
        sh(*manage, name, "--team", "coding-demo", check=True).stdout.split()[-1] for name in AGENTS
    ]


class Agent:
    """One agent's session: its tool calls, each with the guard's hooks around it."""

    def __init__(self, name: str, token: str, url: str, repo: Path, guarded: bool) -> None:
        self.name, self.repo, self.guarded = name, repo, guarded
        self.env = {
            **os.environ,
            "ORCHESTRATOR_URL": url,
            "ORCHESTRATOR_TOKEN": token,
            "ORCHESTRATOR_GUARD_STATE_DIR": str(repo.parent / "guard-state"),
        }
        self.seen: dict[str, str] = {}  # what it last read of each file
        self.todo: list[tuple[str, str]] = []  # (file, line to add)
        self.refusals = 0

    def hook(self, event: str, **fields: object) -> tuple[int, str]:
        """Run orchestrator-guard as Claude Code runs a hook: (exit code, stderr)."""
        if not self.guarded:
            return 0, ""
        payload = {
            "session_id": f"demo-{self.name}",
            "transcript_path": str(self.repo.parent / f"{self.name}.jsonl"),
            "cwd": str(self.repo),
            "permission_mode": "default",
            "hook_event_name": event,
            **fields,
        }
        guard = Path(sys.executable).with_name("orchestrator-guard")
        command = str(guard) if guard.exists() else "orchestrator-guard"  # or on the PATH
        done = sh(command, input=json.dumps(payload), env=self.env)
        return done.returncode, done.stderr.strip()

    def read(self, file: str) -> None:
        path = self.repo / file
        self.seen[file] = path.read_text()
        self.hook(
            "PostToolUse", tool_name="Read", tool_input={"file_path": str(path)},
            tool_response={"type": "text"}, tool_use_id=f"toolu_{self.name}_read",
        )  # fmt: skip

    def write(self, file: str, line: str) -> bool:
        """Write the file as it read it plus its line; False if refused (it is held)."""
        path = self.repo / file
        for _ in range(2):
            content = self.seen[file] + line + "\n"
            tool_input = {"file_path": str(path), "content": content}
            code, reason = self.hook(
                "PreToolUse", tool_name="Write", tool_input=tool_input,
                tool_use_id=f"toolu_{self.name}_write",
            )  # fmt: skip
            if code != 2:
                break
            self.refusals += 1
            print(f"  {self.name}: refused: {reason.split(': ')[1]}")  # the reason, not the advice
            if "changed since you last read it" not in reason:
                return False  # another agent holds it: try again next round
            self.read(file)  # as the guard says: read it again, redo the edit on that
        path.write_text(content)
        self.seen[file] = content
        self.hook(
            "PostToolUse", tool_name="Write", tool_input=tool_input,
            tool_response={"type": "update", "filePath": str(path)},
            tool_use_id=f"toolu_{self.name}_write",
        )  # fmt: skip
        print(f"  {self.name}: wrote {file}")
        return True


def demo(url: str, tokens: list[str], guarded: bool) -> None:
    print("guarded, orchestrator-guard in the hooks:" if guarded else "unguarded, no guard:")
    rng = random.Random(7)  # noqa: S311 (a demo): the same clashes every time
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        for file, content in FILES.items():
            (repo / file).parent.mkdir(parents=True, exist_ok=True)
            (repo / file).write_text(content)
        for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "start"]):
            identity = ["-c", "user.name=demo", "-c", "user.email=demo@localhost"]
            sh("git", *identity, *args, cwd=repo, check=True)
        agents = [
            Agent(name, token, url, repo, guarded)
            for name, token in zip(AGENTS, tokens, strict=True)
        ]
        for agent in agents:
            agent.todo = [
                (file := rng.choice(list(FILES)), f"{'#' if file.endswith('.py') else '-'} "
                 f"{agent.name}, edit {n}") for n in range(1, EDITS + 1)
            ]  # fmt: skip
        planned = [edit for agent in agents for edit in agent.todo]
        waiting: list[Agent] = []  # refused in the round before: they kept what they read
        rounds = 0
        while active := [agent for agent in agents if agent.todo]:
            rounds += 1
            print(f" round {rounds}")
            fresh = [agent for agent in active if agent not in waiting]
            for agent in fresh:
                agent.read(agent.todo[0][0])
            order, waiting = waiting + rng.sample(fresh, len(fresh)), []
            for agent in order:
                if agent.write(*agent.todo[0]):
                    agent.todo.pop(0)
                else:
                    waiting.append(agent)
            for agent in active:
                agent.hook("Stop", stop_hook_active=False)  # the turn ends: locks released
        for agent in agents:
            agent.hook("SessionEnd", reason="other")
        kept = sum(line in (repo / file).read_text() for file, line in planned)
        print(f"  {len(planned)} edits made, {kept} in the final files: {len(planned) - kept} lost")
        if guarded:
            print(f"  the guard refused {sum(agent.refusals for agent in agents)} attempts")
            with Client(url, tokens[0]) as client:
                for file in FILES:
                    record = client.read(file)
                    digest = hashlib.sha256((repo / file).read_bytes()).hexdigest()
                    same = "the file's hash" if record.value == {"sha256": digest} else "stale"
                    print(f"  the server's record of {file}: version {record.version}, {same}")


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    tokens = make_tokens()
    for token in tokens:
        with Client(url, token) as client:
            me = client.whoami()
            print(f"{me['agent']['name']}: an agent of team {me['team']['name']}")
    demo(url, tokens, guarded=True)
    demo(url, tokens, guarded=False)
