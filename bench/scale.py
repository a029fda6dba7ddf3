"""1,000 agents and 10,000 resources (issue 18, point 3): a board at that size, and what
the dashboard, the monitor and the deadlock detector cost on it.

Run:  .venv/bin/python bench/scale.py [--agents 1000] [--teams 20] [--resources 10000]
                                      [--locks 2000] [--waits 500] [--deadlocks 3]
                                      [--rate 50] [--drivers 2] [--reps 10]
                                      [--markdown FILE] [--no-browser]
      .venv/bin/python bench/scale.py --only-fixture   # fill the database, print a login

The fixture (:func:`build`, importable: ``from bench.scale import build`` inside a
Django process on a migrated database) is made through the real models with
``bulk_create``, in one transaction, as the protocol leaves them:

* ``teams`` teams, the agents and resources spread evenly over them (names
  ``team-07``, ``t07-agent-0012``, ``t07-res-00042``); each resource has its version-0
  history row; one running run per team, one step per agent.
* ``locks`` live exclusive locks: in each team, lock ``i`` is on the team's resource
  ``i``, held by the team's agent ``i mod agents-per-team``. Each locked resource's
  fence is 1 and the lock's token is 1 (one exclusive grant so far); the lease runs
  for a day (``LEASE``), so no lock expires during a bench.
* ``waits`` waiting LockRequests, each queued behind a live lock of its own team:
  the team's agents 0, 1, 2, ... wait in chains of ``CHAIN`` (agent k waits for a
  resource held by agent k + 1, the chain's last for one held by the team's last
  agent, who waits for nothing: that resource's queue is several deep). In the
  first ``deadlocks`` teams the last chain closes on its first agent instead: a
  cycle, reported by the real detector (``deadlock_sweep``) once the rows are in.

What it measures, on a baseline board a tenth of the size (the same teams' shape, so the
same events touch the same neighbourhood) and on the full board:

* one WebSocket frame's build per event (``feed_delta`` from the id before it, what the
  feed's tail reads per frame) for an acquire, a write, a release, a queued acquire
  and a cancel, with the queries: it must not grow with the board;
* ``lock_acquire`` granted at once, queued with the deadlock check's cheap exit, and
  queued behind a chain (the full check), and the check alone;
* ``monitor_sweep``, idle and while a driver makes ``--rate`` events a second through
  the services from ``--drivers`` processes (acquire, write, release; every fifth
  cycle a queued acquire behind a chain and its cancel);
* the Overview, Resources and Graph pages in Chromium against daphne, idle and under
  the driver, as a first visit and as the next page of one tab: from the request to
  the HTML, to the page's scripts opening the WebSocket, to the first snapshot frame,
  and to that snapshot drawn (an init script marks the animation frame after the one
  the page asked for, then a task later); beside the server side alone, in-process.

The CLI (re)creates its own database, ``$BENCH_DB`` (default
``orchestrator_bench_scale``) on the server of DATABASE_URL, and uses the Redis of
``$BENCH_REDIS_URL`` (default database 6); with ``--only-fixture`` it builds the
board, creates a superuser in the operators group and prints its login.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

# bench/ after the installed packages (run as a script, it comes first): bench/mcp.py
# must not hide the mcp package from orchestrator.asgi, which this process imports (the
# in-process baseline of the pages).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB", "orchestrator_bench_scale")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
LEASE = 86400  # seconds: the fixture's locks outlive any bench run
CHAIN = 5  # agents per wait chain
BATCH = 2000
RATE = 50.0  # driver events a second (issue 18)
DRIVERS = 2
REPS = 10
CHROMIUM = "/usr/bin/chromium"


# --- the fixture ----------------------------------------------------------------------


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


@dataclass
class Board:
    """What :func:`build` made: the counts, the seconds it took, and the ids a bench
    needs (per team: its agents and resources in order, the locked and the free)."""

    counts: dict[str, int]
    seconds: float
    team_ids: list[int] = field(default_factory=list)
    agents: dict[int, list[int]] = field(default_factory=dict)  # team id -> agent ids
    resources: dict[int, list[int]] = field(default_factory=dict)  # team id -> resource ids
    locked: dict[int, int] = field(default_factory=dict)  # team id -> resources 0..n-1 locked

    def free(self, team_id: int) -> list[int]:
        """The team's resources nobody holds or waits for."""
        return self.resources[team_id][self.locked[team_id] :]


