"""The live dashboard: time to show the Overview, and push latency from commit to a browser.

Run:  .venv/bin/python bench/live.py [--seconds 10] [--layer both|core|pubsub] [--rates 50,500]
                                    [--reps 7] [--viewers 20] [--json FILE] [--plot PNG]

On a realistic board (200 agents in 10 teams, 2,000 resources: 286 held, 76
lock requests waiting (30 queues two deep), 3 open deadlocks, 20 contested
writes waiting for an operator; a running run per team with 6 steps per
agent), it measures:

* Overview, in-process: ``GET /`` through Django's test Client (the page is a
  shell that the browser fills from the live board), and ``feed_snapshot()``,
  the selector the WebSocket consumer sends on connect.
* Overview, end to end against a real daphne process: ``GET /`` over HTTP with
  a session cookie, then a WebSocket connect to ``ws/events/`` until the
  snapshot frame is received: what a browser waits for before it can draw the
  board (the browser's own drawing is not included). Target: under 500 ms.
  Each figure: one warm-up, then ``--reps`` repetitions, median and max.
* Push latency, per event: producer processes commit real services (lock
  acquire, then release: one transaction and one event each, on free resources
  of the board) at a paced rate; each records the time of every event id just
  after its commit (in the on-commit hook that hands events to the publisher).
  A WebSocket client (the ``websockets`` library) connected to daphne's
  ``ws/events/`` with a viewer's session records when each event id arrives
  in a delta, and behaves like live.js: a delta that does not follow its last
  id is a gap, answered by a ``resume``; the events of the answer count as
  replayed, all others as pushed. Events still missing a few seconds after the
  producers stop are reported as missed. Latency = receive time - commit time
  (both ``time.monotonic()``, the same clock for every process on Linux).
  Target: p99 under 100 ms at 50 events/s.
* The floor, in the same run against the same daphne process: a process that
  calls channels_redis ``group_send`` directly (one message per event, at the
  same rates, time stamped just before the call), to a minimal consumer that
  forwards each message to its WebSocket client as it comes: no database, no
  coalescing. Its messages are numbered, so drops are counted exactly.

* Viewers against agents (``--viewers 20``; 0 skips it): 4 processes cycle
  locks as fast as they can (acquire without queueing, release: two commits and
  two events per cycle) on 10 hot resources, for ``--seconds``, with no
  dashboard feed open and with 20, in turns (5 rounds each, on the project's
  pub/sub layer). It reports the lock cycles per second of each round and the
  ratio with viewers / without (target: 0.9 or more); for each round with
  viewers, the frames per second each viewer received, the snapshots it was
  sent after its first (a reset: it fell too far behind for a replay), and the
  most events any viewer had not been sent yet (sampled every 0.1 s, with
  whether an advisory lock was waited for in pg_locks: a writer behind a
  reader's event-log barrier); and daphne's CPU (cores used, from /proc), beside
  this process's (the viewers' clients, which check each frame's ids as live.js
  does but decode no further: browsers run elsewhere, the agents run here).
  Target: every viewer keeps up, no resets.

Both channels_redis layers are measured (``--layer both``, the default), one daphne
process each, taking turns rate by rate so that they share the load of the moment:
RedisChannelLayer (``core``) and RedisPubSubChannelLayer (``pubsub``, the project's
setting); each run of daphne and the producers gets the layer by a settings
override in the process, the project's settings are not changed.

It uses its own database (``orchestrator_bench_live`` on the server of
DATABASE_URL, created and migrated on each run) and Redis database 8.
Latencies depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locks import bench_database_url, recreate_database

from orchestrator.processes import Helper, HelperError, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "orchestrator_bench_live"
REDIS_URL = "redis://127.0.0.1:6379/8"
LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
FLOOR_GROUP = "bench.floor"
FLOOR_PATH = "/ws/bench-floor/"
RATES = (50, 500)
PRODUCER_RATE = 125  # events per second one producer process is asked for (500/s: 4)
GRACE = 5.0  # seconds to wait for the last events after the producers stop
TARGET_OVERVIEW_MS = 500.0
TARGET_P99_MS = 100.0
TARGET_P99_RATE = 50
READY = "ready"

# The board: agents 0..119 hold two resources each, 120..159 hold one and wait for one
# held by 0..39, 160..189 hold nothing and queue second behind them, 190..195 form three
# deadlocked pairs, 196..199 are the producers of the latency runs.
N_TEAMS, N_AGENTS, N_RESOURCES = 10, 200, 2000
PRODUCER_AGENTS = range(196, 200)
PRODUCER_RESOURCES = 1500  # producer p cycles through res-(1500 + 100 p) .. +99, all free
# The producers and the resources they cycle on (those above, and the hot ones below)
# belong to one team: they name them as agents of that team, with no grant to look up.
PRODUCER_TEAM = 6
PRODUCED = range(PRODUCER_RESOURCES, 1960)
# The viewers measurement: the producer agents cycle locks on 10 hot free resources.
HOT_RESOURCES = [f"res-{1950 + k:04d}" for k in range(10)]
VIEWERS = 20
VIEWER_ROUNDS = 5
TARGET_VIEWERS_RATIO = 0.9


# --- processes: environment and the channel layer ------------------------------------


def environment() -> dict[str, str]:
    """The environment of every process of the bench (database, Redis, hosts)."""
    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(BENCH_DB),
        "REDIS_URL": REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1,testserver",
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "PYTHONUNBUFFERED": "1",
    }


def setup(layer: str) -> None:
    """Django on the bench database, with the channel layer ``layer`` (core or pubsub)."""
    os.environ.update(environment())
    from django.conf import settings

    # Before anything asks for a layer; the project's settings module is left as it is.
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": LAYERS[layer], "CONFIG": {"hosts": [REDIS_URL], "prefix": "bench"}}
    }
    import django

    django.setup()


def serve(port: int, layer: str) -> None:
    """The daphne process: the project's ASGI application, plus the floor's route."""
    os.environ.update(environment(), ORCHESTRATOR_DB_POOL="1")  # as asgi.py asks
    setup(layer)
    from daphne.server import Server  # installs the asyncio reactor: before twisted is used

    from orchestrator.asgi import application as project

    floor = floor_consumer().as_asgi()

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == FLOOR_PATH:
            return await floor(scope, receive, send)
        return await project(scope, receive, send)

    Server(application=application, endpoints=[f"tcp:port={port}:interface=127.0.0.1"]).run()


def floor_consumer() -> type:
    """A consumer that only forwards what the group sends: the floor of the push path."""
    from channels.generic.websocket import AsyncWebsocketConsumer

    class FloorConsumer(AsyncWebsocketConsumer):
        groups = [FLOOR_GROUP]

        async def bench_floor(self, message: dict[str, Any]) -> None:
            await self.send(text_data=json.dumps({"seq": message["seq"], "t": message["t"]}))

    return FloorConsumer


class Daphne:
    """daphne in a process of its own, with the layer under test."""

    def __init__(self, layer: str) -> None:
        self.port = free_port()
        self.log = Path(tempfile.gettempdir()) / f"bench-live-daphne-{layer}.log"
        self.log.unlink(missing_ok=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.port)]
        self.helper = Helper(
            [*command, "--layer", layer],
            name="daphne",
            ready=http_ok(f"{self.base}/healthz"),
            log=self.log,
            env=environment(),
            cwd=ROOT,
            start_timeout=60,
            new_session=False,
        )
        try:
            self.helper.start()
        except HelperError as exc:
            raise SystemExit(str(exc)) from None
        self.process = self.helper.process

    def stop(self) -> None:
        self.helper.stop()


def http_get(port: int, path: str, cookie: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}"} if cookie else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


# --- the board ----------------------------------------------------------------------


def lorem(rng: random.Random, words: int) -> str:
    vocabulary = ("agent", "lock", "lease", "fence", "write", "version", "queue", "plan")
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def build_board(seed: int = 5) -> dict[str, int]:
    """Teams, agents, runs and steps, resources (bulk); locks, waits, deadlocks and
    contested writes through the services, as agents make them. Returns the counts."""
    from django.db.models import Q

    from orchestrator.core.locks import lock_acquire
    from orchestrator.core.models import (
        Agent,
        AgentStatus,
        Approval,
        Conflict,
        Event,
        Lock,
        LockRequest,
        Resource,
        ResourceGrant,
        ResourceVersion,
        Run,
        Step,
        Team,
    )
    from orchestrator.core.resources import resource_write
    from orchestrator.core.tenancy import qualify

    rng = random.Random(seed)
    teams = Team.objects.bulk_create(
        Team(
            name=f"team-{t}",
            conflict_policy="ask_operator" if t < 5 else "reject",
            deadlock_policy="ask_operator",
        )
        for t in range(N_TEAMS)
    )
    agents = Agent.objects.bulk_create(
        Agent(
            name=f"agent-{i:03d}",
            team=teams[PRODUCER_TEAM if i in PRODUCER_AGENTS else i % N_TEAMS],
            role=lorem(rng, 12),
            status=AgentStatus.RUNNING if i not in PRODUCER_AGENTS else AgentStatus.IDLE,
        )
        for i in range(N_AGENTS)
    )
    runs = []
    for team in teams:  # one running run per team, and two finished ones
        runs.append(Run(team=team, goal=lorem(rng, 20), status=Run.Status.RUNNING))
        runs += [Run(team=team, goal=lorem(rng, 20), status=Run.Status.FINISHED) for _ in "ab"]
    runs = Run.objects.bulk_create(runs)
    running = {run.team_id: run for run in runs if run.status == Run.Status.RUNNING}
    steps = []
    for agent in agents:
        for number in range(1, 7):
            status = Step.Status.DONE if number < 6 else Step.Status.RUNNING
            steps.append(
                Step(run=running[agent.team_id], agent=agent, number=number, status=status)
            )
    Step.objects.bulk_create(steps)
    resources = Resource.objects.bulk_create(
        Resource(
            name=f"res-{i:04d}",
            team=teams[PRODUCER_TEAM if i in PRODUCED else i % N_TEAMS],
            value={"title": f"Section {i}", "text": lorem(rng, 40), "items": list(range(i % 7))},
        )
        for i in range(N_RESOURCES)
    )
    ResourceVersion.objects.bulk_create(
        ResourceVersion(resource=r, version=0, value=r.value) for r in resources
    )

    team_names = {team.pk: team.name for team in teams}

    def acquire(agent: int, resource: int) -> None:
        """Another team's resource is shared with the agent's team, then named team::name."""
        res, by = resources[resource], agents[agent]
        name = res.name
        if res.team_id != by.team_id:
            ResourceGrant.objects.get_or_create(
                owner_id=res.team_id, team_id=by.team_id, resource=res, access="read_write"
            )
            name = qualify(team_names[res.team_id], res.name)
        lock_acquire(agent=by, resource=name, ttl=86400)

    for a in range(120):  # held: agent a holds res a and a + 120 (same team)
        acquire(a, a)
        acquire(a, a + 120)
    for a in range(120, 160):  # hold one, wait for one held by agents 0..39
        acquire(a, a + 120)
        acquire(a, a - 120)
    for a in range(160, 190):  # second in the queues of res 0..29
        acquire(a, a - 160)
    for pair in range(3):  # deadlocks: each holds one and waits for the other's
        a, b = 190 + 2 * pair, 191 + 2 * pair
        ra, rb = 400 + 2 * pair, 401 + 2 * pair
        acquire(a, ra)
        acquire(b, rb)
        acquire(a, rb)
        acquire(b, ra)
    # Contested writes: two agents of a team with ask_operator write from version 0.
    contested = [i for i in range(1000, 1200) if i % N_TEAMS < 5][:20]
    for n, i in enumerate(contested):
        first, second = i % N_TEAMS + 10 * (n % 6), i % N_TEAMS + 10 * (n % 6) + 60
        for writer in (first, second):
            resource_write(
                agent=agents[writer],
                resource=resources[i].name,
                value={"title": f"Section {i}", "text": lorem(rng, 40)},
                expected_version=0,
            )
    return {
        "agents": Agent.objects.count(),
        "resources": Resource.objects.count(),
        "held": Lock.objects.filter(released_at__isnull=True).count(),
        "waiting": LockRequest.objects.filter(status="waiting").count(),
        "approvals": Approval.objects.filter(status="pending").count(),
        "conflicts": Conflict.objects.filter(status="open").count(),
        "deadlocks": Conflict.objects.filter(Q(kind="deadlock") & Q(status="open")).count(),
        "events": Event.objects.count(),
    }


def viewer_cookie() -> str:
    """A session for a user of the viewers group (who may watch the feed)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from orchestrator.dashboard.groups import groups_ensure
    from orchestrator.dashboard.permissions import VIEWERS_GROUP

    user = get_user_model().objects.create_user("bench-viewer", "viewer@example.com", "x")
    user.groups.add(groups_ensure()[VIEWERS_GROUP])
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# --- figures --------------------------------------------------------------------------


