"""``orchestrator-guard``: the command line, and its fail-safe.

    orchestrator-guard              a Claude Code hook: the hook's JSON on stdin
    orchestrator-guard pre-commit   git's pre-commit hook

Exit codes in hook mode are Claude Code's: 0 lets the tool call go on, 2 blocks a
PreToolUse call and shows Claude the one line on stderr. A warning for the user
(failing open) is printed as ``{"systemMessage": ...}`` on stdout, which Claude
Code shows when the hook exits 0. Any failure of the guard itself, the server's
included, is turned into the outcome ORCHESTRATOR_GUARD_FAIL asks for: a crash
must not let an edit through when the setting is ``closed`` (Claude Code lets a
tool call go on after any exit code but 2).
"""

from __future__ import annotations

import json
import sys
from typing import Any

USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    from orchestrator_client.guard.config import Settings

    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    settings = Settings.from_env()
    if args[:1] == ["pre-commit"]:
        from orchestrator_client.guard.precommit import pre_commit

        return pre_commit(settings)
    if args and args[:1] != ["hook"]:
        print(f"orchestrator-guard: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return hook(settings, sys.stdin.read())


def hook(settings: Any, raw: str) -> int:
    from orchestrator_client.guard import hooks

    event_name = ""
    try:
        event = json.loads(raw)
        if not isinstance(event, dict):
            raise ValueError("the hook input is not a JSON object")
        event_name = str(event.get("hook_event_name", ""))
        outcome = hooks.handle(event, settings)
    except Exception as exc:  # the fail-safe decides, whatever went wrong
        outcome = hooks.failed(settings, exc, event_name)
    if outcome.warning:
        print(json.dumps({"systemMessage": outcome.warning}))
    if outcome.message:
        print(f"orchestrator-guard: {outcome.message}", file=sys.stderr)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
