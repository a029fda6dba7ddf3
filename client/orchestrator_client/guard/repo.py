"""Where an edited file is in its git repository, and what it holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def repository_path(file_path: str, cwd: str | None = None) -> tuple[Path, str] | None:
    """``(root, path)`` for a file: the root of the git repository it is in (the
    nearest folder above it with a ``.git``), and its path from there with ``/``
    separators, the name of its resource. None outside any repository."""
    path = Path(file_path)
    if not path.is_absolute():
        path = Path(cwd or os.getcwd()) / path
    path = Path(os.path.abspath(path))
    # Symbolic links in the folders above are resolved, so that one file has one name.
    folder = path.parent.resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate, (folder / path.name).relative_to(candidate).as_posix()
    return None


def content_hash(path: Path) -> str | None:
    """The SHA-256 of the file's bytes, hex; None if there is no such file."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


def git(root: Path | None, *args: str) -> str:
    import subprocess

    # The user's own git, from PATH, with arguments of ours (S603, S607).
    done = subprocess.run(  # noqa: S603
        ["git", *args],  # noqa: S607
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def staged_paths(root: Path) -> list[str]:
    """The paths a commit would change (added, changed, renamed from and to, deleted)."""
    out = git(root, "diff", "--cached", "--name-only", "--no-renames", "-z")
    return sorted({name for name in out.split("\0") if name})


def toplevel() -> Path:
    return Path(git(None, "rev-parse", "--show-toplevel").strip())