@dataclass
class Timing:
    label: str
    samples_ms: list[float]
    cold_ms: float
    short: str  # for the plot
    target: bool = False

    @property
    def median(self) -> float:
        return percentile(self.samples_ms, 0.5)

    @property
    def max(self) -> float:
        return max(self.samples_ms)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value below which a fraction ``q`` of the samples lie)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def timed(function: Any, reps: int) -> tuple[float, list[float]]:
    """Milliseconds of one warm-up call (the cold figure) and of ``reps`` further calls."""
    began = time.perf_counter()
    function()
    cold = (time.perf_counter() - began) * 1000
    samples = []
    for _ in range(reps):
        began = time.perf_counter()
        function()
        samples.append((time.perf_counter() - began) * 1000)
    return cold, samples


def overview_in_process(cookie: str, reps: int) -> tuple[list[Timing], int]:
    """GET / through the test Client, and the snapshot the consumer sends on connect."""
    from django.test import Client

    from orchestrator.dashboard.selectors.feed import feed_snapshot

    client = Client()
    client.cookies["sessionid"] = cookie

    def page() -> None:
        response = client.get("/")
        assert response.status_code == 200, response.status_code

    size = len(json.dumps(feed_snapshot(), ensure_ascii=False, default=str).encode())
    page_cold, page_ms = timed(page, reps)
    snap_cold, snap_ms = timed(feed_snapshot, reps)
    return [
        Timing(
            "Overview page, test Client (in-process)", page_ms, page_cold, "page\n(test Client)"
        ),
        Timing(
            "snapshot build, feed_snapshot() (in-process)", snap_ms, snap_cold, "snapshot\nbuild"
        ),
    ], size


