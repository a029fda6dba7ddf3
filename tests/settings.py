"""Test settings: the real settings, plus the host names test clients use."""

from __future__ import annotations

from orchestrator.settings import *  # noqa: F403

ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
