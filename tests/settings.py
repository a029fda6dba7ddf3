"""Test settings: the real settings, plus what only the test run changes."""

from __future__ import annotations

import os

from orchestrator.settings import *  # noqa: F403
from orchestrator.settings import DATABASES

ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

# One test database per test run, so that concurrent runs on one server (two
# checkouts, CI beside a developer) never drop each other's database.
DATABASES["default"]["TEST"] = {"NAME": f"test_orchestrator_{os.getpid()}"}
