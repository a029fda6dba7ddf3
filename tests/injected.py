"""Failures injected into a service's transaction, for tests of what commits together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.core import events


class Injected(RuntimeError):
    """The failure :func:`failing_with` raises."""


@contextmanager
def failing_with(kind: str) -> Iterator[None]:
    """While it lasts, every service transaction that emits an event of ``kind`` fails
    (raises Injected) as it inserts its events, its last statement: after everything
    else it did, so nothing of it may commit."""

    def observer(buffered: list) -> None:
        if any(event.kind == kind for event in buffered):
            raise Injected(f"injected: the transaction fails after {kind}")

    events.observe(observer)
    try:
        yield
    finally:
        events._observers.remove(observer)