def _waits_of_team(n_agents: int, n_locks: int, n_waits: int, cycle: bool) -> list[tuple[int, int]]:
    """(waiting agent, resource index) of one team's waits, in queue order. Agent ``a``
    holds the resources ``a``, ``a + n_agents``, ...; its first is resource ``a``."""
    if n_waits == 0:
        return []
    if n_waits >= n_agents or n_locks < n_agents:
        raise ValueError(
            "each team needs more agents than waits, and at least one lock per agent "
            f"(a team here: {n_agents} agents, {n_locks} locks, {n_waits} waits)"
        )
    waits = []
    end = n_agents - 1  # the agent every chain ends on: it waits for nothing
    for k in range(n_waits):
        last_of_chain = k % CHAIN == CHAIN - 1 or k == n_waits - 1
        target = k + 1 if not last_of_chain else end
        waits.append((k, target))
    if cycle:  # the last chain closes on its first agent
        k, _ = waits[-1]
        start = k - k % CHAIN
        if start != k:
            waits[-1] = (k, start)
    return waits


def build(
    *,
    agents: int = 1000,
    teams: int = 20,
    resources: int = 10_000,
    locks: int = 2000,
    waits: int = 500,
    deadlocks: int = 3,
    value_words: int = 12,
    prefix: str = "",
) -> Board:
    """Fill the current (migrated, empty) database with the board described in the
    module docstring, in one transaction; the deadlock cycles are then reported by
    ``deadlock_sweep``. ``prefix`` starts every name (a second board beside a first).
    Returns what it made."""
    from django.db import connection, transaction

    from orchestrator.core.deadlocks import deadlock_sweep
    from orchestrator.core.models import (
        Agent,
        AgentStatus,
        Lock,
        LockMode,
        LockRequest,
        Resource,
        ResourceVersion,
        Run,
        Step,
        Team,
    )
    from orchestrator.core.queue import db_now

    began = time.perf_counter()
    per_agents, per_resources = spread(agents, teams), spread(resources, teams)
    per_locks, per_waits = spread(locks, teams), spread(waits, teams)
    if any(n_l > n_r for n_l, n_r in zip(per_locks, per_resources, strict=True)):
        raise ValueError("more locks than resources in a team")
    plans = [
        _waits_of_team(per_agents[t], per_locks[t], per_waits[t], cycle=t < deadlocks)
        for t in range(teams)
    ]
    words = ("agent", "lock", "lease", "fence", "write", "version", "queue", "plan")
    board = Board(counts={}, seconds=0.0)
    with transaction.atomic():
        now = db_now()
        team_rows = Team.objects.bulk_create(
            Team(name=f"{prefix}team-{t:02d}", default_lease_ttl=30) for t in range(teams)
        )
        board.team_ids = [team.pk for team in team_rows]
        waiting_agents = [{a for a, _ in plan} for plan in plans]
        agent_rows = Agent.objects.bulk_create(
            (
                Agent(
                    name=f"{prefix}t{t:02d}-agent-{a:04d}",
                    team=team,
                    role="bench agent",
                    status=AgentStatus.WAITING_LOCK
                    if a in waiting_agents[t]
                    else AgentStatus.RUNNING,
                )
                for t, team in enumerate(team_rows)
                for a in range(per_agents[t])
            ),
            batch_size=BATCH,
        )
        resource_rows = Resource.objects.bulk_create(
            (
                Resource(
                    name=f"{prefix}t{t:02d}-res-{r:05d}",
                    team=team,
                    value={
                        "n": r,
                        "text": " ".join(words[(r + w) % 8] for w in range(value_words)),
                    },
                    fence=1 if r < per_locks[t] else 0,
                )
                for t, team in enumerate(team_rows)
                for r in range(per_resources[t])
            ),
            batch_size=BATCH,
        )
        ResourceVersion.objects.bulk_create(
            (ResourceVersion(resource=res, version=0, value=res.value) for res in resource_rows),
            batch_size=BATCH,
        )
        it_a, it_r = iter(agent_rows), iter(resource_rows)
        for t, team in enumerate(team_rows):
            board.agents[team.pk] = [next(it_a).pk for _ in range(per_agents[t])]
            board.resources[team.pk] = [next(it_r).pk for _ in range(per_resources[t])]
            board.locked[team.pk] = per_locks[t]
        runs = Run.objects.bulk_create(
            Run(team=team, goal="bench: hold, wait, write", status=Run.Status.RUNNING,
                started_at=now)
            for team in team_rows
        )  # fmt: skip
        steps = Step.objects.bulk_create(
            (
                Step(
                    run=run,
                    agent_id=agent_id,
                    number=1,
                    status=Step.Status.WAITING if a in waiting_agents[t] else Step.Status.RUNNING,
                    started_at=now,
                )
                for t, (team, run) in enumerate(zip(team_rows, runs, strict=True))
                for a, agent_id in enumerate(board.agents[team.pk])
            ),
            batch_size=BATCH,
        )
        step_of = {step.agent_id: step.pk for step in steps}
        Lock.objects.bulk_create(
            (
                Lock(
                    resource_id=board.resources[team.pk][i],
                    agent_id=board.agents[team.pk][i % per_agents[t]],
                    mode=LockMode.EXCLUSIVE,
                    token=1,
                    acquired_at=now,
                    expires_at=now + timedelta(seconds=LEASE),
                )
                for t, team in enumerate(team_rows)
                for i in range(per_locks[t])
            ),
            batch_size=BATCH,
        )
        # Queue order is id order: one bulk insert, in the order the plan queues them.
        LockRequest.objects.bulk_create(
            (
                LockRequest(
                    resource_id=board.resources[team.pk][target],
                    agent_id=board.agents[team.pk][a],
                    mode=LockMode.EXCLUSIVE,
                    ttl=LEASE,
                    step_id=step_of[board.agents[team.pk][a]],
                    requested_at=now + timedelta(microseconds=n),
                )
                for n, (team, (a, target)) in enumerate(
                    (team, wait)
                    for team, plan in zip(team_rows, plans, strict=True)
                    for wait in plan
                )
            ),
            batch_size=BATCH,
        )
    with connection.cursor() as cursor:
        # Statistics as a running system's autovacuum keeps them: planned on the empty
        # tables' estimates, the sweep's semi-join ran as a nested loop (83 ms, not 2).
        cursor.execute("ANALYZE")
    found = deadlock_sweep()
    board.counts = {
        "teams": len(team_rows),
        "agents": len(agent_rows),
        "resources": len(resource_rows),
        "locks": Lock.objects.filter(released_at__isnull=True, agent__team__in=team_rows).count(),
        "waits": LockRequest.objects.filter(status="waiting", agent__team__in=team_rows).count(),
        "deadlocks": len(found.detected),
    }
    board.seconds = time.perf_counter() - began
    return board