async def ws_connect(url: str, cookie: str, origin: str) -> Any:
    from websockets.asyncio.client import connect

    return await connect(
        url,
        origin=origin,
        additional_headers={"Cookie": f"sessionid={cookie}"},
        max_size=None,
        open_timeout=30,
    )


async def first_snapshot(ws: Any) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "snapshot":
            return frame


async def overview_end_to_end(server: Daphne, cookie: str, reps: int) -> list[Timing]:
    """GET / over HTTP, then WebSocket connect until the snapshot frame, against daphne."""
    page_ms, ws_ms, both_ms = [], [], []
    for _ in range(reps + 1):  # the first is the warm-up
        began = time.perf_counter()
        status, _ = await asyncio.to_thread(http_get, server.port, "/", cookie)
        assert status == 200, status
        paged = time.perf_counter()
        ws = await ws_connect(f"{server.ws}/ws/events/", cookie, server.base)
        await first_snapshot(ws)
        done = time.perf_counter()
        await ws.close()
        page_ms.append((paged - began) * 1000)
        ws_ms.append((done - paged) * 1000)
        both_ms.append((done - began) * 1000)
        await asyncio.sleep(0.3)  # past the consumer's shared-build window (frames.FRESH)
    return [
        Timing("Overview page, HTTP GET / to daphne", page_ms[1:], page_ms[0], "page\n(HTTP)"),
        Timing(
            "WebSocket connect -> snapshot frame (daphne)",
            ws_ms[1:],
            ws_ms[0],
            "WebSocket\n-> snapshot",
        ),
        Timing(
            "page + snapshot: the board can be drawn",
            both_ms[1:],
            both_ms[0],
            "page +\nsnapshot",
            target=True,
        ),
    ]


