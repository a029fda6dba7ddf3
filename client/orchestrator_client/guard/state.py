"""What one agent session has seen and holds, kept between the guard's runs.

Each hook is a new process, so the guard keeps, per session, a small JSON file:
for each repository path, the content hash this session last read or wrote
(``seen``) and the lock it holds on it (``held``: id, fence, when it was last
renewed by this machine's clock). Hooks of one session can run at once (parallel
tool calls), so every change happens under an exclusive ``flock`` of the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one hook at a time is assumed
    fcntl = None  # type: ignore[assignment]


def state_file(state_dir: Path, url: str, token: str, session_id: str) -> Path:
    """The session's file: one per server, agent (token) and session."""
    agent = hashlib.sha256(f"{url}\0{token}".encode()).hexdigest()[:16]
    session = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in session_id)
    session = session[:120] or "no-session"
    return state_dir / f"{agent}-{session}.json"


class SessionState:
    """The session's record; use :func:`locked` to read and change it."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.changed = False

    def _repo(self, root: Path) -> dict[str, Any]:
        return self.data.setdefault("repos", {}).setdefault(str(root), {"seen": {}, "held": {}})

    def seen(self, root: Path, name: str) -> str | None:
        """The hash this session last read or wrote of ``name``; None if it has not."""
        return self._repo(root)["seen"].get(name)

    def saw(self, root: Path, name: str, sha256: str | None) -> None:
        seen = self._repo(root)["seen"]
        if sha256 is None:
            seen.pop(name, None)
        else:
            seen[name] = sha256
        self.changed = True

    def held(self, root: Path, name: str) -> dict[str, Any] | None:
        return self._repo(root)["held"].get(name)

    def hold(self, root: Path, name: str, lock: dict[str, Any], renewed_at: float) -> None:
        self._repo(root)["held"][name] = {
            "id": lock["id"],
            "fence": lock["fence"],
            "renewed_at": renewed_at,
        }
        self.changed = True

    def renewed(self, root: Path, name: str) -> None:
        held = self.held(root, name)
        if held is not None:
            held["renewed_at"] = time.time()
            self.changed = True

    def drop(self, root: Path, name: str) -> None:
        self._repo(root)["held"].pop(name, None)
        self.changed = True

    def all_held(self) -> list[tuple[Path, str, dict[str, Any]]]:
        return [
            (Path(root), name, held)
            for root, repo in self.data.get("repos", {}).items()
            for name, held in repo.get("held", {}).items()
        ]

    def save(self) -> None:
        # Written aside, then renamed over: a reader never sees half a file.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(self.data))
        os.replace(temporary, self.path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[SessionState]:
    """The session's state, under an exclusive lock of its file; saved on leaving the
    block if it changed, even when the block raised."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_suffix(".lock"), "a") as guard:
        if fcntl is not None:
            fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            data = {}  # a damaged record: start afresh (the server still has the locks)
        state = SessionState(path, data if isinstance(data, dict) else {})
        try:
            yield state
        finally:  # what was learnt before a failure (a hash read, a lock taken) is kept
            if state.changed:
                state.save()


def forget(path: Path) -> None:
    """Remove the session's files (at its end)."""
    for leftover in (path, path.with_suffix(".lock")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
