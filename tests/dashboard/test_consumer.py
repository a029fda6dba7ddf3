"""The live feed (ws/events/): real channel layer (Redis), real sessions, real commits.

ORM calls go through database_sync_to_async; its thread's connection is closed
after each test, so that persistent connections (CONN_MAX_AGE None) do not keep
the test database busy when pytest drops it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections

from orchestrator.asgi import application
from orchestrator.core import events as event_log
from orchestrator.core.approvals import approval_decide
from orchestrator.core.control import agents_set_paused, system_set_paused
from orchestrator.core.deadlocks import deadlock_break
from orchestrator.core.events import ALL_EVENTS_GROUP
from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import Event
from orchestrator.core.resources import resource_create
from orchestrator.dashboard import consumers
from orchestrator.dashboard.selectors import feed
from orchestrator.dashboard.selectors.board import board_apply
from tests import factories
from tests.dashboard import builders, scenes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # the Origin is checked against it (dashboard/origins.py)


@pytest_asyncio.fixture(autouse=True)
async def close_thread_connections():
    yield
    await sync_to_async(connections.close_all)()


def headers_for(account: Any) -> list[tuple[bytes, bytes]]:
    return [ORIGIN, HOST, (b"cookie", f"sessionid={builders.session_cookie(account)}".encode())]


async def connect(path: str = "/ws/events/", account: Any = None) -> WebsocketCommunicator:
    account = account or await sync_to_async(builders.viewer)()
    headers = await sync_to_async(headers_for)(account)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    assert connected, code
    return communicator


def database_state() -> dict[str, Any]:
    return feed.feed_snapshot()["state"]


class Client:
    """What a browser does with the frames (static/orchestrator/live.js)."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.state: dict[str, Any] = {}
        self.last_id: int | None = None
        self.events: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        frame = await self.communicator.receive_json_from(timeout=timeout)
        self.frames.append(frame)
        if frame["type"] == "snapshot":
            self.state, self.last_id = frame["state"], frame["last_id"]
        elif frame["type"] == "delta":
            assert frame["since"] == self.last_id, "a gap the client would ask to replay"
            board_apply(self.state, frame["state"])
            self.events.extend(frame["events"])
            self.last_id = frame["last_id"]
        return frame

    async def until(self, last_id: int, timeout: float = 10) -> None:
        """Receive frames until the client has seen every event up to ``last_id``."""
        async with asyncio.timeout(timeout):
            while self.last_id is None or self.last_id < last_id:
                await self.receive(timeout=timeout)


def last_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


# --- who may connect ------------------------------------------------------------------


async def test_anonymous_websocket_is_refused(redis_conn) -> None:
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, HOST])
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4401
    await communicator.disconnect()


async def test_foreign_origin_is_refused(redis_conn) -> None:
    headers = await sync_to_async(headers_for)(await sync_to_async(builders.operator)())
    headers[0] = (b"origin", b"http://evil.example")
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_a_user_outside_both_groups_is_refused(redis_conn) -> None:
    headers = await sync_to_async(headers_for)(await sync_to_async(builders.user)())
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4403
    await communicator.disconnect()


# --- snapshot, deltas, replay ---------------------------------------------------------


def make_holder() -> tuple[Any, Any]:
    team = factories.team()
    holder = factories.agent(team_=team, name="holder")
    resource = resource_create(name="doc", value={"text": "v0"}, team=team)
    return holder, resource


async def test_snapshot_then_deltas_keep_the_client_equal_to_the_database(redis_conn) -> None:
    holder, resource = await sync_to_async(make_holder)()
    communicator = await connect()
    client = Client(communicator)
    snapshot = await client.receive()
    assert snapshot["type"] == "snapshot"
    assert snapshot["last_id"] == await sync_to_async(last_id)()
    assert snapshot["state"]["resources"][str(resource.pk)]["holders"] == []
    assert snapshot["state"]["agents"][str(holder.pk)]["status"] == "idle"

    waiter = await sync_to_async(factories.agent)(team_=holder.team, name="waiter")
    await sync_to_async(lock_acquire)(agent=holder, resource="doc")
    await sync_to_async(lock_acquire)(agent=waiter, resource="doc")
    await client.until(await sync_to_async(last_id)())

    kinds = [event["kind"] for event in client.events]
    assert kinds == ["lock.granted", "lock.waiting"]
    resource_row = client.state["resources"][str(resource.pk)]
    assert [h["agent_name"] for h in resource_row["holders"]] == ["holder"]
    assert [w["agent_name"] for w in resource_row["waiters"]] == ["waiter"]
    assert client.state["agents"][str(waiter.pk)]["status"] == "waiting_lock"
    assert client.state == await sync_to_async(database_state)()
    await communicator.disconnect()


