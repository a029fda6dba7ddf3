"""Waking agents after commit: a lock was granted, an approval decided, a wait aborted.

The coordination core does not know how agents run; the runtime registers a
handler (``register``) that enqueues the agent's continuation. Handlers run
only after the transaction that caused the wake-up commits, so a woken agent
always sees the new state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

logger = logging.getLogger(__name__)

Handler = Callable[..., None]
_handlers: list[Handler] = []


def register(handler: Handler) -> Handler:
    """Call ``handler(agent_id=, step_id=, reason=)`` after each committed wake-up."""
    if handler not in _handlers:
        _handlers.append(handler)
    return handler


def unregister(handler: Handler) -> None:
    if handler in _handlers:
        _handlers.remove(handler)


def schedule(*, agent_id: int, step_id: int | None, reason: str) -> None:
    """Wake ``agent_id`` once the current transaction commits."""

    def run() -> None:
        for handler in list(_handlers):
            try:
                handler(agent_id=agent_id, step_id=step_id, reason=reason)
            except Exception:  # one failing handler must not hide the others
                logger.exception("wake-up handler %r failed", handler)

    transaction.on_commit(run)