@dataclass
class Latency:
    layer: str
    path: str  # "dashboard" or "floor"
    rate: int
    seconds: float
    sent: int
    latencies_ms: list[float] = field(repr=False)
    # dashboard: commit -> the publisher's group_send (the rest is daphne, the consumer,
    # the network and the client)
    publish_ms: list[float] = field(default_factory=list, repr=False)
    pushed: int = 0
    replayed: int = 0
    late: int = 0  # received more than 1 s after commit
    missed: int = 0
    frames: int = 0
    gaps: int = 0
    snapshots: int = 0
    errors: int = 0
    layer_drops: int = 0  # pushes RedisChannelLayer dropped for the client (channel full)

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if not k.endswith("_ms")}
        data.update(
            achieved=round(self.achieved, 1),
            p50_ms=round(percentile(self.latencies_ms, 0.5), 2),
            p99_ms=round(percentile(self.latencies_ms, 0.99), 2),
            max_ms=round(max(self.latencies_ms, default=math.nan), 2),
            publish_p50_ms=round(percentile(self.publish_ms, 0.5), 2),
            publish_p99_ms=round(percentile(self.publish_ms, 0.99), 2),
        )
        return data


# --- producers (processes) ----------------------------------------------------------


def paced(rate: float, seconds: float, phase: float) -> Any:
    """Yield at ``rate`` per second for ``seconds``; a producer that falls behind skips
    the backlog instead of bursting to catch up (so the achieved rate shows it)."""
    interval = 1.0 / rate
    began = time.monotonic()
    next_at = began + phase * interval
    while True:
        now = time.monotonic()
        if now >= began + seconds:
            return
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > interval:
            next_at = now
        yield
        next_at += interval


class OverCapacity(logging.Handler):
    """Counts the messages RedisChannelLayer dropped for a group because a receiver's
    channel was full: channels_redis logs each such group_send (at INFO) in the sender."""

    def __init__(self, group: str) -> None:
        super().__init__(logging.INFO)
        self.group = group
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "over capacity" in str(record.msg) and record.args and record.args[2] == self.group:
            self.dropped += int(record.args[0])

    @classmethod
    def install(cls, group: str) -> OverCapacity:
        handler = cls(group)
        log = logging.getLogger("channels_redis.core")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        return handler


def commit_producer(index: int, layer: str, rate: float, seconds: float, start, out) -> None:
    """Lock acquire / release cycles on free resources, one commit (one event) each."""
    setup(layer)
    from orchestrator.core import events
    from orchestrator.core.locks import lock_acquire, lock_release
    from orchestrator.core.models import Agent

    committed: dict[int, float] = {}
    pushed: dict[int, float] = {}
    unpushed: collections.deque[int] = collections.deque()  # ids rise: one process commits
    handover, push = events.publish, events._Publisher._send

    def publish(last_id: int) -> None:  # on commit: the commit time (one event per commit)
        committed[last_id] = time.monotonic()
        unpushed.append(last_id)
        handover(last_id)

    async def send(publisher: Any, layer: Any, last_id: int) -> None:
        now = time.monotonic()  # the publisher thread starts its group_send call
        while unpushed and unpushed[0] <= last_id:  # the wake-up covers them all
            pushed[unpushed.popleft()] = now
        await push(publisher, layer, last_id)

    events.publish = publish
    events._Publisher._send = send  # only to tell the publisher's share of the latency
    drops = OverCapacity.install(events.ALL_EVENTS_GROUP)
    agent = Agent.objects.select_related("team").get(name=f"agent-{PRODUCER_AGENTS[index]:03d}")
    names = [f"res-{PRODUCER_RESOURCES + 100 * index + k:04d}" for k in range(100)]
    held = lock_acquire(agent=agent, resource=names[0], ttl=60).lock  # warm up
    lock_release(lock_id=held.pk, agent=agent)
    events.publish_flush()
    out.put(READY)
    start.wait()
    committed.clear()
    pushed.clear()
    unpushed.clear()
    drops.dropped = 0
    began = time.monotonic()
    held, turn = None, 0
    for _ in paced(rate, seconds, random.random()):
        if held is None:
            held = lock_acquire(agent=agent, resource=names[turn % len(names)], ttl=60).lock
            turn += 1
        else:
            lock_release(lock_id=held.pk, agent=agent)
            held = None
    elapsed = time.monotonic() - began
    if held is not None:
        lock_release(lock_id=held.pk, agent=agent)
    events.publish_flush()
    out.put((committed, pushed, elapsed, drops.dropped))


