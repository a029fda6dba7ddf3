"""The coding scenario: coding agents that run elsewhere edit one git repository.

Each agent is a Claude Code-like session in a temporary git repository. For each
of its edits it reads a file (the Read tool) and writes it back with one line of
its own added (the Write tool: the whole file, as a model produces it from what it
read), then ends its turn. Guarded, orchestrator-guard runs around every tool call
exactly as Claude Code's hooks run it (the installed console script, the hook's
JSON on stdin, this agent's ``ORCHESTRATOR_URL`` and ``ORCHESTRATOR_TOKEN`` in its
environment): ``PostToolUse`` after a Read, ``PreToolUse`` before a Write (exit 2
refuses it, the reason on stderr), ``PostToolUse`` after it, ``Stop`` at the end of
each turn and ``SessionEnd`` at the end of the agent's work. Unguarded, the same
agents make the same edits without the guard.

The interleaving is fixed, not left to chance. The agents work in rounds:

1. every agent with an edit to make reads its file (all at once, in threads);
2. one at a time, those refused in the round before first and then the others in
   an order drawn from the seed, each makes its edit;
3. every agent ends its turn (all at once): the guard releases its locks.

There are fewer files than agents, so in every round two agents or more edit one
file. Unguarded, each writes what it read plus its line: the later write drops
the earlier one's line (a stale overwrite, and a lost edit). Guarded, the first of
them takes the file's lock and the others are refused ("locked by ..."); they try
again in the next round from what they had read, as a model that does not read
again would, and are refused again ("changed since you last read it"), read it
again, and make their edit on what the file holds now. No edit is lost.

Each agent's turns are recorded in the run (agents/external.py) as steps whose tool
calls are Claude Code's ``Read`` (the hash read) and ``Write`` (the content, the
line added, the write's place in the order of all writes, or the guard's refusal),
from which ``check_run`` counts lost edits and stale overwrites (agents/checker.py).
The plan, the order of the writes and so every outcome are functions of the seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.utils import timezone

from agents.external import external_run_end, external_turn_record
from agents.scenarios import AgentPlan, Plan, plan_start, scenario_prefix
from orchestrator.core.errors import ProtocolError
from orchestrator.core.models import Run, Team
from orchestrator.core.tokens import agent_token_reset
from orchestrator.processes import Helper, free_port, http_ok

CODING = "coding"
EDITS_PER_AGENT = 3
GOAL = "Each agent adds its lines to the repository's files; no edit may be lost."
FILES = (
    "src/app.py",
    "src/models.py",
    "src/api/views.py",
    "README.md",
    "src/api/urls.py",
    "docs/notes.md",
)
WORDS = ("parse", "render", "cache", "retry", "validate", "index", "merge", "export")
BUSY, STALE = "busy", "stale"
# What the guard says when it refuses an edit (client/orchestrator_client/guard/hooks.py).
REFUSALS = {"is locked by": BUSY, "has changed since you last read it": STALE}
HOOK_TIMEOUT = 60.0  # seconds; the guard bounds its own requests (5 s each)


class CodingError(RuntimeError):
    """The scenario cannot go on: no git, no guard, a server that does not answer or
    refuses the guard, a run that an operator ended."""


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    file: str  # its repository path
    text: str  # the line the agent adds at the end of the file


@dataclass
class CodingPlan:
    files: dict[str, str]  # repository path -> first content
    edits: dict[str, list[Edit]]  # agent (its short name) -> its edits, in order


def plan_coding(agents: int, edits: int, rng: random.Random) -> CodingPlan:
    """About one file for two agents (always fewer files than agents, from two agents
    on), and for each agent ``edits`` edits, each to a file drawn from the seed."""
    count = max(1, (agents + 1) // 2)
    paths = [FILES[k] if k < len(FILES) else f"src/module{k + 1}.py" for k in range(count)]
    files = {path: _first_content(path) for path in paths}
    plan: dict[str, list[Edit]] = {}
    for i in range(agents):
        name = f"coder{i + 1}"
        plan[name] = []
        for n in range(1, edits + 1):
            path = rng.choice(paths)
            plan[name].append(Edit(path, _line(path, name, n, rng.choice(WORDS))))
    return CodingPlan(files, plan)


def _first_content(path: str) -> str:
    if path.endswith(".md"):
        return f"# {path}\n\nWhat the agents added:\n\n"
    return f'"""{path}: shared by the coding agents."""\n\n'


def _line(path: str, agent: str, number: int, word: str) -> str:
    if path.endswith(".md"):
        return f"- {agent}, edit {number}: {word}"
    return f'{agent}_edit_{number} = "{word}"  # {agent}, edit {number}'


# --- the repository and the guard --------------------------------------------------------


class Repository:
    """The agents' shared working tree: a git repository with the plan's files committed.
    Writes are numbered in the order they happen (the checker's order of writes)."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        if shutil.which("git") is None:
            raise CodingError("the coding scenario needs git on the PATH")
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise CodingError(f"{root} is not empty: give the repository a new folder")
        self.root = root.resolve()
        for name, content in files.items():
            self.path(name).parent.mkdir(parents=True, exist_ok=True)
            self.path(name).write_text(content)
        identity = ("-c", "user.name=orchestrator", "-c", "user.email=orchestrator@localhost")
        for args in (
            ("init", "-q"),
            ("add", "."),
            (*identity, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "The shared files"),
        ):
            # git from PATH with arguments of ours (S603, S607).
            subprocess.run(  # noqa: S603
                ["git", *args],  # noqa: S607
                cwd=self.root,
                check=True,
                capture_output=True,
                timeout=60,
            )
        self._order = itertools.count(1)
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> str:
        return self.path(name).read_text()

    def write(self, name: str, content: str) -> int:
        """Write the file; return the write's number in the order of all writes."""
        with self._lock:
            self.path(name).write_text(content)
            return next(self._order)


def guard_command() -> str:
    """The installed orchestrator-guard: beside this Python, or on the PATH."""
    beside = Path(sys.executable).with_name("orchestrator-guard")
    if beside.exists():
        return str(beside)
    found = shutil.which("orchestrator-guard")
    if found is None:
        raise CodingError("orchestrator-guard is not installed (pip install ./client)")
    return found


class Hook(NamedTuple):
    code: int
    message: str  # the guard's stderr, one line


class Session:
    """One agent's Claude Code session, as its hooks see it: the hook events it sends
    orchestrator-guard (as Claude Code's hooks reference documents them), with the
    agent's server and token in the guard's environment."""

    def __init__(
        self, *, command: str, url: str, token: str, state_dir: Path, root: Path, name: str
    ) -> None:
        self.command, self.root, self.name, self.token = command, root, name, token
        self.session_id = f"session-{name}"
        self.env = {
            **os.environ,  # the guard runs in the agent's environment, as hooks do
            "ORCHESTRATOR_URL": url,
            "ORCHESTRATOR_TOKEN": token,
            "ORCHESTRATOR_GUARD_STATE_DIR": str(state_dir),
            "ORCHESTRATOR_GUARD_FAIL": "closed",
        }
        self._ids = itertools.count(1)

    def hook(self, event: str, **fields: Any) -> Hook:
        payload = {
            "session_id": self.session_id,
            "transcript_path": f"{Path.home()}/.claude/projects/repo/{self.session_id}.jsonl",
            "cwd": str(self.root),
            "permission_mode": "default",
            "hook_event_name": event,
            **fields,
        }
        if event == "SessionEnd":
            del payload["permission_mode"]  # as documented for SessionEnd
        done = subprocess.run(  # noqa: S603 (the installed guard, its input ours)
            [self.command],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=HOOK_TIMEOUT,
        )
        return Hook(done.returncode, done.stderr.strip())

    def tool(self, event: str, tool: str, tool_input: dict[str, Any], **fields: Any) -> Hook:
        tool_use_id = f"toolu_{self.name}_{next(self._ids):04d}"
        return self.hook(
            event, tool_name=tool, tool_input=tool_input, tool_use_id=tool_use_id, **fields
        )

    def after_read(self, path: Path, content: str) -> Hook:
        lines = content.count("\n")
        response = {
            "type": "text",
            "file": {
                "filePath": str(path), "content": content, "numLines": lines, "startLine": 1,
                "totalLines": lines,
            },
        }  # fmt: skip
        return self.tool("PostToolUse", "Read", {"file_path": str(path)}, tool_response=response)

    def before_write(self, path: Path, content: str) -> Hook:
        return self.tool("PreToolUse", "Write", {"file_path": str(path), "content": content})

    def after_write(self, path: Path, content: str) -> Hook:
        response = {"type": "update", "filePath": str(path), "content": content}
        tool_input = {"file_path": str(path), "content": content}
        return self.tool("PostToolUse", "Write", tool_input, tool_response=response)

    def stop(self) -> Hook:
        return self.hook("Stop", stop_hook_active=False)

    def end(self) -> Hook:
        return self.hook("SessionEnd", reason="other")


def refusal_kind(message: str) -> str:
    """BUSY or STALE for the guard's two refusals of an edit; CodingError otherwise (the
    guard could not check the edit: it fails closed)."""
    for words, kind in REFUSALS.items():
        if words in message:
            return kind
    raise CodingError(f"the guard refused an edit: {message}")


def short(message: str) -> str:
    """The guard's reason without its prefix, its details and its advice: ``src/app.py is
    locked by coder2``, ``src/app.py has changed since you last read it``."""
    parts = message.split(": ")
    return (parts[1] if len(parts) > 1 else message).split(" (")[0]


# --- the agents --------------------------------------------------------------------------


@dataclass
class Turn:
    tool_calls: list[dict[str, Any]]
    transcript: list[dict[str, Any]]
    finished: bool


@dataclass
class CodingAgent:
    """An agent's work and what it has seen, and its actions (see the module docstring)."""

    name: str  # short: coder1
    agent_id: int
    repo: Repository
    session: Session | None  # None: unguarded
    todo: deque[Edit]
    say: Callable[[str], None] = print
    view: dict[str, str] = field(default_factory=dict)  # what it last read or wrote
    made: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    calls: list[dict[str, Any]] = field(default_factory=list)  # of the current turn
    notes: list[str] = field(default_factory=list)
    asked: list[Edit] = field(default_factory=list)  # the edits worked on this turn

    @property
    def edit(self) -> Edit:
        return self.todo[0]

    def read(self) -> None:
        """The Read tool on the file of its next edit, then the PostToolUse hook."""
        edit = self.edit
        content = self.repo.read(edit.file)
        self.view[edit.file] = content
        self._call("Read", edit, {"ok": True, "sha256": sha256(content)})
        self.notes.append(f"Read {edit.file}.")
        if self.session is not None:
            self.session.after_read(self.repo.path(edit.file), content)

    def attempt(self) -> bool:
        """Make its next edit from what it last read of the file; False if the guard
        refused it because another agent holds the file (it tries again next round)."""
        edit = self.edit
        if edit not in self.asked:
            self.asked.append(edit)
        refused = self._refused(edit)
        if refused == STALE:  # as the guard says: read it again, redo the edit on that
            self.read()
            refused = self._refused(edit)
        if refused is not None:
            return False
        path, content = self.repo.path(edit.file), self._edited(edit)
        order = self.repo.write(edit.file, content)
        result = {"status": "applied", "order": order, "sha256": sha256(content)}
        self._call("Write", edit, result, content=content)
        self.notes.append(f"Wrote {edit.file}.")
        self.say(f"  {self.name}: wrote {edit.file}")
        if self.session is not None:
            after = self.session.after_write(path, content)
            if after.code:
                raise CodingError(f"{self.name}: {after.message}")
        self.view[edit.file] = content
        self.todo.popleft()
        self.made += 1
        return True

    def end_turn(self) -> Turn:
        """Stop (the guard releases the turn's locks); at the end of its work, SessionEnd."""
        finished = not self.todo
        if self.session is not None:
            self.session.stop()
            if finished:
                self.session.end()
        if finished:
            summary = f"made {self.made} edits"
            self.calls.append(
                {"tool": "finish", "arguments": {"summary": summary}, "result": {"ok": True}}
            )
        asked = " ".join(f"Add this line to {edit.file}: {edit.text}" for edit in self.asked)
        transcript = [
            {"role": "user", "content": asked},
            {"role": "assistant", "content": " ".join(self.notes)},
        ]
        turn = Turn(self.calls, transcript, finished)
        self.calls, self.notes, self.asked = [], [], []
        return turn

    def _edited(self, edit: Edit) -> str:
        """The file as the agent writes it: what it last read, plus its line."""
        base = self.view[edit.file]
        if base and not base.endswith("\n"):
            base += "\n"
        return f"{base}{edit.text}\n"

    def _refused(self, edit: Edit) -> str | None:
        """The PreToolUse hook before the Write: None if the guard allows it (or there is
        no guard), else BUSY or STALE, recorded as a refused Write."""
        if self.session is None:
            return None
        hook = self.session.before_write(self.repo.path(edit.file), self._edited(edit))
        if hook.code == 0:
            return None
        kind = refusal_kind(hook.message)
        self.refusals[kind] += 1
        self._call("Write", edit, {"status": "refused", "refused": kind, "guard": hook.message})
        self.notes.append(f"Writing {edit.file} was refused: {hook.message}")
        self.say(f"  {self.name}: {edit.file} refused ({kind}): {short(hook.message)}")
        return kind

    def _call(self, tool: str, edit: Edit, result: dict[str, Any], **arguments: Any) -> None:
        args: dict[str, Any] = {"resource": edit.file, "file_path": str(self.repo.path(edit.file))}
        if tool == "Write":
            args["edit"] = edit.text
        self.calls.append({"tool": tool, "arguments": {**args, **arguments}, "result": result})


def conduct(
    agents: list[CodingAgent],
    rng: random.Random,
    record: Callable[[CodingAgent, Turn, datetime], None],
    *,
    max_rounds: int,
    say: Callable[[str], None] = print,
) -> int:
    """Run the rounds until every agent has made its edits; the number of rounds."""
    waiting: list[CodingAgent] = []  # refused last round, in the order they were refused
    number = 0
    with ThreadPoolExecutor(max_workers=max(1, len(agents))) as pool:
        while active := [agent for agent in agents if agent.todo]:
            number += 1
            if number > max_rounds:
                raise CodingError(f"the agents were not done after {max_rounds} rounds")
            say(f"round {number}")
            started = timezone.now()
            fresh = [agent for agent in active if agent not in waiting]
            list(pool.map(CodingAgent.read, fresh))  # those refused keep what they read
            order = waiting + rng.sample(fresh, len(fresh))
            waiting = [agent for agent in order if not agent.attempt()]
            turns = list(pool.map(CodingAgent.end_turn, active))
            for agent, turn in zip(active, turns, strict=True):
                record(agent, turn, started)
    return number


# --- the run -----------------------------------------------------------------------------


@dataclass
class CodingResult:
    run: Run
    team: Team
    root: Path
    files: dict[str, str]  # repository path -> final content
    planned: int = 0  # the edits the agents set out to make
    rounds: int = 0
    made: int = 0  # the edits the agents made (their writes applied)
    present: int = 0  # of those, in the final files
    refusals: Counter[str] = field(default_factory=Counter)
    records: dict[str, tuple[int, bool]] = field(default_factory=dict)  # path -> version, same


def coding_run(
    *,
    root: Path,
    url: str | None,
    agents: int = 3,
    edits: int = EDITS_PER_AGENT,
    seed: int = 0,
    unguarded: bool = False,
    state_dir: Path | None = None,
    say: Callable[[str], None] = print,
) -> CodingResult:
    """Make the repository at ``root`` (a new folder), start the run of a fresh team of
    ``agents`` coding agents, and drive them to the end (see the module docstring).

    Guarded, ``url`` is the server the guard talks to; it must use this process's
    database (the agents and their tokens are made here). ``state_dir`` holds the
    guard's session files (by default beside the repository)."""
    if agents < 1 or edits < 1:
        raise ValueError("the coding scenario needs at least one agent and one edit")
    if not unguarded and not url:
        raise ValueError("a guarded coding run needs the server's URL")
    rng = random.Random(seed)  # noqa: S311 (a simulation)
    plan = plan_coding(agents, edits, rng)
    command = None if unguarded else guard_command()
    repo = Repository(root, plan.files)
    prefix = scenario_prefix(CODING)
    started = plan_start(
        plan=Plan(
            goal=GOAL,
            resources={path: {"sha256": sha256(text)} for path, text in plan.files.items()},
            agents=[
                AgentPlan(
                    name=f"{prefix}-{name}",
                    role=_role(todo, unguarded),
                    script=[{"tool": "finish", "args": {"summary": "runs elsewhere"}}],
                )
                for name, todo in plan.edits.items()
            ],
            max_steps=agents * edits + 1,
        ),
        prefix=prefix,
        seed=seed,
        unguarded=unguarded,
        elsewhere=True,
    )
    run = started.run
    planned = sum(len(todo) for todo in plan.edits.values())
    result = CodingResult(run, started.team, repo.root, {}, planned)
    say(
        f"coding ({'unguarded' if unguarded else 'guarded'}): team {started.team.name}, "
        f"{agents} agents, {edits} edits each, files {', '.join(plan.files)}"
    )
    say(f"repository: {repo.root}")
    state = state_dir or repo.root.with_name(f"{repo.root.name}-guard-state")
    team = []
    for (name, todo), agent in zip(plan.edits.items(), started.agents, strict=True):
        session = None
        if command is not None:
            token = agent_token_reset(agent=agent, actor="scenario")
            session = Session(
                command=command, url=url or "", token=token, state_dir=state, root=repo.root,
                name=agent.name,
            )  # fmt: skip
        team.append(CodingAgent(name, agent.pk, repo, session, deque(todo), say=say))

    def record(agent: CodingAgent, turn: Turn, at: datetime) -> None:
        try:
            external_turn_record(
                run_id=run.pk, agent_id=agent.agent_id, tool_calls=turn.tool_calls,
                transcript=turn.transcript, started_at=at, finished=turn.finished,
            )  # fmt: skip
        except ProtocolError as exc:  # the run was cancelled meanwhile
            raise CodingError(exc.detail) from exc

    try:
        for member in team:
            if member.session is not None:
                _check_server(url or "", member.session.token, member.session.name)
        result.rounds = conduct(team, rng, record, max_rounds=agents * edits + 1, say=say)
    except BaseException as exc:  # the run ends failed, even on Ctrl-C
        _abandon(run, team, str(exc) or type(exc).__name__)
        raise
    external_run_end(run_id=run.pk)
    run.refresh_from_db()
    result.files = {path: repo.read(path) for path in plan.files}
    result.made = sum(agent.made for agent in team)
    result.present = sum(
        edit.text in result.files[edit.file] for todo in plan.edits.values() for edit in todo
    )
    for agent in team:
        result.refusals.update(agent.refusals)
    if team and team[0].session is not None:
        result.records = _records(url or "", team[0].session.token, result)
    return result


def _role(todo: list[Edit], unguarded: bool) -> str:
    files = ", ".join(sorted({edit.file for edit in todo}))
    how = "without a guard" if unguarded else "orchestrator-guard running in its hooks"
    return f"A coding agent that runs elsewhere ({how}): it adds lines to {files}."


def _check_server(url: str, token: str, name: str) -> None:
    """The server answers, and knows the agent (so it uses this process's database)."""
    from orchestrator_client import Client, OrchestratorError, Unauthorized

    try:
        with Client(url, token, timeout=10) as client:
            client.whoami()
    except Unauthorized:
        raise CodingError(
            f"the server at {url} does not know agent {name}: it must use the database "
            "this command uses"
        ) from None
    except OrchestratorError as exc:
        raise CodingError(f"the server at {url} did not answer as it should: {exc}") from None


def _records(url: str, token: str, result: CodingResult) -> dict[str, tuple[int, bool]]:
    """What the server recorded of each file (through the guard): its version, and
    whether its hash is the final file's."""
    from orchestrator_client import Client

    records = {}
    with Client(url, token, timeout=10) as client:
        for path, content in result.files.items():
            resource = client.read(path)
            same = isinstance(resource.value, dict) and resource.value.get("sha256") == sha256(
                content
            )
            records[path] = (resource.version, same)
    return records


def _abandon(run: Run, team: list[CodingAgent], why: str) -> None:
    """The scenario failed: release what the guard holds, record the agents as failed
    and end the run (failed), as far as each can be done."""
    for agent in team:
        if agent.session is not None:
            with suppress(Exception):
                agent.session.stop()
                agent.session.end()
        if agent.todo:
            with suppress(ProtocolError):
                external_turn_record(
                    run_id=run.pk, agent_id=agent.agent_id, tool_calls=agent.calls, failed=why
                )
    with suppress(ProtocolError):
        external_run_end(run_id=run.pk)


# --- a server of its own -----------------------------------------------------------------


def database_url() -> str:
    """A DATABASE_URL for the database this process uses (a socket directory as the
    host is percent-encoded, which dj-database-url reads back as a socket path)."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "", safe="")
    password = db.get("PASSWORD") or ""
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = quote(str(db.get("HOST") or "127.0.0.1"), safe="")
    return f"postgres://{auth}{host}:{db.get('PORT') or 5432}/{db['NAME']}"


@contextmanager
def local_server(log: Path) -> Iterator[str]:
    """daphne serving the project on a free loopback port, on this process's database
    and Redis; yields its base URL, stops it at the end."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,  # handed down to the server, as launch.py does
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    web = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"{base}/healthz"), log=log, env=env,
        cwd=settings.BASE_DIR, start_timeout=60, new_session=False,
    )  # fmt: skip
    with web:
        yield base