# --- processes ------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """The environment of every process of the bench (its database and Redis)."""
    from locks import bench_database_url

    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(BENCH_DB),
        "REDIS_URL": REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "PYTHONUNBUFFERED": "1",
    }


def setup() -> None:
    """Django in this process, on the bench database."""
    os.environ.update(environment())
    import django

    django.setup()


def fresh_database() -> None:
    from locks import recreate_database

    os.environ.update(environment())
    recreate_database(BENCH_DB)


def operator_login(username: str = "operator") -> tuple[str, str]:
    """A superuser in the operators group (as ``manage.py operator_account`` makes it),
    with a fresh random password: (username, password)."""
    from django.contrib.auth import get_user_model

    from orchestrator.dashboard.groups import groups_ensure
    from orchestrator.dashboard.permissions import OPERATORS_GROUP

    password = secrets.token_urlsafe(12)
    user = get_user_model().objects.create_superuser(username=username, password=password)
    user.groups.add(groups_ensure()[OPERATORS_GROUP])
    return username, password


def fixture_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "agents": args.agents,
        "teams": args.teams,
        "resources": args.resources,
        "locks": args.locks,
        "waits": args.waits,
        "deadlocks": args.deadlocks,
    }


# --- measurements in this process ---------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


@dataclass
class Figure:
    """Samples of one measurement, in milliseconds, and the queries of its last sample."""

    label: str
    samples_ms: list[float]
    queries: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else math.nan

    @property
    def max(self) -> float:
        return max(self.samples_ms) if self.samples_ms else math.nan