def lock_cycler(index: int, layer: str, seconds: float, start, out) -> None:
    """As fast as it can: acquire one of the hot resources (without queueing), release
    it. Two commits and two events per cycle; a busy resource is tried again."""
    setup(layer)
    from orchestrator.core import events
    from orchestrator.core.locks import lock_acquire, lock_release
    from orchestrator.core.models import Agent

    agent = Agent.objects.select_related("team").get(name=f"agent-{PRODUCER_AGENTS[index]:03d}")
    rng = random.Random(index)
    held = lock_acquire(agent=agent, resource=HOT_RESOURCES[index], ttl=60, wait=False).lock
    lock_release(lock_id=held.pk, agent=agent)  # warm up
    events.publish_flush()
    out.put(READY)
    start.wait()
    cycles, began = 0, time.monotonic()
    while time.monotonic() - began < seconds:
        result = lock_acquire(agent=agent, resource=rng.choice(HOT_RESOURCES), ttl=60, wait=False)
        if result.status == "granted":
            lock_release(lock_id=result.lock.pk, agent=agent)
            cycles += 1
    elapsed = time.monotonic() - began
    events.publish_flush()
    out.put((cycles, elapsed))


def floor_producer(layer: str, rate: float, seconds: float, start, out) -> None:
    """Bare group_send, one message per event, from one event loop (as the publisher)."""
    setup(layer)
    from channels.layers import get_channel_layer

    layer_ = get_channel_layer()
    drops = OverCapacity.install(FLOOR_GROUP)

    async def run() -> tuple[int, float, int]:
        await layer_.group_send(FLOOR_GROUP, {"type": "bench.floor", "seq": -1, "t": 0.0})
        out.put(READY)
        await asyncio.to_thread(start.wait)
        began, sent = time.monotonic(), 0
        interval, next_at = 1.0 / rate, time.monotonic() + random.random() / rate
        while (now := time.monotonic()) < began + seconds:
            if next_at > now:
                await asyncio.sleep(next_at - now)
            elif now - next_at > interval:
                next_at = now
            message = {"type": "bench.floor", "seq": sent, "t": time.monotonic()}
            await layer_.group_send(FLOOR_GROUP, message)
            sent += 1
            next_at += interval
        return sent, time.monotonic() - began, drops.dropped

    out.put(asyncio.run(run()))


async def from_queue(out: Any, timeout: float) -> Any:
    return await asyncio.to_thread(out.get, True, timeout)


# --- the clients ----------------------------------------------------------------------


class FeedClient:
    """What live.js does with the frames, keeping when each event id arrived and how."""

    def __init__(self, ws: Any, last_id: int) -> None:
        self.ws = ws
        self.last_id = last_id
        self.seen: dict[int, tuple[float, str]] = {}
        self.frames = 0
        self.gaps = 0
        self.snapshots = 0
        self.errors = 0
        self.asked_from: int | None = None

    def head(self, raw: str) -> tuple[str | None, int | None, int | None, dict | None]:
        """A frame's type, since and last id, and the frame itself (None: not decoded)."""
        frame = json.loads(raw)
        return frame.get("type"), frame.get("since"), frame.get("last_id"), frame

    async def read(self) -> None:
        async for raw in self.ws:
            at = time.monotonic()
            kind, since, last_id, frame = self.head(raw)
            if kind == "snapshot":  # too far behind: the board again, ids unknown
                self.snapshots += 1
                self.last_id, self.asked_from = last_id, None
            elif kind == "error":
                self.errors += 1
            elif kind == "delta":
                self.frames += 1
                if since != self.last_id:  # a gap: ask for a replay, as live.js
                    if self.asked_from != self.last_id:
                        self.gaps += 1
                        self.asked_from = self.last_id
                        await self.ws.send(json.dumps({"type": "resume", "last_id": self.last_id}))
                    continue
                how = "replay" if self.asked_from == since else "push"
                self.asked_from = None
                for event in frame["events"] if frame is not None else ():
                    self.seen.setdefault(event["id"], (at, how))
                self.last_id = last_id


# The head of a frame as the consumer writes it (consumers.frame_text keeps the
# frames' key order): a viewer of the viewers measurement reads no further.
FRAME_HEAD = re.compile(
    r'^\{"type": "(?P<type>\w+)"(?:, "since": (?P<since>\d+))?'
    r'(?:, "server_time": "[^"]*")?, "last_id": (?P<last_id>\d+)'
)


class Viewer(FeedClient):
    """A browser on another machine, as far as this one can tell: the frames' ids
    checked as live.js checks them, without decoding the rest (the measurement
    is of the server; this machine also runs the agents)."""

    def head(self, raw: str) -> tuple[str | None, int | None, int | None, dict | None]:
        match = FRAME_HEAD.match(raw)
        if match is None:  # an error frame, or a shape the pattern does not know
            return super().head(raw)
        since = match["since"]
        return match["type"], None if since is None else int(since), int(match["last_id"]), None


