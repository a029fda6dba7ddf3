"""The deadlock detector at the size of a board (issue 18, point 3; bench/scale.py): the
pre-check of a queued acquire reads what the new wait reaches, not the whole graph, and
finds what the whole graph would; the sweep's queries do not grow with the deadlocks it
has reported already."""

from __future__ import annotations

import random
import re

import networkx as nx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator.core.deadlocks import (
    _local_graph,
    deadlock_check_for,
    deadlock_sweep,
    wait_for_graph,
)
from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import Conflict, LockMode
from orchestrator.core.queue import db_now
from orchestrator.core.resources import resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def team_of(size: int, resources: int, prefix: str = ""):
    team = factories.team()
    agents = [factories.agent(team_=team, name=f"{team.name}-a{i}") for i in range(size)]
    names = [f"{prefix}{team.name}-r{i}" for i in range(resources)]
    for name in names:
        resource_create(team=team, name=name, value=0)
    return agents, names


def acquire(agent, resource, mode=LockMode.EXCLUSIVE):
    return lock_acquire(agent=agent, resource=resource, mode=mode, ttl=3600)


def statements(captured: CaptureQueriesContext) -> list[str]:
    """The SQL run, with the clock's readings (interpolated timestamps) left out."""
    return [re.sub(r"'\d{4}-\d\d-\d\d [^']*'", "'<now>'", q["sql"]) for q in captured]


def chain(agents, names) -> None:
    """agents[k] holds names[k] and waits for names[k + 1]: a chain, no cycle."""
    for agent, name in zip(agents, names, strict=False):
        assert acquire(agent, name).status == "granted"
    for agent, name in zip(agents, names[1:], strict=False):
        assert acquire(agent, name).status == "waiting"


def test_pre_check_reads_what_the_wait_reaches_not_the_rest_of_the_board() -> None:
    agents, names = team_of(4, 4)
    chain(agents[1:], names[1:])  # a1 -> a2 -> a3
    waiter = agents[0]
    # Queued behind a1, who waits elsewhere: the check runs (no cheap exit).
    queued = acquire(waiter, names[1])
    assert queued.status == "waiting" and queued.deadlock is None

    with CaptureQueriesContext(connection) as before:
        assert deadlock_check_for(waiter) is None
    # Waits elsewhere on the board, none reachable from the waiter.
    for _ in range(3):
        chain(*team_of(3, 3))
    with CaptureQueriesContext(connection) as after:
        assert deadlock_check_for(waiter) is None
    # The same statements with the same parameters: nothing about the other waits is
    # read (reading the whole graph names every waited-for resource).
    assert statements(after) == statements(before)


def test_pre_check_reports_the_cycle_it_closes_through_a_chain() -> None:
    agents, names = team_of(4, 4)
    chain(agents, names)  # a0 -> a1 -> a2 -> a3
    closing = acquire(agents[3], names[0])  # a3 -> a0: a cycle of four
    assert closing.deadlock is not None
    (conflict,) = Conflict.objects.filter(kind="deadlock", status="open")
    assert conflict.pk == closing.deadlock.pk
    assert set(conflict.data["agent_ids"]) == {agent.pk for agent in agents}
    assert set(conflict.resources.values_list("name", flat=True)) == set(names)


def test_a_wait_behind_a_reported_cycle_reports_that_cycle() -> None:
    agents, names = team_of(3, 2)
    a, b, c = agents
    assert acquire(a, names[0]).status == "granted"
    assert acquire(b, names[1]).status == "granted"
    acquire(a, names[1])
    cycle = acquire(b, names[0]).deadlock
    assert cycle is not None
    behind = acquire(c, names[0])  # c waits for the cycle, is not part of it
    assert behind.deadlock is not None and behind.deadlock.pk == cycle.pk


def edges(graph: nx.DiGraph, nodes: set[int]) -> dict[tuple[int, int], dict[int, str]]:
    return {(u, v): data["resources"] for u, v, data in graph.subgraph(nodes).edges(data=True)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_local_graph_is_the_part_of_the_graph_the_agent_reaches(seed: int) -> None:
    """On a random board of shared and exclusive locks and waits (plain names and paths
    under folders), each waiting agent's local graph has exactly the edges of the whole
    graph among what it reaches, and the same cycles through it."""
    rng = random.Random(seed)
    agents, names = team_of(8, 6)
    team = agents[0].team
    paths = ["src/", "src/a.py", "src/b.py"]
    for name in paths:
        resource_create(team=team, name=name, value=0)
    resources = names + paths
    for _ in range(40):
        agent, name = rng.choice(agents), rng.choice(resources)
        mode = rng.choice([LockMode.EXCLUSIVE, LockMode.SHARED])
        try:
            acquire(agent, name, mode)
        except Exception:  # an upgrade refused, say: not what this test is about
            continue
    now = db_now()
    whole = wait_for_graph(now)
    assert whole.number_of_edges() > 5, "a board with waits"
    for agent_id in list(whole.nodes):
        local = _local_graph(agent_id, now)
        reach = nx.descendants(whole, agent_id) | {agent_id}
        assert nx.descendants(local, agent_id) | {agent_id} == reach
        assert edges(local, reach) == edges(whole, reach)


def test_sweep_queries_do_not_grow_with_the_deadlocks_it_reported() -> None:
    def cycle() -> None:
        agents, names = team_of(2, 2)
        a, b = agents
        acquire(a, names[0])
        acquire(b, names[1])
        acquire(a, names[1])
        acquire(b, names[0])

    cycle()
    with CaptureQueriesContext(connection) as one:
        assert deadlock_sweep().detected == []
    for _ in range(4):
        cycle()
    assert Conflict.objects.filter(kind="deadlock", status="open").count() == 5
    with CaptureQueriesContext(connection) as five:
        assert deadlock_sweep().detected == []
    assert len(five) == len(one)


def test_monitor_sweep_queries_do_not_grow_with_the_board() -> None:
    from bench.scale import build
    from orchestrator.core.monitor import monitor_sweep

    shape = {"agents": 10, "resources": 40, "locks": 20, "waits": 5}
    build(teams=1, deadlocks=1, **shape)
    with CaptureQueriesContext(connection) as small:
        assert not monitor_sweep()
    build(teams=9, deadlocks=9, prefix="more-", **{key: n * 9 for key, n in shape.items()})
    assert Conflict.objects.filter(kind="deadlock", status="open").count() == 10
    with CaptureQueriesContext(connection) as large:
        assert not monitor_sweep()
    assert len(large) == len(small)


def test_pre_check_follows_a_folder_lock_to_the_cycle_behind_it() -> None:
    """a waits for src/a.py, covered by b's lock on src/ (an edge the one-statement read
    does not follow: a second round reads b's waits), b waits for c, c for a."""
    (a, b, c), names = team_of(3, 2)
    team = a.team
    for name in ("src/", "src/a.py"):
        resource_create(team=team, name=name, value=0)
    assert acquire(a, names[0]).status == "granted"
    assert acquire(b, "src/").status == "granted"
    assert acquire(c, names[1]).status == "granted"
    assert acquire(b, names[1]).deadlock is None
    assert acquire(c, names[0]).deadlock is None
    closing = acquire(a, "src/a.py")
    assert closing.status == "waiting" and closing.deadlock is not None
    assert set(closing.deadlock.data["agent_ids"]) == {a.pk, b.pk, c.pk}