async def test_counts_and_the_switchboard_follow_the_kinds_that_change_them(redis_conn) -> None:
    """A patch carries the open counts and the system flag only for the kinds that
    declare them (core/kinds.py COUNTS, SYSTEM): after each change that moves them, a
    client that applied the patches holds what a fresh snapshot holds."""
    communicator = await connect()
    client = Client(communicator)
    await client.receive()

    async def converged() -> None:
        # Teams made by the factories (no team.created event) are no patch's business.
        await client.until(await sync_to_async(last_id)())
        expected = await sync_to_async(database_state)()
        assert {**client.state, "teams": {}} == {**expected, "teams": {}}

    operator = await sync_to_async(builders.operator)()
    await sync_to_async(system_set_paused)(paused=True, user=operator)
    await converged()
    assert client.state["system"] == {"paused": True}
    await sync_to_async(system_set_paused)(paused=False, user=operator)
    await converged()

    contested = await sync_to_async(scenes.contested_write)()  # an approval and a conflict
    await converged()
    assert client.state["counts"] == {"approvals": 1, "conflicts": 1}
    await sync_to_async(approval_decide)(
        approval_id=contested.approval.pk, decision="reject", user=operator
    )
    await converged()
    assert client.state["counts"] == {"approvals": 0, "conflicts": 0}

    stuck = await sync_to_async(scenes.deadlock)()
    await converged()
    assert client.state["counts"]["conflicts"] == 1
    await sync_to_async(deadlock_break)(
        conflict_id=stuck.conflict.pk, victim_id=stuck.agents[1].pk, user=operator
    )
    await converged()
    assert client.state["counts"]["conflicts"] == 0
    kinds = {event["kind"] for event in client.events}
    assert {"approval.rejected", "deadlock.detected", "deadlock.broken"} <= kinds
    await communicator.disconnect()


async def test_a_push_lost_by_the_layer_is_replayed_from_the_database(
    redis_conn, monkeypatch
) -> None:
    agent = await sync_to_async(factories.agent)()
    communicator = await connect()
    client = Client(communicator)
    await client.receive()
    with monkeypatch.context() as patched:
        patched.setattr(event_log, "publish", lambda last_id: None)  # the layer drops it
        await sync_to_async(agents_set_paused)(agents=[agent], paused=True)
    lost = await sync_to_async(last_id)()
    await sync_to_async(system_set_paused)(paused=True)  # this one is pushed
    await client.until(await sync_to_async(last_id)())
    assert [e["kind"] for e in client.events] == ["agent.paused", "system.paused"]
    assert client.events[0]["id"] == lost
    assert client.state["agents"][str(agent.pk)]["status"] == "paused"
    assert client.state["system"] == {"paused": True}
    assert client.state == await sync_to_async(database_state)()
    await communicator.disconnect()


async def test_a_client_that_saw_a_gap_asks_for_a_replay(redis_conn) -> None:
    agent = await sync_to_async(factories.agent)()
    communicator = await connect()
    client = Client(communicator)
    await client.receive()
    before = client.last_id
    await sync_to_async(agents_set_paused)(agents=[agent], paused=True)
    await sync_to_async(agents_set_paused)(agents=[agent], paused=False)
    await client.until(await sync_to_async(last_id)())
    # The client pretends it missed those frames: it asks again from its old id.
    client.state["agents"].pop(str(agent.pk))
    client.last_id = before
    await communicator.send_json_to({"type": "resume", "last_id": before})
    frame = await client.receive()
    assert frame["type"] == "delta" and frame["since"] == before
    assert [e["kind"] for e in frame["events"]] == ["agent.paused", "agent.resumed"]
    assert client.state == await sync_to_async(database_state)()
    await communicator.disconnect()


