"""The guard's settings, all from the environment (the hook's and git's)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

FAIL_MODES = ("open", "closed")


class ConfigError(Exception):
    """The guard is not configured (or misconfigured): handled like an unreachable server."""


class Settings(NamedTuple):
    url: str
    token: str
    fail: str  # "open": allow when the server cannot be reached (a warning); "closed": refuse
    ttl: int  # lease seconds of the locks the guard takes
    timeout: float  # seconds per request
    state_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """ORCHESTRATOR_URL, ORCHESTRATOR_TOKEN; ORCHESTRATOR_GUARD_FAIL (closed),
        ORCHESTRATOR_GUARD_TTL (600), ORCHESTRATOR_GUARD_TIMEOUT (5),
        ORCHESTRATOR_GUARD_STATE_DIR (``$XDG_STATE_HOME/orchestrator-guard``)."""
        env = os.environ if env is None else env
        fail = env.get("ORCHESTRATOR_GUARD_FAIL", "closed").strip().lower() or "closed"
        if fail not in FAIL_MODES:
            fail = "closed"  # a typo must not turn the guard off
        state_home = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return cls(
            url=env.get("ORCHESTRATOR_URL", "").strip(),
            token=env.get("ORCHESTRATOR_TOKEN", "").strip(),
            fail=fail,
            ttl=max(1, int(_positive(env, "ORCHESTRATOR_GUARD_TTL", 600))),
            timeout=_positive(env, "ORCHESTRATOR_GUARD_TIMEOUT", 5.0),
            state_dir=Path(
                env.get("ORCHESTRATOR_GUARD_STATE_DIR") or Path(state_home) / "orchestrator-guard"
            ),
        )

    def check(self) -> None:
        missing = [
            name
            for name, value in (("ORCHESTRATOR_URL", self.url), ("ORCHESTRATOR_TOKEN", self.token))
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} not set")


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, "").strip() or default)
    except ValueError:
        return default
    return value if value > 0 else default
