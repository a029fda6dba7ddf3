"""Reads for the live feed: the frames the consumer sends, built from the database.

A frame is built in one call (one thread hop from the consumer's event loop).
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.events import event_messages_after, log_end
from orchestrator.core.queue import db_now
from orchestrator.dashboard.selectors.board import board_patch, board_snapshot
from orchestrator.dashboard.selectors.views import View, view_snapshot

# A browser further behind than this gets a fresh snapshot instead of a replay.
REPLAY_LIMIT = 500


def server_time() -> str:
    """The database clock (the one leases run on), for the browsers' countdowns."""
    return db_now().isoformat()


def feed_snapshot() -> dict[str, Any]:
    """A snapshot frame: the whole board and the id of the last event it includes."""
    snapshot = board_snapshot()
    return {"type": "snapshot", "server_time": server_time(), **snapshot}


def feed_delta(*, since: int, limit: int | None = None) -> dict[str, Any] | None:
    """A delta frame with every event after ``since``, read from the log (ids are in
    commit order, so nothing committed before the last one can be missing), and the
    board patch they call for. None when a snapshot is due instead: more than
    ``limit`` (default REPLAY_LIMIT) events to replay, or ``since`` beyond the end of the log.
    """
    limit = REPLAY_LIMIT if limit is None else limit
    upto, now = log_end()
    if since > upto:
        return None
    events = event_messages_after(since, limit=limit + 1, upto=upto)
    if len(events) > limit:
        return None
    return {
        "type": "delta",
        "since": since,
        "last_id": events[-1]["id"] if events else since,
        "server_time": now.isoformat(),
        "events": events,
        "state": board_patch(events) if events else {},
    }


def feed_view_snapshot(view: View) -> dict[str, Any]:
    """A snapshot frame of what one page shows (selectors/views.py), not the whole board."""
    return {"type": "snapshot", "server_time": server_time(), **view_snapshot(view)}
