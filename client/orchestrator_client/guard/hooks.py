"""The guard's answers to Claude Code's hook events.

Claude Code runs the guard with one JSON object on stdin (its hooks reference,
https://code.claude.com/docs/en/hooks): the common fields ``session_id``,
``transcript_path``, ``cwd``, ``permission_mode``, ``hook_event_name``, and per
event:

* ``PreToolUse``: ``tool_name``, ``tool_input``, ``tool_use_id``. For ``Write``
  and ``Edit`` (and ``MultiEdit``) the file is ``tool_input.file_path``, always
  absolute; ``NotebookEdit`` names it ``tool_input.notebook_path``. Exit code 2
  blocks the call and Claude is shown stderr as the reason.
* ``PostToolUse``: the same, plus ``tool_response``; the tool has run. Exit 2
  shows stderr to Claude.
* ``Stop`` (Claude finished responding; exit 2 would keep it going, so the guard
  never exits 2 there) and ``SessionEnd`` (with ``reason``; 1.5 s budget).

The answers:

* before an edit, take (or confirm) this agent's exclusive lock on the file's
  repository path, creating the resource if needed; refuse (exit 2) when another
  agent holds it, naming the holder, or when the file's content is not what this
  session last read or wrote (it changed under the agent: read it again);
* after a ``Read``, remember the hash read; after an edit, record the new hash as
  the resource's next version, written with the lock's fence;
* at ``Stop`` and ``SessionEnd``, release this session's locks.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, NamedTuple

from orchestrator_client import _ops
from orchestrator_client.client import Client
from orchestrator_client.errors import (
    Busy,
    LeaseLost,
    NameTaken,
    NotFound,
    OrchestratorError,
    ResourceNotFound,
    Unreachable,
)
from orchestrator_client.guard.config import Settings
from orchestrator_client.guard.repo import content_hash, repository_path
from orchestrator_client.guard.state import SessionState, forget, locked, state_file

EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
READ_TOOLS = frozenset({"Read"})


class Outcome(NamedTuple):
    """What the hook process does: its exit code, one line for stderr (Claude sees it
    on exit 2), and a warning for the user (``systemMessage`` on stdout, exit 0)."""

    code: int = 0
    message: str = ""
    warning: str = ""


ALLOW = Outcome()


def guard_client(settings: Settings) -> Client:
    """A client on the standard library's HTTP (a fast start: see _transport.py)."""
    from orchestrator_client._transport import StdlibTransport

    settings.check()
    transport = StdlibTransport(settings.url, settings.token, settings.timeout)
    return Client(settings.url, settings.token, transport=transport)