async def test_a_reconnecting_client_gets_a_replay_not_a_snapshot(redis_conn) -> None:
    agent = await sync_to_async(factories.agent)()
    since = await sync_to_async(last_id)()
    await sync_to_async(agents_set_paused)(agents=[agent], paused=True)
    communicator = await connect(f"/ws/events/?last_id={since}")
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "delta"
    assert frame["since"] == since
    assert [e["kind"] for e in frame["events"]] == ["agent.paused"]
    assert frame["state"]["agents"][str(agent.pk)]["paused"] is True
    await communicator.disconnect()


async def test_a_client_too_far_behind_gets_a_fresh_snapshot(redis_conn, monkeypatch) -> None:
    monkeypatch.setattr(feed, "REPLAY_LIMIT", 3)
    agent = await sync_to_async(factories.agent)()
    since = await sync_to_async(last_id)()
    for paused in (True, False, True, False):
        await sync_to_async(agents_set_paused)(agents=[agent], paused=paused)
    communicator = await connect(f"/ws/events/?last_id={since}")
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "snapshot"
    assert frame["last_id"] == await sync_to_async(last_id)()
    # Asking for an id the log never had (a restored database) also gets a snapshot.
    await communicator.send_json_to({"type": "resume", "last_id": frame["last_id"] + 1000})
    again = await communicator.receive_json_from(timeout=5)
    assert again["type"] == "snapshot"
    await communicator.disconnect()


# --- coalescing -----------------------------------------------------------------------


async def test_a_burst_of_pushes_is_coalesced_to_at_most_20_frames_a_second(
    redis_conn, monkeypatch
) -> None:
    """Each event is committed and pushed alone (the publisher's own batching is bypassed),
    about as fast as the database allows; the browser still gets few frames."""
    burst = 120
    agent = await sync_to_async(factories.agent)()
    communicator = await connect()
    client = Client(communicator)
    await client.receive()
    monkeypatch.setattr(event_log, "publish", lambda last_id: None)
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    started = loop.time()

    def commit_one(paused: bool) -> int:
        agents_set_paused(agents=[agent], paused=paused)
        return Event.objects.order_by("-id").first().pk

    async def produce() -> int:
        for i in range(burst):
            last_id = await sync_to_async(commit_one)(i % 2 == 0)
            await layer.group_send(ALL_EVENTS_GROUP, {"type": "events.logged", "last_id": last_id})
        return last_id

    final = await produce()
    await client.until(final)
    elapsed = loop.time() - started
    deltas = [frame for frame in client.frames if frame["type"] == "delta"]
    assert len(client.events) == burst
    assert [e["id"] for e in client.events] == sorted({e["id"] for e in client.events})
    # Frames are at least FRAME_INTERVAL apart, so over `elapsed` seconds at most:
    assert len(deltas) <= elapsed / consumers.FRAME_INTERVAL + 1, (len(deltas), elapsed)
    assert len(deltas) < burst  # some pushes shared a frame
    await communicator.disconnect()


TOGGLES = 40