async def measure_dashboard(
    server: Daphne, cookie: str, layer: str, rate: int, seconds: float
) -> Latency:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    count = max(1, math.ceil(rate / PRODUCER_RATE))
    producers = [
        ctx.Process(target=commit_producer, args=(i, layer, rate / count, seconds, start, out))
        for i in range(count)
    ]
    for process in producers:
        process.start()
    try:
        for _ in producers:
            assert await from_queue(out, 120) == READY
        ws = await ws_connect(f"{server.ws}/ws/events/", cookie, server.base)
        client = FeedClient(ws, (await first_snapshot(ws))["last_id"])
        reader = asyncio.create_task(client.read())
        start.set()
        committed: dict[int, float] = {}
        pushed: dict[int, float] = {}
        elapsed, dropped = 0.0, 0
        for _ in producers:
            part, pushed_part, took, dropped_part = await from_queue(out, seconds + 120)
            committed.update(part)
            pushed.update(pushed_part)
            elapsed = max(elapsed, took)
            dropped += dropped_part
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and not committed.keys() <= client.seen.keys():
            await asyncio.sleep(0.05)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await ws.close()
    finally:
        for process in producers:
            process.join(30)
    latencies, counts = [], {"push": 0, "replay": 0}
    for event_id, committed_at in committed.items():
        if event_id in client.seen:
            at, how = client.seen[event_id]
            latencies.append((at - committed_at) * 1000)
            counts[how] += 1
    return Latency(
        layer=layer,
        path="dashboard",
        rate=rate,
        seconds=elapsed,
        sent=len(committed),
        latencies_ms=latencies,
        publish_ms=[(pushed[i] - committed[i]) * 1000 for i in committed if i in pushed],
        pushed=counts["push"],
        replayed=counts["replay"],
        late=sum(1 for ms in latencies if ms > 1000),
        missed=len(committed) - len(latencies),
        frames=client.frames,
        gaps=client.gaps,
        snapshots=client.snapshots,
        errors=client.errors,
        layer_drops=dropped,
    )


async def measure_floor(server: Daphne, layer: str, rate: int, seconds: float) -> Latency:
    from websockets.asyncio.client import connect

    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    producer = ctx.Process(target=floor_producer, args=(layer, rate, seconds, start, out))
    producer.start()
    received: dict[int, float] = {}

    async def read(ws: Any) -> None:
        async for raw in ws:
            at = time.monotonic()
            message = json.loads(raw)
            if message["seq"] >= 0:
                received[message["seq"]] = (at - message["t"]) * 1000

    try:
        async with connect(f"{server.ws}{FLOOR_PATH}", origin=server.base) as ws:
            assert await from_queue(out, 120) == READY
            reader = asyncio.create_task(read(ws))
            start.set()
            sent, elapsed, dropped = await from_queue(out, seconds + 120)
            deadline = time.monotonic() + GRACE
            while time.monotonic() < deadline and len(received) < sent:
                await asyncio.sleep(0.05)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    finally:
        producer.join(30)
    latencies = list(received.values())
    return Latency(
        layer=layer,
        path="floor",
        rate=rate,
        seconds=elapsed,
        sent=sent,
        latencies_ms=latencies,
        pushed=len(latencies),
        late=sum(1 for ms in latencies if ms > 1000),
        missed=sent - len(latencies),
        frames=len(latencies),
        layer_drops=dropped,
    )


@dataclass
class ViewersRound:
    viewers: int
    cycles_per_s: float
    frames_per_s: list[float] = field(default_factory=list)  # per viewer
    snapshots_per_s: float = 0.0  # all viewers together, after their first
    max_lag: int = 0  # events committed that a viewer had not been sent, at worst
    advisory_waits: float = 0.0  # share of pg_locks samples with a waiting advisory lock
    daphne_cores: float = 0.0
    viewer_cores: float = 0.0  # this process: the viewers' clients and the sampler


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def viewers_round(
    server: Daphne, cookie: str, layer: str, viewers: int, seconds: float
) -> ViewersRound:
    """4 lock cyclers for ``seconds`` while ``viewers`` dashboard feeds are open."""
    import psycopg

    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    cyclers = [
        ctx.Process(target=lock_cycler, args=(i, layer, seconds, start, out))
        for i in range(len(PRODUCER_AGENTS))
    ]
    for process in cyclers:
        process.start()
    clients: list[Viewer] = []
    readers: list[asyncio.Task] = []
    samples: list[tuple[int, bool]] = []
    try:
        for _ in cyclers:
            assert await from_queue(out, 120) == READY
        for _ in range(viewers):
            ws = await ws_connect(f"{server.ws}/ws/events/", cookie, server.base)
            clients.append(Viewer(ws, (await first_snapshot(ws))["last_id"]))
            readers.append(asyncio.create_task(clients[-1].read()))
        with psycopg.connect(bench_database_url(BENCH_DB), autocommit=True) as db:

            def sample() -> tuple[int, bool]:
                lags = [client.last_id for client in clients] or [2**62]
                lag, waits = db.execute(
                    "SELECT (SELECT count(*) FROM core_event WHERE id > %s), EXISTS (SELECT 1 "
                    "FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)",
                    [min(lags)],
                ).fetchone()
                return lag, waits

            cpu = process_cpu_seconds(server.process.pid)
            own = process_cpu_seconds(os.getpid())
            began = time.monotonic()
            start.set()

            async def collect() -> list[tuple[int, float]]:
                return [await from_queue(out, seconds + 120) for _ in cyclers]

            done = asyncio.create_task(collect())
            while not done.done():
                samples.append(await asyncio.to_thread(sample))
                await asyncio.sleep(0.1)  # the sampling period of a measurement
            results = done.result()
            took = time.monotonic() - began
            cpu = process_cpu_seconds(server.process.pid) - cpu
            own = process_cpu_seconds(os.getpid()) - own
    finally:
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in clients:
            with contextlib.suppress(Exception):
                await client.ws.close()
        for process in cyclers:
            process.join(30)
    elapsed = max(took for _, took in results)
    return ViewersRound(
        viewers=viewers,
        cycles_per_s=sum(cycles for cycles, _ in results) / elapsed,
        frames_per_s=[client.frames / took for client in clients],
        snapshots_per_s=sum(client.snapshots for client in clients) / took,
        max_lag=max((lag for lag, _ in samples), default=0) if clients else 0,
        advisory_waits=sum(waits for _, waits in samples) / max(1, len(samples)),
        daphne_cores=cpu / took,
        viewer_cores=own / took,
    )