def edited_file(event: dict[str, Any]) -> str | None:
    tool_input = event.get("tool_input")
    if not isinstance(tool_input, dict):
        return None
    for key in ("file_path", "notebook_path"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class Session:
    """One hook run of one agent session."""

    def __init__(self, event: dict[str, Any], settings: Settings) -> None:
        self.event = event
        self.settings = settings
        self.file = state_file(
            settings.state_dir, settings.url, settings.token, str(event.get("session_id") or "")
        )
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = guard_client(self.settings)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def located(self) -> tuple[Path, str] | None:
        file = edited_file(self.event)
        return None if file is None else repository_path(file, self.event.get("cwd"))

    # --- PreToolUse ----------------------------------------------------------------------

    def before_edit(self) -> Outcome:
        located = self.located()
        if self.event.get("tool_name") not in EDIT_TOOLS or located is None:
            return ALLOW  # not an edit, or outside any git repository: nothing to guard
        root, name = located
        self.settings.check()
        with locked(self.file) as state:
            try:
                self.take(state, root, name)
            except Busy as busy:
                return Outcome(2, busy_message(name, busy))
            current = content_hash(root / name)
            seen = state.seen(root, name)
        if seen is not None and seen != current:
            return Outcome(2, stale_message(name))
        return ALLOW

    def take(self, state: SessionState, root: Path, name: str) -> dict[str, Any]:
        """This agent's exclusive lock on ``name``, taken or confirmed (and renewed once
        half its lease has passed); the resource is created if it does not exist."""
        ttl = self.settings.ttl
        lock = self.client.lock(name, ttl=ttl, wait=False, renew=False)
        try:
            lock.acquire()
        except ResourceNotFound:
            with contextlib.suppress(NameTaken):  # another agent created it meanwhile
                self.client.create_resource(name, {"sha256": content_hash(root / name)})
            lock.acquire()
        assert lock.info is not None
        held = state.held(root, name)
        if held is not None and held["id"] == lock.id:
            if time.time() - held["renewed_at"] > ttl / 2:
                lock.renew()
                state.renewed(root, name)
        else:
            state.hold(root, name, lock.info, time.time())
        return lock.info

    # --- PostToolUse ---------------------------------------------------------------------

    def after_tool(self) -> Outcome:
        tool = self.event.get("tool_name")
        located = self.located()
        if located is None or tool not in EDIT_TOOLS | READ_TOOLS:
            return ALLOW
        root, name = located
        current = content_hash(root / name)
        if tool in READ_TOOLS:  # what this session has read: no request to the server
            with locked(self.file) as state:
                state.saw(root, name, current)
            return ALLOW
        self.settings.check()
        with locked(self.file) as state:
            state.saw(root, name, current)
            held = state.held(root, name)
            if held is None:  # edited without the lock (the guard failed open before it)
                try:
                    held = self.take(state, root, name)
                except Busy as busy:
                    return Outcome(2, unlocked_edit_message(name, busy))
            try:
                self.client.write(name, {"sha256": current}, fence=held["fence"])
            except LeaseLost:  # expired, revoked, or a stale fence: somebody else may hold it
                state.drop(root, name)
                return Outcome(2, lost_message(name))
        return ALLOW

    # --- Stop, SessionEnd ----------------------------------------------------------------

    def release_all(self, *, forget_session: bool) -> Outcome:
        """Release this session's locks (what cannot be released expires with its lease)."""
        with locked(self.file) as state:
            held = state.all_held()
            if held:
                self.settings.check()
            for root, name, lock in held:
                with contextlib.suppress(LeaseLost, NotFound):  # it had ended already
                    self.client.run(_ops.release(lock["id"]))
                state.drop(root, name)
        if forget_session:
            forget(self.file)
        return ALLOW


def handle(event: dict[str, Any], settings: Settings) -> Outcome:
    """The outcome of one hook event (errors are the caller's: cli.py applies the fail-safe)."""
    session = Session(event, settings)
    try:
        name = event.get("hook_event_name")
        if name == "PreToolUse":
            return session.before_edit()
        if name == "PostToolUse":
            return session.after_tool()
        if name in ("Stop", "SessionEnd"):
            return session.release_all(forget_session=name == "SessionEnd")
        return ALLOW
    finally:
        session.close()


# --- what Claude is told ---------------------------------------------------------------


def _left(expires_at: str | None) -> str:
    from datetime import UTC, datetime

    if not expires_at:
        return ""
    try:
        ends = datetime.fromisoformat(expires_at)
    except ValueError:
        return ""
    seconds = max(0, round((ends - datetime.now(UTC)).total_seconds()))
    return f"{seconds // 60}m{seconds % 60:02d}s left" if seconds >= 60 else f"{seconds}s left"


def _holders(name: str, holders: list[dict[str, Any]]) -> str:
    described = []
    for holder in holders:
        parts = [holder.get("mode", "")]
        if holder.get("resource") and holder["resource"] != name:
            parts.append(f"its lock on {holder['resource']} covers it")
        parts.append(_left(holder.get("expires_at")))
        details = ", ".join(part for part in parts if part)
        described.append(f"{holder.get('agent', '?')} ({details})" if details else holder["agent"])
    return " and ".join(described)


def busy_message(name: str, busy: Busy) -> str:
    holders = busy.holders
    who = _holders(name, holders) if holders else "agents queued before you"
    return (
        f"{name} is locked by {who}: do not edit it now. Work on something else and try "
        f"again later, or wait for them to finish; then Read {name} again before you edit it, "
        "since they may have changed it."
    )


def stale_message(name: str) -> str:
    return (
        f"{name} has changed since you last read it (another agent or a person edited it): "
        f"Read {name} again and redo your edit on what it holds now. It is locked for you "
        "meanwhile."
    )


def lost_message(name: str) -> str:
    return (
        f"your lock on {name} ended before this edit was recorded, so another agent may "
        f"have changed {name} meanwhile: Read it again and check that your edit is still right."
    )


def unlocked_edit_message(name: str, busy: Busy) -> str:
    holders = busy.holders
    who = _holders(name, holders) if holders else "another agent"
    return (
        f"{name} was edited without its lock, and {who} holds it now: Read {name} again and "
        "check that neither edit undid the other."
    )


def failed(settings: Settings, error: BaseException, event: str) -> Outcome:
    """The fail-safe, for a server that cannot be reached or a guard that is not set up."""
    if isinstance(error, Unreachable):
        what = f"the Orchestrator at {settings.url} did not answer ({error.detail})"
    elif isinstance(error, OrchestratorError):
        what = f"the Orchestrator at {settings.url} refused the guard's request ({error})"
    else:
        what = f"the guard cannot check this edit ({type(error).__name__}: {error})"
    if event in ("Stop", "SessionEnd"):  # never keep Claude from stopping
        return Outcome(0, f"{what}; the locks of this session expire with their leases", "")
    if settings.fail == "open":
        allowed = f"{what}; the edit is allowed without a lock"
        return Outcome(0, allowed, f"orchestrator-guard: {allowed}")
    return Outcome(
        2,
        f"{what}, and ORCHESTRATOR_GUARD_FAIL=closed refuses edits until it can: tell the user "
        "(start the server, or set ORCHESTRATOR_URL and ORCHESTRATOR_TOKEN).",
    )
