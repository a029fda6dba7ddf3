"""``orchestrator-guard``: the Orchestrator's locks around a coding agent's edits.

Run by Claude Code's hooks (``PreToolUse``, ``PostToolUse``, ``Stop``,
``SessionEnd``; the hook's JSON on stdin) and by git's pre-commit hook
(``orchestrator-guard pre-commit``). docs/guard.md has the settings to copy.
Modules: ``cli`` (entry point and fail-safe), ``hooks`` (the Claude Code events),
``precommit``, ``config`` (environment), ``repo`` (paths and hashes), ``state``
(what this session has seen and holds).
"""