def timed_queries(function: Any) -> tuple[float, int, Any]:
    """(milliseconds, queries, result) of one call of ``function``."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        began = time.perf_counter()
        result = function()
        took = (time.perf_counter() - began) * 1000
    return took, len(captured), result


class Actors:
    """The agents and resources the measured events use, the same in every board (the
    team's shape is the same whatever the number of teams): in team ``TEAM``, agent
    ``ACTOR`` (holds two resources, waits for nothing, nobody waits for it) acquires,
    writes and releases the team's free resources; it queues behind the chain that
    starts at agent 0 (a full deadlock check: the holder waits elsewhere), and behind
    the team's last agent, whose resource's queue holds only chain ends (the check's
    cheap exit)."""

    TEAM = 1
    ACTOR = 30

    def __init__(self, board: Board) -> None:
        from orchestrator.core.models import Agent, Resource

        team_id = board.team_ids[self.TEAM]
        agents = board.agents[team_id]
        self.agent = Agent.objects.select_related("team").get(pk=agents[self.ACTOR])
        self.free = board.free(team_id)
        # Agent k holds resource k first: the chain's head (agent 0), the queue's end.
        self.chained = Resource.objects.get(pk=board.resources[team_id][0])
        self.end = Resource.objects.get(pk=board.resources[team_id][len(agents) - 1])
        self.turn = 0

    def next_free(self) -> int:
        self.turn += 1
        return self.free[self.turn % len(self.free)]


def frame_costs(actors: Actors, reps: int) -> dict[str, Figure]:
    """The build of the delta frame for one event (feed_delta from the id before it:
    what the tail reads per frame), for each kind of event the driver makes."""
    from orchestrator.core.events import last_event_id
    from orchestrator.core.locks import lock_acquire, lock_release, lock_request_cancel
    from orchestrator.core.resources import resource_write
    from orchestrator.dashboard.selectors.feed import feed_delta

    agent = actors.agent
    figures: dict[str, Figure] = {}

    def measure(kind: str, operation: Any) -> Any:
        since = last_event_id()
        result = operation()
        took, queries, frame = timed_queries(lambda: feed_delta(since=since))
        assert frame is not None and len(frame["events"]) == 1, frame
        figure = figures.setdefault(kind, Figure(kind, []))
        figure.samples_ms.append(took)
        figure.queries = queries
        return result

    for _ in range(reps + 1):  # the first round warms up, and is dropped
        resource = actors.next_free()
        lock = measure("acquire", partial(lock_acquire, agent=agent, resource=resource)).lock
        write = partial(resource_write, agent=agent, resource=resource, value={"t": 1})
        written = measure("write", partial(write, fence=lock.token))
        assert written.status == "applied", written
        measure("release", partial(lock_release, lock_id=lock.pk, agent=agent))
        queued = measure("queue", partial(lock_acquire, agent=agent, resource=actors.chained.pk))
        assert queued.status == "waiting", queued
        measure("cancel", partial(lock_request_cancel, request_id=queued.request.pk, agent=agent))
    for figure in figures.values():
        figure.samples_ms = figure.samples_ms[1:]
    return figures


def precheck_costs(actors: Actors, reps: int) -> dict[str, Figure]:
    """lock_acquire granted at once, queued with the check's cheap exit, and queued with
    the full deadlock check (deadlock_check_for), and that check alone."""
    from orchestrator.core.deadlocks import deadlock_check_for
    from orchestrator.core.locks import lock_acquire, lock_release, lock_request_cancel

    agent = actors.agent
    figures = {
        key: Figure(key, [])
        for key in ("granted", "queued, cheap exit", "queued, full check", "check alone")
    }
    for rep in range(reps + 1):
        resource = actors.next_free()
        took, queries, granted = timed_queries(
            partial(lock_acquire, agent=agent, resource=resource)
        )
        lock_release(lock_id=granted.lock.pk, agent=agent)
        samples = [("granted", took, queries)]
        for key, target in (
            ("queued, cheap exit", actors.end),
            ("queued, full check", actors.chained),
        ):
            took, queries, queued = timed_queries(
                lambda target=target: lock_acquire(agent=agent, resource=target.pk)
            )
            assert queued.status == "waiting" and queued.deadlock is None, queued
            samples.append((key, took, queries))
            if target is actors.chained:
                took, queries, _ = timed_queries(
                    lambda: deadlock_check_for(agent)  # inside no service: reads only
                )
                samples.append(("check alone", took, queries))
            lock_request_cancel(request_id=queued.request.pk, agent=agent)
        if rep:
            for key, took, queries in samples:
                figures[key].samples_ms.append(took)
                figures[key].queries = queries
    return figures


def sweep_costs(reps: int, pause: float = 0.0) -> Figure:
    """monitor_sweep(), ``reps`` times (after one warm-up)."""
    from orchestrator.core.monitor import monitor_sweep

    figure = Figure("monitor_sweep", [])
    for rep in range(reps + 1):
        took, queries, report = timed_queries(monitor_sweep)
        assert not report.deadlocks, report  # the fixture's cycles are reported already
        if rep:
            figure.samples_ms.append(took)
            figure.queries = queries
        time.sleep(pause)
    return figure


# --- the driver: 50 events a second through the services ------------------------------


def drive(number: int, drivers: int, rate: float, board: Board, stop: Any, results: Any) -> None:
    """A driver process: real coordination calls, one event each, paced at ``rate``
    events a second: on the free resources of its teams (teams t with t % drivers ==
    number), agents acquire, write and release; every fifth cycle one queues behind the
    team's chain (a full deadlock check) and withdraws. Puts (events, seconds, errors)."""
    setup()
    from orchestrator.core.locks import lock_acquire, lock_release, lock_request_cancel
    from orchestrator.core.models import Agent, Resource
    from orchestrator.core.resources import resource_write

    teams = [pk for t, pk in enumerate(board.team_ids) if t % drivers == number]
    plans = []
    for team_id in teams:
        agents = board.agents[team_id]
        waits = [Agent.objects.get(pk=pk) for pk in agents[Actors.ACTOR + 1 : -1]]
        plans.append((waits, board.free(team_id)[100:], board.resources[team_id][0]))
    Resource.objects.filter(pk=0).exists()  # connect before the clock starts
    events = errors = 0
    began = time.monotonic()
    cycle = 0

    def paced() -> None:
        nonlocal events
        events += 1
        delay = began + events / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    while not stop.is_set():
        agents, free, chained = plans[cycle % len(plans)]
        agent = agents[(cycle // len(plans)) % len(agents)]
        resource = free[(cycle // len(plans)) % len(free)]
        cycle += 1
        try:
            lock = lock_acquire(agent=agent, resource=resource, ttl=60).lock
            paced()
            resource_write(agent=agent, resource=resource, value={"c": cycle}, fence=lock.token)
            paced()
            lock_release(lock_id=lock.pk, agent=agent)
            paced()
            if cycle % 5 == 0:
                queued = lock_acquire(agent=agent, resource=chained)
                paced()
                lock_request_cancel(request_id=queued.request.pk, agent=agent)
                paced()
        except Exception:  # counted and reported: the bench says how many failed
            errors += 1
            time.sleep(0.05)
    results.put((events, time.monotonic() - began, errors))


class Drivers:
    def __init__(self, board: Board, count: int, rate: float) -> None:
        context = mp.get_context("spawn")
        self.stop = context.Event()
        self.results = context.Queue()
        self.processes = [
            context.Process(
                target=drive, args=(n, count, rate / count, board, self.stop, self.results)
            )
            for n in range(count)
        ]
        for process in self.processes:
            process.start()
        self.began = time.monotonic()

    def finish(self) -> tuple[int, float, int]:
        """Stop them; (events, seconds, errors) summed (seconds: the longest)."""
        self.stop.set()
        totals = [self.results.get(timeout=60) for _ in self.processes]
        for process in self.processes:
            process.join(timeout=30)
        return (
            sum(t[0] for t in totals),
            max(t[1] for t in totals),
            sum(t[2] for t in totals),
        )


# --- pages in Chromium, against daphne --------------------------------------------------

# When the page's first snapshot frame arrives, note the time; once every listener of
# that message has run (a task later), ask for an animation frame: it comes after the
# one the page asked for to draw the board (live.js redrawOnChange), and a task after
# it the frame is painted. Times are from the navigation's start (the request).
DRAWN_SCRIPT = """
(() => {
  window.__scale = {socket: null, open: null, snapshot: null, drawn: null, bytes: 0};
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      if (window.__scale.socket === null) window.__scale.socket = performance.now();
      super(...args);
      this.addEventListener("open", () => {
        if (window.__scale.open === null) window.__scale.open = performance.now();
      });
      this.addEventListener("message", (message) => {
        const s = window.__scale;
        if (s.snapshot !== null || typeof message.data !== "string") return;
        if (!message.data.startsWith('{"type": "snapshot"')) return;
        s.snapshot = performance.now();
        s.bytes = message.data.length;
        setTimeout(() => requestAnimationFrame(() => setTimeout(() => {
          s.drawn = performance.now();
        })));
      });
    }
  };
})();
"""
PAGES = {"Overview": "/", "Resources": "/resources/", "Graph": "/graph/"}


@dataclass
class PageFigure:
    page: str
    html_ms: list[float] = field(default_factory=list)
    socket_ms: list[float] = field(default_factory=list)  # the page's scripts ran
    snapshot_ms: list[float] = field(default_factory=list)
    drawn_ms: list[float] = field(default_factory=list)
    snapshot_bytes: int = 0


def session_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.get(username="operator")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def page_times(base: str, cookie: str, reps: int) -> dict[str, PageFigure]:
    """Each page, ``reps`` times after one warm-up: from the request to its HTML, to its
    first snapshot frame, to that snapshot drawn. Two ways: a first visit (a fresh
    browser context and tab: nothing cached, a new renderer) and the next page (one tab
    going from page to page, as an operator does: the scripts cached, for a minute, by
    WhiteNoise's default max-age)."""
    from playwright.sync_api import sync_playwright

    figures = {
        f"{name}, {how}": PageFigure(f"{name}, {how}")
        for how in ("first visit", "next page")
        for name in PAGES
    }

    def load(page: Any, path: str) -> dict[str, float]:
        page.goto(base + path, wait_until="commit")
        page.wait_for_function("window.__scale && window.__scale.drawn !== null",
                               timeout=60_000)  # fmt: skip
        marks = page.evaluate(
            "({...window.__scale, html: performance.getEntriesByType('navigation')[0].responseEnd})"
        )
        time.sleep(0.3)  # past the consumer's shared-build window (frames.FRESH)
        return marks

    def context_of(browser: Any) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
        context.add_init_script(DRAWN_SCRIPT)
        return context

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            warm = context_of(browser)
            tab = warm.new_page()
            for rep in range(reps + 1):  # the first round warms up, and is dropped
                for name, path in PAGES.items():
                    fresh = context_of(browser)
                    first = load(fresh.new_page(), path)
                    fresh.close()
                    following = load(tab, path)
                    for how, marks in (("first visit", first), ("next page", following)):
                        if rep == 0:
                            continue
                        figure = figures[f"{name}, {how}"]
                        figure.html_ms.append(marks["html"])
                        figure.socket_ms.append(marks["socket"])
                        figure.snapshot_ms.append(marks["snapshot"])
                        figure.drawn_ms.append(marks["drawn"])
                        figure.snapshot_bytes = marks["bytes"]
            warm.close()
        finally:
            browser.close()
    return figures


def snapshots_in_process(cookie: str, reps: int) -> dict[str, Figure]:
    """The pages' server side without a browser or a network: the project's ASGI
    application in this process (channels' WebsocketCommunicator), from the WebSocket
    connect (with the session cookie) to the first snapshot frame, for each page's view."""
    from channels.testing import WebsocketCommunicator

    from orchestrator.asgi import application

    logging.getLogger("orchestrator.dashboard.consumers").setLevel(logging.WARNING)

    headers = [(b"cookie", f"sessionid={cookie}".encode()), (b"host", b"127.0.0.1")]
    headers.append((b"origin", b"http://127.0.0.1"))

    async def one(view: str) -> float:
        began = time.perf_counter()
        socket = WebsocketCommunicator(application, f"/ws/events/?view={view}", headers=headers)
        connected, _ = await socket.connect(timeout=30)
        assert connected
        while json.loads(await socket.receive_from(timeout=30))["type"] != "snapshot":
            pass
        took = (time.perf_counter() - began) * 1000
        await socket.disconnect()
        await asyncio.sleep(0.3)  # past the consumer's shared-build window (frames.FRESH)
        return took

    async def all_views() -> dict[str, Figure]:
        figures = {name: Figure(name, []) for name in PAGES}
        for rep in range(reps + 1):
            for name in PAGES:
                took = await one(name.lower())
                if rep:
                    figures[name].samples_ms.append(took)
        return figures

    return asyncio.run(all_views())


class Daphne:
    def __init__(self) -> None:
        from orchestrator.processes import Helper, HelperError, free_port, http_ok

        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.helper = Helper(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "orchestrator.asgi:application"],
            name="daphne", ready=http_ok(f"{self.base}/healthz"),
            log=Path(tempfile.gettempdir()) / "bench-scale-daphne.log",
            env=environment(), cwd=ROOT, start_timeout=60, new_session=False,
        )  # fmt: skip
        try:
            self.helper.start()
        except HelperError as exc:
            raise SystemExit(str(exc)) from None

    def stop(self) -> None:
        self.helper.stop()


# --- the run --------------------------------------------------------------------------


@dataclass
class Report:
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    build_seconds: dict[str, float] = field(default_factory=dict)
    frames: dict[str, dict[str, Figure]] = field(default_factory=dict)
    prechecks: dict[str, dict[str, Figure]] = field(default_factory=dict)
    sweeps: dict[str, Figure] = field(default_factory=dict)
    pages: dict[str, dict[str, PageFigure]] = field(default_factory=dict)
    in_process: dict[str, dict[str, Figure]] = field(default_factory=dict)
    driven: tuple[int, float, int] | None = None
    load: str = ""

    def markdown(self, command: str) -> str:
        lines = [f"Command: `{command}` (machine shared, 2 cores; load average {self.load})", ""]
        lines.append(
            "| board | agents | teams | resources | live locks | waits | deadlocks | built in |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, counts in self.sizes.items():
            lines.append(
                f"| {name} | {counts['agents']} | {counts['teams']} | {counts['resources']} | "
                f"{counts['locks']} | {counts['waits']} | {counts['deadlocks']} | "
                f"{self.build_seconds[name]:.1f} s |"
            )
        small, large = list(self.sizes)[:2]
        tables = (
            (
                "One WebSocket frame's build per event (feed_delta from the id before it; "
                "ms, median of the reps; the queries):",
                "event",
                self.frames,
                lambda f: f"{f.median:.2f}",
            ),
            (
                "The deadlock pre-check on a queued acquire (lock_acquire, ms, median / max; "
                "the queries):",
                "acquire",
                self.prechecks,
                lambda f: f"{f.median:.2f} / {f.max:.2f}",
            ),
        )
        for title, first, table, cell in tables:
            if not table:
                continue
            lines += ["", title, ""]
            lines.append(f"| {first} | {small} | {large} | ratio | queries {small} / {large} |")
            lines.append("|---|---|---|---|---|")
            for key, figure in table[large].items():
                base = table[small][key]
                lines.append(
                    f"| {key} | {cell(base)} | {cell(figure)} | "
                    f"{figure.median / base.median:.2f} | {base.queries} / {figure.queries} |"
                )
        if self.sweeps:
            lines += ["", "monitor_sweep (ms, median / max; queries; target under 100 ms):", ""]
            lines.append("| board | median | max | queries |")
            lines.append("|---|---|---|---|")
            for name, figure in self.sweeps.items():
                lines.append(
                    f"| {name} | {figure.median:.1f} | {figure.max:.1f} | {figure.queries} |"
                )
        if self.driven:
            events, seconds, errors = self.driven
            lines += [
                "",
                f"Driver: {events} events in {seconds:.1f} s = {events / seconds:.1f} "
                f"events/s, {errors} errors.",
            ]
        for condition, figures in self.in_process.items():
            lines += ["", f"Baseline, {condition}: the pages' server side in-process (the "
                      "ASGI application in the bench's process: WebSocket connect with the "
                      "session to the first snapshot frame of the page's view; ms, median / "
                      "max):", ""]  # fmt: skip
            lines.append("| view | connect -> snapshot |")
            lines.append("|---|---|")
            for name, figure in figures.items():
                lines.append(f"| {name} | {figure.median:.0f} / {figure.max:.0f} |")
        for condition, pages in self.pages.items():
            lines += [
                "",
                f"Pages at {large}, {condition}: ms from the request (Chromium, "
                "median / max; target: drawn under 500 ms):",
                "",
            ]
            lines.append(
                "| page | HTML | WebSocket opened by the scripts | snapshot received "
                "| snapshot drawn | snapshot size |"
            )
            lines.append("|---|---|---|---|---|---|")
            for figure in pages.values():
                cells = [
                    f"{statistics.median(values):.0f} / {max(values):.0f}"
                    for values in (
                        figure.html_ms,
                        figure.socket_ms,
                        figure.snapshot_ms,
                        figure.drawn_ms,
                    )
                ]
                size = f"{figure.snapshot_bytes / 1e3:.0f} kB"
                lines.append(f"| {figure.page} | {' | '.join(cells)} | {size} |")
        return "\n".join(lines) + "\n"


def small_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The baseline board: a tenth of the agents, in a tenth of the teams, so that each
    team (and what the measured events touch) has the same shape."""
    teams = max(1, args.teams // 10)
    return {
        "agents": args.agents // args.teams * teams,
        "teams": teams,
        "resources": args.resources // args.teams * teams,
        "locks": args.locks // args.teams * teams,
        "waits": args.waits // args.teams * teams,
        "deadlocks": min(args.deadlocks, teams),
    }


def run(args: argparse.Namespace) -> Report:
    from django.db import connection

    report = Report()
    boards = [("small", small_arguments(args)), ("large", fixture_arguments(args))]
    board = None
    for stage, (label, sizes) in enumerate(boards):
        connection.close() if stage else None
        fresh_database()
        setup()
        board = build(**sizes)
        name = f"{board.counts['agents']} agents"
        report.sizes[name] = board.counts
        report.build_seconds[name] = board.seconds
        print(f"{label} board: {board.counts} built in {board.seconds:.1f} s", flush=True)
        actors = Actors(board)
        report.frames[name] = frame_costs(actors, args.reps)
        report.prechecks[name] = precheck_costs(actors, args.reps)
        report.sweeps[f"{name}, idle"] = sweep_costs(args.reps)
    assert board is not None
    operator_login()
    cookie = session_cookie()
    server = Daphne()
    try:
        name = f"{board.counts['agents']} agents"
        report.in_process["idle"] = snapshots_in_process(cookie, args.reps)
        if not args.no_browser:
            report.pages["idle"] = page_times(server.base, cookie, args.reps)
        drivers = Drivers(board, args.drivers, args.rate)
        time.sleep(2.0)  # the drivers connect and reach their pace
        try:
            report.sweeps[f"{name}, {args.rate:g} events/s"] = sweep_costs(args.reps, 0.5)
            loaded = f"{args.rate:g} events/s"
            report.in_process[loaded] = snapshots_in_process(cookie, args.reps)
            if not args.no_browser:
                report.pages[loaded] = page_times(server.base, cookie, args.reps)
        finally:
            report.driven = drivers.finish()
    finally:
        server.stop()
    report.load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--locks", type=int, default=2000)
    parser.add_argument("--waits", type=int, default=500)
    parser.add_argument("--deadlocks", type=int, default=3)
    parser.add_argument(
        "--only-fixture", action="store_true", help="build the board, print a login, and stop"
    )
    parser.add_argument("--rate", type=float, default=RATE, help="driver events per second")
    parser.add_argument("--drivers", type=int, default=DRIVERS, help="driver processes")
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions of each figure")
    parser.add_argument("--markdown", type=Path, help="write the figures here too")
    parser.add_argument("--no-browser", action="store_true", help="skip the page timings")
    args = parser.parse_args()
    if args.only_fixture:
        fresh_database()
        setup()
        board = build(**fixture_arguments(args))
        print(f"fixture in {BENCH_DB}: {board.counts} built in {board.seconds:.1f} s")
        username, password = operator_login()
        print(f"login: username {username}  password {password}")
        print(
            f"serve it: DATABASE_URL={environment()['DATABASE_URL']} REDIS_URL={REDIS_URL} "
            ".venv/bin/daphne -b 127.0.0.1 -p 8000 orchestrator.asgi:application"
        )
        return
    report = run(args)
    text = report.markdown(" ".join([Path(sys.executable).name, *sys.argv]))
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
