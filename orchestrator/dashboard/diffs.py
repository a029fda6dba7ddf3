"""Line diffs of resource values, for the approvals page.

Text values are compared line by line as text; anything else as pretty-printed
JSON (sorted keys, two-space indent), so a change inside an object shows as
the lines it touches.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

MAX_DIFF_LINES = 400


@dataclass(frozen=True)
class DiffLine:
    op: str  # "same", "add", "del"
    text: str


def pretty(value: Any) -> str:
    """A value as the operator reads it: text as is, anything else as indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def value_diff(old: Any, new: Any) -> list[DiffLine]:
    """The lines of ``new`` against ``old`` (cut at MAX_DIFF_LINES)."""
    old_lines = pretty(old).splitlines() or [""]
    new_lines = pretty(new).splitlines() or [""]
    lines: list[DiffLine] = []
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            lines.extend(DiffLine("same", text) for text in old_lines[i1:i2])
            continue
        lines.extend(DiffLine("del", text) for text in old_lines[i1:i2])
        lines.extend(DiffLine("add", text) for text in new_lines[j1:j2])
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], DiffLine("same", f"… {len(lines) - MAX_DIFF_LINES} more")]
    return lines