async def measure_viewers(
    server: Daphne, cookie: str, layer: str, viewers: int, seconds: float, rounds: int
) -> list[ViewersRound]:
    """Rounds without viewers and with ``viewers``, in turns."""
    measured = []
    for _ in range(rounds):
        for count in (0, viewers):
            measured.append(await viewers_round(server, cookie, layer, count, seconds))
            print(viewers_line(measured[-1]), flush=True)
    return measured


def viewers_line(r: ViewersRound) -> str:
    frames = (
        f"frames/s per viewer {statistics.mean(r.frames_per_s):.1f} "
        f"(min {min(r.frames_per_s):.1f})  resets/s {r.snapshots_per_s:.2f}  "
        f"max lag {r.max_lag} events"
        if r.frames_per_s
        else ""
    )
    return (
        f"{r.viewers:>3} viewers  lock cycles/s {r.cycles_per_s:7.1f}  daphne "
        f"{r.daphne_cores:.2f} cores  viewers {r.viewer_cores:.2f} cores  "
        f"advisory waits {100 * r.advisory_waits:4.1f}%  {frames}"
    )


def viewers_summary(rounds: list[ViewersRound]) -> str:
    alone = [r.cycles_per_s for r in rounds if r.viewers == 0]
    watched = [r for r in rounds if r.viewers]
    if not alone or not watched:
        return ""
    ratios = [w.cycles_per_s / a for w, a in zip(watched, alone, strict=False)]
    median = statistics.median(ratios)
    keeps_up = all(r.snapshots_per_s == 0 for r in watched)
    verdict = "OK" if median >= TARGET_VIEWERS_RATIO and keeps_up else "MISSED"
    return (
        f"with {watched[0].viewers} viewers / without, in turns: median {median:.2f} "
        f"[{min(ratios):.2f}-{max(ratios):.2f}]  target >= {TARGET_VIEWERS_RATIO} and no "
        f"snapshot resets: {verdict}"
    )


async def measure_all(
    layers: list[str], cookie: str, rates: list[int], seconds: float, reps: int, viewers: int
) -> tuple[list[Timing], list[Latency], list[ViewersRound]]:
    """One daphne per layer, all started first; then, rate by rate, the floor and the
    dashboard on each layer in turn, so that the layers share whatever load the machine
    has at that moment."""
    flush_redis()
    servers: dict[str, Daphne] = {}
    try:
        for layer in layers:
            servers[layer] = Daphne(layer)
        timings = await overview_end_to_end(servers[layers[0]], cookie, reps)
        results = []
        for rate in rates:
            for layer in layers:
                server = servers[layer]
                results.append(await measure_floor(server, layer, rate, seconds))
                print(latency_line(results[-1]), flush=True)
                results.append(await measure_dashboard(server, cookie, layer, rate, seconds))
                print(latency_line(results[-1]), flush=True)
        watched: list[ViewersRound] = []
        if viewers:
            layer = "pubsub" if "pubsub" in servers else layers[0]  # the project's layer
            print(f"Lock cycles with and without {viewers} viewers ({layer} layer)", flush=True)
            watched = await measure_viewers(
                servers[layer], cookie, layer, viewers, seconds, VIEWER_ROUNDS
            )
            print(viewers_summary(watched), flush=True)
        return timings, results, watched
    finally:
        for server in servers.values():
            server.stop()


# --- report ---------------------------------------------------------------------------


def timing_line(timing: Timing) -> str:
    target = f"target < {TARGET_OVERVIEW_MS:.0f} ms" if timing.target else ""
    if target:
        target += "  OK" if timing.max < TARGET_OVERVIEW_MS else "  MISSED"
    return (
        f"{timing.label:<48} {timing.median:8.1f} {timing.max:8.1f} {timing.cold_ms:8.1f}"
        f"   {target}"
    )


LATENCY_HEADER = (
    f"{'layer':<7}{'rate':>5}  {'path':<10}{'events':>7}{'ach./s':>8}{'p50 ms':>8}"
    f"{'p99 ms':>8}{'max ms':>8}{'frames':>7}{'push':>7}{'replay':>7}{'late':>5}{'missed':>7}"
    f"{'drops':>6}{'publish p50/p99':>16}"
)


