"""A live frame costs what its events touched, not the board's size (issue 18, point 3):
the delta for one lock event reads the same rows with the same queries on a board ten
times larger (the fixture of bench/scale.py)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench.scale import build
from orchestrator.core.events import last_event_id
from orchestrator.core.locks import lock_acquire, lock_release, lock_request_cancel
from orchestrator.core.models import Agent
from orchestrator.core.resources import resource_write
from orchestrator.dashboard.selectors.feed import feed_delta

pytestmark = pytest.mark.django_db(transaction=True)

SHAPE = {"agents": 10, "resources": 40, "locks": 20, "waits": 5, "deadlocks": 0}


def frames(board) -> list[tuple[str, int, dict[str, list[str]]]]:
    """(event kind, queries, ids of each collection in the patch) of the frame of each
    event: an acquire, a write, a release, a queued acquire and its cancel, by an agent
    of the board's first team that holds locks and that nobody waits for."""
    team_id = board.team_ids[0]
    agent = Agent.objects.select_related("team").get(pk=board.agents[team_id][-2])
    free, chained = board.free(team_id)[0], board.resources[team_id][0]
    out = []

    def frame(operation):
        since = last_event_id()
        result = operation()
        with CaptureQueriesContext(connection) as captured:
            delta = feed_delta(since=since)
        (event,) = delta["events"]
        ids = {name: sorted(rows) for name, rows in delta["state"].items() if name != "counts"}
        out.append((event["kind"], len(captured), ids))
        return result

    lock = frame(lambda: lock_acquire(agent=agent, resource=free)).lock
    frame(lambda: resource_write(agent=agent, resource=free, value=1, fence=lock.token))
    frame(lambda: lock_release(lock_id=lock.pk, agent=agent))
    queued = frame(lambda: lock_acquire(agent=agent, resource=chained))
    assert queued.status == "waiting"
    frame(lambda: lock_request_cancel(request_id=queued.request.pk, agent=agent))
    return out


def test_a_frame_reads_what_its_event_touched_whatever_the_board() -> None:
    small = build(teams=1, **SHAPE)
    first = frames(small)
    assert [kind for kind, _, _ in first] == [
        "lock.granted",
        "resource.written",
        "lock.released",
        "lock.waiting",
        "request.cancelled",
    ]
    # Nine more teams of the same shape: a board ten times larger.
    build(teams=9, prefix="more-", **{key: n * 9 for key, n in SHAPE.items()})
    again = frames(small)
    assert [(kind, queries) for kind, queries, _ in again] == [
        (kind, queries) for kind, queries, _ in first
    ]
    # One agent and one resource in each frame, on either board.
    for _, _, ids in again:
        assert {name: len(rows) for name, rows in ids.items()} == {"agents": 1, "resources": 1}