def slow_reads(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every read of the log for the feed takes ``seconds`` longer."""
    quick = consumers.feed_delta

    def slow_delta(**kwargs: Any) -> dict[str, Any] | None:
        time.sleep(seconds)
        return quick(**kwargs)

    monkeypatch.setattr(consumers, "feed_delta", slow_delta)


async def frames_while_toggling() -> tuple[WebsocketCommunicator, Client, list[float]]:
    """A client follows the feed while an agent is paused and resumed TOGGLES times, 20
    events a second, until it has every event. Returns the connection, the client,
    and the gaps (seconds, sorted) between the delta frames' builds, by the database
    clock (their server_time)."""
    agent = await sync_to_async(factories.agent)()
    communicator = await connect()
    client = Client(communicator)
    await client.receive()
    for i in range(TOGGLES):
        await sync_to_async(agents_set_paused)(agents=[agent], paused=i % 2 == 0)
        await asyncio.sleep(0.05)  # the producer's pace, 20 a second (not a wait for anything)
    await client.until(await sync_to_async(last_id)())
    built = [
        datetime.fromisoformat(frame["server_time"])
        for frame in client.frames
        if frame["type"] == "delta"
    ]
    return (
        communicator,
        client,
        sorted((b - a).total_seconds() for a, b in itertools.pairwise(built)),
    )


async def test_a_slow_frame_build_does_not_add_the_frame_interval_on_top(
    redis_conn, monkeypatch
) -> None:
    """Frames are spaced from the start of one build to the start of the next: while
    events keep coming, a build as long as the interval is followed by the next at once."""
    interval = 0.3
    monkeypatch.setattr(consumers, "FRAME_INTERVAL", interval)
    monkeypatch.setattr(consumers, "TAIL_BUDGET", 1.0)  # reads may fill the interval
    slow_reads(monkeypatch, interval)
    communicator, _, gaps = await frames_while_toggling()
    # Spaced from the end of each build, frames would be built every 2 * interval.
    assert gaps[len(gaps) // 2] < 1.5 * interval, gaps
    await communicator.disconnect()


async def test_the_tail_reads_less_often_when_reads_take_longer() -> None:
    """The read budget: the window while reads are quick, then as many times the
    reads' median duration as the budget says, never more than MAX_TAIL_INTERVAL; one
    slow read among quick ones changes nothing."""
    tail = consumers.FeedTail()
    assert tail.interval() == consumers.FRAME_INTERVAL
    for took, expected in (
        (0.002, consumers.FRAME_INTERVAL),
        (0.05, 0.05 / consumers.TAIL_BUDGET),
        (10.0, consumers.MAX_TAIL_INTERVAL),
    ):
        tail.reads.extend([took] * consumers.TAIL_READS)
        assert tail.interval() == pytest.approx(expected)
    tail.reads.extend([0.002] * (consumers.TAIL_READS - 1) + [0.5])
    assert tail.interval() == consumers.FRAME_INTERVAL


async def test_slow_reads_of_the_log_come_less_often_and_the_viewer_keeps_up(
    redis_conn, monkeypatch
) -> None:
    """When a read of the log takes 0.1 s, the tail (budget 0.2) reads about every 0.5 s
    rather than every 0.05 s, and each read still brings everything since the last."""
    slow_reads(monkeypatch, 0.1)
    communicator, client, gaps = await frames_while_toggling()
    assert client.last_id == await sync_to_async(last_id)() and len(client.events) == TOGGLES
    assert gaps and gaps[len(gaps) // 2] >= 0.4, gaps  # not the 0.15 s of read + window
    assert client.state == await sync_to_async(database_state)()
    await communicator.disconnect()


# --- one reader per process ------------------------------------------------------------


async def test_ten_viewers_each_get_every_event_once_and_the_tail_stops_with_the_last(
    redis_conn, monkeypatch
) -> None:
    """Ten viewers of a stream of slow-to-build frames each end equal to the database,
    having been sent every event once, in order, with about as many reads of the log
    as one viewer causes; when they leave, the process's tail stops. (In one process
    the feeds stay in step, so per-feed reads with shared builds read about as
    little: bench/live.py --viewers shows the difference under load.)"""
    reads: list[int] = []
    real_delta = consumers.feed_delta

    def counted(**kwargs: Any) -> dict[str, Any] | None:
        reads.append(kwargs["since"])
        time.sleep(0.05)  # a build that takes a while, as under load: events keep coming
        return real_delta(**kwargs)

    monkeypatch.setattr(consumers, "feed_delta", counted)
    agent = await sync_to_async(factories.agent)()

    async def watch(viewers: int) -> int:
        clients = [Client(await connect()) for _ in range(viewers)]
        for client in clients:
            await client.receive()
        reads.clear()
        for i in range(20):
            await sync_to_async(agents_set_paused)(agents=[agent], paused=i % 2 == 0)
            await asyncio.sleep(0.03)
        final = await sync_to_async(last_id)()
        for client in clients:
            await client.until(final)
            ids = [event["id"] for event in client.events]
            assert ids == sorted(set(ids)) and len(ids) == 20
            assert client.state == await sync_to_async(database_state)()
        count = len(reads)
        for client in clients:
            await client.communicator.disconnect()
        assert consumers.tail._task is None and not consumers.tail._feeds  # the tail stopped
        return count

    one, ten = await watch(1), await watch(10)
    print(f"log reads for 20 events: 1 viewer {one}, 10 viewers {ten}")
    assert 0 < one <= 20 and ten <= one + 5, (one, ten)


async def test_the_tail_serves_a_feed_from_the_frames_it_kept_or_says_it_cannot() -> None:
    def frame(since: int, last: int, agent: str, status: str) -> dict[str, Any]:
        events = [{"id": i, "kind": "agent.paused"} for i in range(since + 1, last + 1)]
        state = {"counts": {"last": last}, "agents": {agent: {"status": status}}}
        return {"type": "delta", "since": since, "last_id": last, "server_time": str(last),
                "events": events, "state": state}  # fmt: skip

    tail = consumers.FeedTail()
    assert tail.after(5) is False  # it has not read the log yet
    tail.last_id = 10
    tail.frames.extend([frame(10, 12, "1", "idle"), frame(12, 15, "2", "running")])
    tail.last_id = 15
    assert tail.after(9) is False  # older than the first kept frame: read for yourself
    assert tail.after(15) is None and tail.after(20) is None  # nothing new
    merged = tail.after(11)  # in the middle of the first frame
    assert (merged["since"], merged["last_id"], merged["server_time"]) == (11, 15, "15")
    assert [e["id"] for e in merged["events"]] == [12, 13, 14, 15]
    assert merged["state"] == {
        "counts": {"last": 15},
        "agents": {"1": {"status": "idle"}, "2": {"status": "running"}},
    }
    last, text = tail.text_after(11)
    assert last == 15 and json.loads(text) == merged
    assert tail.text_after(11)[1] is text  # serialized once for every feed at 11


async def test_patches_merge_as_applying_one_then_the_other() -> None:
    from orchestrator.dashboard.selectors.board import patch_merge

    older = {
        "system": {"paused": False},
        "counts": {"agents": 2},
        "agents": {"1": {"status": "idle"}, "2": {"status": "idle"}},
        "removed": {"resources": ["9"]},
    }
    newer = {
        "system": {"paused": True},
        "counts": {"agents": 1},
        "agents": {"1": {"status": "running"}},
        "resources": {"9": {"name": "back"}},
        "removed": {"agents": ["2"]},
    }
    merged = patch_merge(older, newer)
    assert merged == {
        "system": {"paused": True},
        "counts": {"agents": 1},
        "agents": {"1": {"status": "running"}},
        "resources": {"9": {"name": "back"}},
        "removed": {"agents": ["2"]},
    }
    board = {"agents": {"2": {"status": "idle"}}, "resources": {}}
    stepwise = board_apply(board_apply({**board, "agents": {**board["agents"]}}, older), newer)
    assert board_apply(board, merged) == stepwise


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"kind": "resume"}', "invalid_message"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "resume"}', "invalid_last_id"),
        ('{"type": "resume", "last_id": -1}', "invalid_last_id"),
        ('{"type": "resume", "last_id": "7"}', "invalid_last_id"),
        ('{"type": "resume", "last_id": true}', "invalid_last_id"),
        ('{"type": "resume", "last_id": 1e400}', "invalid_last_id"),
        (json.dumps({"type": "ping", "pad": "x" * 5000}), "too_large"),
    ],
)
async def test_malformed_messages_get_an_error_frame_and_the_feed_goes_on(
    redis_conn, message: str, code: str
) -> None:
    communicator = await connect()
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    await communicator.send_to(text_data=message)
    error = await communicator.receive_json_from(timeout=5)
    assert error == {"type": "error", "error": code, "detail": error["detail"]}
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()


async def test_binary_frames_are_refused_with_an_error_frame(redis_conn) -> None:
    communicator = await connect()
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(bytes_data=b"\x00\xff")
    error = await communicator.receive_json_from(timeout=5)
    assert error["error"] == "binary_unsupported"
    await communicator.send_json_to({"type": "snapshot"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    await communicator.disconnect()
