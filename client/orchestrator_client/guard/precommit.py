"""``orchestrator-guard pre-commit``: refuse to commit files another agent holds.

Installed as git's pre-commit hook (docs/guard.md). The staged paths (added,
changed, deleted, both sides of a rename) are looked up among the agent's
team's resources: a path is held if another agent holds a live lock on it, or
on a folder above it (``src/`` for ``src/api/views.py``). git aborts the
commit when the hook exits non-zero.
"""

from __future__ import annotations

import subprocess
import sys

from orchestrator_client.client import Client
from orchestrator_client.errors import NotFound, OrchestratorError
from orchestrator_client.guard.config import ConfigError, Settings
from orchestrator_client.guard.repo import staged_paths, toplevel


def folders_above(path: str) -> list[str]:
    """``a/b/c.py`` -> ``["a/", "a/b/"]``: the folder resources that would cover it."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: depth + 1]) + "/" for depth in range(len(parts))]


def holders(client: Client, paths: list[str]) -> dict[str, list[str]]:
    """Each resource name (the paths and the folders above them) -> the agents holding a
    live lock on it. One listing of the team's resources, or one read per name when
    there are too many to list."""
    names = sorted({name for path in paths for name in (path, *folders_above(path))})
    listing = client.resources("")
    if not listing.get("truncated"):
        held = {entry["name"]: list(entry.get("held_by", [])) for entry in listing["resources"]}
        return {name: held.get(name, []) for name in names}
    found: dict[str, list[str]] = {}
    for name in names:
        try:
            found[name] = [holder["agent"] for holder in client.read(name).holders]
        except NotFound:
            found[name] = []
    return found


def refusals(paths: list[str], held: dict[str, list[str]], me: str) -> list[str]:
    lines = []
    for path in paths:
        for name in (path, *folders_above(path)):
            others = [agent for agent in held.get(name, []) if agent != me]
            if others:
                via = "" if name == path else f" (through its lock on {name})"
                lines.append(f"  {path}: held by {', '.join(sorted(set(others)))}{via}")
    return lines


def pre_commit(settings: Settings) -> int:
    try:
        root = toplevel()
        paths = staged_paths(root)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"orchestrator-guard: cannot list the staged files: {exc}", file=sys.stderr)
        return 1
    if not paths:
        return 0
    try:
        return _check(settings, paths)
    except (OrchestratorError, ConfigError, OSError) as exc:
        what = f"orchestrator-guard: cannot check the commit with the Orchestrator ({exc})"
        if settings.fail == "open":
            print(f"{what}; committing anyway (ORCHESTRATOR_GUARD_FAIL=open)", file=sys.stderr)
            return 0
        print(f"{what}; refused (ORCHESTRATOR_GUARD_FAIL=closed)", file=sys.stderr)
        return 1


def _check(settings: Settings, paths: list[str]) -> int:
    from orchestrator_client.guard.hooks import guard_client

    with guard_client(settings) as client:
        me = client.whoami()["agent"]["name"]
        lines = refusals(paths, holders(client, paths), me)
    if not lines:
        return 0
    print(
        "orchestrator-guard: not committing: other agents hold staged files "
        "(wait until they release them, or unstage them with `git restore --staged`):\n"
        + "\n".join(lines),
        file=sys.stderr,
    )
    return 1
