"""Fixtures the core's tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.core.wakeups import register, unregister


@pytest.fixture
def woken() -> Iterator[list[dict]]:
    """The wake-ups the services schedule, as their handlers get them (after commit)."""
    calls: list[dict] = []

    def handler(**kw):
        calls.append(kw)

    register(handler)
    yield calls
    unregister(handler)