def latency_line(result: Latency) -> str:
    data = result.figures()
    line = (
        f"{result.layer:<7}{result.rate:>5}  {result.path:<10}{result.sent:>7}"
        f"{data['achieved']:>8.1f}{data['p50_ms']:>8.1f}{data['p99_ms']:>8.1f}"
        f"{data['max_ms']:>8.1f}{result.frames:>7}{result.pushed:>7}{result.replayed:>7}"
        f"{result.late:>5}{result.missed:>7}{result.layer_drops:>6}"
    )
    if result.publish_ms:
        line += f"{data['publish_p50_ms']:>9.1f} /{data['publish_p99_ms']:>5.1f}"
    else:
        line += " " * 16
    if result.path == "dashboard" and result.rate == TARGET_P99_RATE:
        line += "  OK" if data["p99_ms"] < TARGET_P99_MS else "  MISSED (p99 target 100)"
    notes = [f"{n} {what}" for n, what in ((result.gaps, "gaps"), (result.snapshots,
             "snapshots"), (result.errors, "error frames")) if n]  # fmt: skip
    return line + (f"  ({', '.join(notes)})" if notes else "")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of the overview timings")
    parser.add_argument("--layer", choices=["both", *LAYERS], default="both")
    parser.add_argument(
        "--rates",
        type=lambda text: [int(rate) for rate in text.split(",") if rate.strip()],
        default=list(RATES),
        help="events per second, comma-separated (default 50,500; empty: no latency runs)",
    )
    parser.add_argument(
        "--viewers",
        type=int,
        default=VIEWERS,
        help=f"dashboard feeds open while 4 processes cycle locks (default {VIEWERS}; 0: skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--plot", type=Path, help="draw the figures into this PNG")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers = list(LAYERS) if args.layer == "both" else [args.layer]
    if args.serve:
        serve(args.serve, layers[0])
        return

    began = time.monotonic()
    print(f"load average at start: {load_average()}", flush=True)
    recreate_database(BENCH_DB)
    setup(layers[0])
    flush_redis()
    board = build_board()
    print("board: " + ", ".join(f"{v:,} {k}" for k, v in board.items()), flush=True)
    cookie = viewer_cookie()
    timings, snapshot_bytes = overview_in_process(cookie, args.reps)
    from django.db import connections

    connections.close_all()
    print(LATENCY_HEADER, flush=True)
    more, results, watched = asyncio.run(
        measure_all(layers, cookie, args.rates, args.seconds, args.reps, args.viewers)
    )
    timings += more
    load = load_average()
    report(board, timings, snapshot_bytes, results, args.reps, load, time.monotonic() - began)
    if watched:
        print(f"\nLock cycles with and without {args.viewers} dashboard viewers, in turns")
        for round_ in watched:
            print(viewers_line(round_))
        print(viewers_summary(watched))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "board": board,
                    "load_average": load,
                    "snapshot_bytes": snapshot_bytes,
                    "overview": {
                        t.label: {"median_ms": t.median, "max_ms": t.max, "cold_ms": t.cold_ms}
                        for t in timings
                    },
                    "latency": [r.figures() for r in results],
                    "viewers": [asdict(r) for r in watched],
                },
                indent=2,
            )
        )
    if args.plot:
        plot(args.plot, timings, results)


def report(
    board: dict[str, int],
    timings: list[Timing],
    snapshot_bytes: int,
    results: list[Latency],
    reps: int,
    load: str,
    took: float,
) -> None:
    print()
    print(
        f"Overview: {board['agents']} agents, {board['resources']:,} resources, "
        f"{board['held']} held, {board['waiting']} waiting, {board['approvals']} approvals, "
        f"{board['conflicts']} open conflicts ({board['deadlocks']} deadlocks); "
        f"snapshot {snapshot_bytes / 1024:.0f} KiB"
    )
    print(f"{'(ms; median and max of ' + str(reps) + ', after one cold call)':<48} "
          f"{'median':>8} {'max':>8} {'cold':>8}")  # fmt: skip
    for timing in timings:
        print(timing_line(timing))
    print()
    print("Push latency, commit -> WebSocket client (floor: group_send -> client)")
    print(LATENCY_HEADER)
    for result in results:
        print(latency_line(result))
    print(
        "\npush / replay: events the client received in deltas pushed to it / in the answer "
        "to its resume after a gap;\nlate: received more than 1 s after commit; missed: never "
        "received; drops: messages RedisChannelLayer\ndropped for the client (channel full); "
        "publish: commit -> the publisher's group_send.\n"
        f"load average at the end: {load}; whole run {took:.0f} s"
    )


def plot(path: Path, timings: list[Timing], results: list[Latency]) -> None:
    from plot import limit_panels

    groups = [f"{r.layer}\n{r.rate}/s" for r in results if r.path == "dashboard"]

    def series(path_: str, q: float) -> list[float]:
        return [percentile(r.latencies_ms, q) for r in results if r.path == path_]

    limits = [TARGET_P99_MS if r.rate == TARGET_P99_RATE else None for r in results]
    limit_panels(
        path,
        title="Live dashboard (lower is better; red: over its target)",
        panels=[
            {
                "title": f"Overview, ms (median; target {TARGET_OVERVIEW_MS:.0f})",
                "groups": [t.short for t in timings],
                "series": {"median": [t.median for t in timings], "max": [t.max for t in timings]},
                "limits": [TARGET_OVERVIEW_MS if t.target else None for t in timings],
                "checked": "max",
            },
            {
                "title": f"Push latency, ms (p99 target {TARGET_P99_MS:.0f} at 50/s)",
                "groups": groups,
                "series": {
                    "floor p50": series("floor", 0.5),
                    "floor p99": series("floor", 0.99),
                    "dashboard p50": series("dashboard", 0.5),
                    "dashboard p99": series("dashboard", 0.99),
                },
                "limits": [lim for r, lim in zip(results, limits, strict=True)
                           if r.path == "dashboard"],
                "checked": "dashboard p99",
            },
        ],
    )  # fmt: skip
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
