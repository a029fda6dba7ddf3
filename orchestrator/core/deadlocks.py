"""The deadlock detector: the wait-for graph, cycle reports, and breaking them.

Nodes are agents. A waiting request of agent W on resource R adds edges
W -> H for every live holder H of R whose lock is incompatible with W's mode
("hold" edges), and W -> Q for every earlier queued request Q on R that W must
let go first ("queue" edges: grants are FIFO, so a shared request queued
behind an exclusive one waits for it). Expired leases count as free.

A cycle is checked for when a request is queued (inside that transaction) and
by the monitor's sweep, which catches cycles formed by concurrent requests
that could not see each other. Each strongly connected component with more
than one agent is one open Conflict (kind deadlock) keyed by its agents, so
it is reported once. By the team's policy an operator chooses the victim, or
the youngest / least-progressed agent is aborted automatically, in a
transaction of its own after the detecting one commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import networkx as nx
from django.db import transaction
from django.db.models import Count, Q

from orchestrator.core import paths, sql, wakeups
from orchestrator.core.conflicts import deadlock_open
from orchestrator.core.errors import Conflicting, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Conflict,
    ConflictKind,
    ConflictStatus,
    DeadlockPolicy,
    Lock,
    LockMode,
    LockRequest,
    RequestStatus,
    Resource,
    Step,
)
from orchestrator.core.queue import Queue, db_now, revoke
from orchestrator.core.rowlocks import lock_conflicts, lock_resources
from orchestrator.core.types import User

logger = logging.getLogger(__name__)


class BreakAction:
    ABORT = "abort"  # cancel the victim's wait and revoke its locks in the cycle
    CANCEL_WAIT = "cancel_wait"
    REVOKE = "revoke"
    ALL = (ABORT, CANCEL_WAIT, REVOKE)


_WAIT_FIELDS = ("pk", "agent_id", "resource_id", "mode", "resource__name", "resource__team_id")


def wait_for_graph(now: datetime | None = None) -> nx.DiGraph:
    """The current wait-for graph. Edge attribute ``resources``: {resource_id: kind}.

    Two queries whatever the board's size (plus one per waited-for path): the waiting
    requests with their resources' names, and the live locks on what they wait for, read
    by a subquery rather than by a list of ids.
    """
    now = now or db_now()
    graph = nx.DiGraph()
    waiting = list(
        LockRequest.objects.filter(status=RequestStatus.WAITING)
        .order_by("pk")
        .values(*_WAIT_FIELDS)
    )
    if not waiting:
        return graph
    waited = LockRequest.objects.filter(status=RequestStatus.WAITING).values("resource_id")
    _add_waits(graph, waiting, _holders(waited, now), _covering_holders(waiting, now))
    return graph


def _local_graph(agent_id: int, now: datetime) -> nx.DiGraph:
    """The part of the wait-for graph reachable from ``agent_id``, and the edges of the
    other waiters of what it reaches: the agents its wait-for edges reach, and their
    resources' queues and live locks, read in one statement (sql.waits_reached), so it
    costs what the agent's waits reach, not the board's size. A path's covering locks
    (core/paths.py) are edges that statement does not follow: the agents they lead to
    are read in another round.

    Every agent reachable from ``agent_id`` has all its out-edges here (its waits were
    read with it), so cycles through it, and the components it reaches, are those of
    :func:`wait_for_graph`.
    """
    reached: set[int] = set()
    waiting: dict[int, dict[str, Any]] = {}
    holders: dict[int, list[tuple[int, str]]] = {}
    covering: dict[int, list[Lock]] = {}
    seeds = {agent_id}
    while True:
        found = sql.waits_reached(sorted(seeds), now)
        reached |= found.agents | seeds
        waiting.update((request["pk"], request) for request in found.waiting)
        holders.update(found.holders)
        new = [request for request in found.waiting if request["resource_id"] not in covering]
        covering.update(_covering_holders(new, now))
        graph = nx.DiGraph()
        graph.add_node(agent_id)
        _add_waits(graph, sorted(waiting.values(), key=lambda r: r["pk"]), holders, covering)
        seeds = (nx.descendants(graph, agent_id) | {agent_id}) - reached
        if not seeds:
            return graph


def _holders(resource_ids: Any, now: datetime) -> dict[int, list[tuple[int, str]]]:
    """(agent, mode) of the live locks on ``resource_ids`` (ids or a subquery), by resource."""
    holders: dict[int, list[tuple[int, str]]] = {}
    for agent_id, resource_id, mode in Lock.objects.filter(
        resource_id__in=resource_ids, released_at__isnull=True, expires_at__gt=now
    ).values_list("agent_id", "resource_id", "mode"):
        holders.setdefault(resource_id, []).append((agent_id, mode))
    return holders


def _add_waits(
    graph: nx.DiGraph,
    waiting: list[dict[str, Any]],
    holders: dict[int, list[tuple[int, str]]],
    covering: dict[int, list[Lock]],
) -> None:
    """The edges out of ``waiting`` (whole queues, in queue order): to the incompatible
    holders of what each waits for, its covering locks, and the requests ahead of it."""
    queues: dict[int, list[dict[str, Any]]] = {}
    for request in waiting:
        graph.add_node(request["agent_id"])
        rid = request["resource_id"]
        exclusive = request["mode"] == LockMode.EXCLUSIVE
        for agent_id, mode in holders.get(rid, []):
            if agent_id != request["agent_id"] and (exclusive or mode == LockMode.EXCLUSIVE):
                _edge(graph, request["agent_id"], agent_id, rid, "hold")
        for lock in covering.get(rid, []):  # a folder above, or a path under it
            if lock.agent_id != request["agent_id"] and (
                exclusive or lock.mode == LockMode.EXCLUSIVE
            ):
                _edge(graph, request["agent_id"], lock.agent_id, lock.resource_id, "hold")
        for ahead in queues.get(rid, []):
            if ahead["agent_id"] != request["agent_id"] and (
                exclusive or ahead["mode"] == LockMode.EXCLUSIVE
            ):
                _edge(graph, request["agent_id"], ahead["agent_id"], rid, "queue")
        queues.setdefault(rid, []).append(request)


def _covering_holders(waiting: list[dict[str, Any]], now: datetime) -> dict[int, list[Lock]]:
    """For each path among the resources ``waiting`` waits for, the live locks that
    cover it (core/paths.py): one query per waited-for path, none for other names."""
    waited_paths = {
        request["resource_id"]: Resource(
            pk=request["resource_id"],
            name=request["resource__name"],
            team_id=request["resource__team_id"],
        )
        for request in waiting
        if paths.SEPARATOR in request["resource__name"]
    }
    return {pk: paths.covering_locks(res, now) for pk, res in waited_paths.items()}


def _edge(graph: nx.DiGraph, waiter: int, blocker: int, resource_id: int, kind: str) -> None:
    if graph.has_edge(waiter, blocker):
        graph.edges[waiter, blocker]["resources"].setdefault(resource_id, kind)
    else:
        graph.add_edge(waiter, blocker, resources={resource_id: kind})


def deadlocked_components(graph: nx.DiGraph) -> list[frozenset[int]]:
    """Sets of agents that wait on each other in a cycle."""
    return [
        frozenset(component)
        for component in nx.strongly_connected_components(graph)
        if len(component) > 1
    ]


def cycle_key(agent_ids: frozenset[int]) -> str:
    return "agents:" + ",".join(str(pk) for pk in sorted(agent_ids))


@dataclass
class CycleReport:
    conflict: Conflict
    created: bool


def _report(graph: nx.DiGraph, component: frozenset[int]) -> CycleReport:
    """Open (or find) the deadlock Conflict of one component. Inside a service."""
    key = cycle_key(component)
    existing = Conflict.objects.filter(
        kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN, key=key
    ).first()
    if existing is not None:
        return CycleReport(existing, False)
    sub = graph.subgraph(component)
    agents = {a.pk: a for a in Agent.objects.filter(pk__in=component).select_related("team")}
    resource_ids = sorted({rid for _, _, data in sub.edges(data=True) for rid in data["resources"]})
    names = dict(Resource.objects.filter(pk__in=resource_ids).values_list("pk", "name"))
    edges = [
        {
            "agent": agents[waiter].name,
            "agent_id": waiter,
            "waits_for": agents[blocker].name,
            "waits_for_id": blocker,
            "resources": [names[rid] for rid in sorted(data["resources"])],
            "kinds": sorted(set(data["resources"].values())),
        }
        for waiter, blocker, data in sorted(sub.edges(data=True))
    ]
    cycle = [waiter for waiter, _ in nx.find_cycle(sub)]
    detail = "; ".join(
        f"{e['agent']} waits for {e['waits_for']} ({', '.join(e['resources'])})" for e in edges
    )
    # The team whose policy applies: that of the agent that waited last.
    youngest = _youngest(component)
    team_id = agents[youngest].team_id
    conflict, created = deadlock_open(
        key=key,
        team_id=team_id,
        agent_ids=component,
        resource_ids=resource_ids,
        detail=detail,
        data={
            "edges": edges,
            "cycle": [agents[pk].name for pk in cycle],
            "agent_ids": sorted(component),
            "resource_ids": resource_ids,
        },
        payload={
            "agents": sorted(a.name for a in agents.values()),
            "resources": [names[r] for r in resource_ids],
            "detail": detail,
            "policy": agents[youngest].team.deadlock_policy,
        },
    )
    if not created:
        return CycleReport(conflict, False)
    if agents[youngest].team.deadlock_policy != DeadlockPolicy.ASK_OPERATOR:
        conflict_id = conflict.pk
        transaction.on_commit(lambda: _auto_break(conflict_id))
    return CycleReport(conflict, True)


def _youngest(component: frozenset[int]) -> int:
    """The agent whose waiting request is the newest."""
    newest = (
        LockRequest.objects.filter(agent_id__in=component, status=RequestStatus.WAITING)
        .order_by("-requested_at", "-pk")
        .values_list("agent_id", flat=True)
        .first()
    )
    return newest if newest is not None else max(component)


def choose_victim(component: frozenset[int], policy: str) -> int:
    """The agent an automatic policy aborts."""
    if policy == DeadlockPolicy.ABORT_LEAST_PROGRESS:
        done = dict(
            Agent.objects.filter(pk__in=component)
            .annotate(done=Count("steps", filter=Q(steps__status=Step.Status.DONE)))
            .values_list("pk", "done")
        )
        least = min(done.values())
        candidates = frozenset(pk for pk, count in done.items() if count == least)
        if len(candidates) == 1:
            return next(iter(candidates))
        return _youngest(candidates)
    return _youngest(component)


def deadlock_check_for(agent: Agent) -> Conflict | None:
    """Check for a cycle reachable from ``agent`` right after it queued. Inside a service.

    The caller has taken the cheap exit already where it could (locks.py: when no
    agent holding or queued on the resource also waits on another one, every
    wait-for edge out of it stays there, and no cycle is reachable).
    """
    graph = _local_graph(agent.pk, db_now())
    try:
        nx.find_cycle(graph, source=agent.pk)
    except nx.NetworkXNoCycle:
        return None
    # The cycle this request closed (the agent's own component) first: another cycle it
    # only waits behind may be reported already, and must not hide the new one. Only
    # what it reaches is complete in the local graph; every component it reaches is.
    reachable = graph.subgraph(nx.descendants(graph, agent.pk) | {agent.pk})
    components = sorted(deadlocked_components(reachable), key=lambda c: agent.pk not in c)
    return _report(reachable, components[0]).conflict if components else None


@dataclass
class SweepResult:
    detected: list[int]
    dissolved: list[int]


@service
def deadlock_sweep() -> SweepResult:
    """Report every cycle not yet reported; close reports whose cycle is gone."""
    open_conflicts = list(
        Conflict.objects.filter(kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN).values_list(
            "pk", "key"
        )
    )
    graph = wait_for_graph()
    components = deadlocked_components(graph)
    current = {cycle_key(c) for c in components}
    # A cycle reported already is not looked up again: the sweep's queries do not grow
    # with the number of open deadlocks.
    reported = {key for _, key in open_conflicts}
    detected = [
        report.conflict.pk
        for report in (
            _report(graph, component)
            for component in components
            if cycle_key(component) not in reported
        )
        if report.created
    ]
    gone = [pk for pk, key in open_conflicts if key not in current]
    dissolved = []
    for conflict in lock_conflicts(gone):
        if conflict.status != ConflictStatus.OPEN:
            continue
        conflict.status = ConflictStatus.RESOLVED
        conflict.resolved_at = db_now()
        conflict.resolution = "dissolved: the cycle is gone (a lease or a wait ended)"
        conflict.save(update_fields=["status", "resolved_at", "resolution"])
        event_emit(
            "conflict.resolved",
            team=conflict.team_id,
            actor="system",
            subject=conflict,
            payload={"kind": conflict.kind, "resolution": conflict.resolution},
        )
        dissolved.append(conflict.pk)
    return SweepResult(detected, dissolved)


def _auto_break(conflict_id: int) -> None:
    conflict = Conflict.objects.filter(pk=conflict_id, status=ConflictStatus.OPEN).first()
    if conflict is None:
        return
    component = frozenset(conflict.data.get("agent_ids", []))
    policy = conflict.team.deadlock_policy if conflict.team else DeadlockPolicy.ABORT_YOUNGEST
    if policy == DeadlockPolicy.ASK_OPERATOR or not component:
        return
    try:
        deadlock_break(
            conflict_id=conflict_id,
            victim_id=choose_victim(component, policy),
            action=BreakAction.ABORT,
            policy=policy,
        )
    except Conflicting:
        pass  # somebody else broke it first
    except Exception:  # the monitor's sweep retries open automatic conflicts
        logger.exception("automatic deadlock break of conflict %s failed", conflict_id)


def auto_break_pending() -> int:
    """Break open deadlocks of automatic-policy teams (the monitor retries here)."""
    ids = list(
        Conflict.objects.filter(kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN)
        .exclude(team__deadlock_policy=DeadlockPolicy.ASK_OPERATOR)
        .exclude(team__isnull=True)
        .values_list("pk", flat=True)
    )
    for conflict_id in ids:
        _auto_break(conflict_id)
    return len(ids)


@service
def deadlock_break(
    *,
    conflict_id: int,
    victim_id: int,
    action: str = BreakAction.ABORT,
    user: User = None,
    policy: str = "",
) -> Conflict:
    """Break a deadlock by sacrificing ``victim_id``.

    ``cancel_wait`` aborts the victim's waiting requests; ``revoke`` ends its
    live locks that other agents of the cycle wait for (bumping each fence,
    so its later writes are rejected); ``abort`` does both. The conflict is
    resolved naming who broke it. Raises Conflicting if it is already
    resolved (two operators acting at once: the database picks one).
    """
    if action not in BreakAction.ALL:
        raise Invalid("invalid_action", f"action must be one of {', '.join(BreakAction.ALL)}")
    snapshot = Conflict.objects.filter(pk=conflict_id, kind=ConflictKind.DEADLOCK).first()
    if snapshot is None:
        raise NotFound("conflict_not_found", f"no deadlock conflict with id {conflict_id}")
    members = set(snapshot.data.get("agent_ids", []))
    if victim_id not in members:
        raise Invalid("invalid_victim", "the victim must be one of the agents in the cycle")
    cycle_resources = set(snapshot.data.get("resource_ids", []))
    waits = LockRequest.objects.filter(agent_id=victim_id, status=RequestStatus.WAITING)
    wait_resources = set(waits.values_list("resource_id", flat=True))
    held_resources = set(
        Lock.objects.filter(
            agent_id=victim_id, released_at__isnull=True, resource_id__in=cycle_resources
        ).values_list("resource_id", flat=True)
    )
    paths.lock_paths_of(sorted(wait_resources | held_resources))  # before the rows
    resources = lock_resources(wait_resources | held_resources)
    (conflict,) = lock_conflicts([conflict_id]) or [None]
    if conflict is None or conflict.status != ConflictStatus.OPEN:
        raise Conflicting("already_resolved", "this deadlock has already been resolved")
    victim = Agent.objects.get(pk=victim_id)
    now = db_now()
    done: list[str] = []
    for res in resources:
        queue = Queue(res, now)
        if action in (BreakAction.ABORT, BreakAction.CANCEL_WAIT):
            for request in [r for r in queue.waiting if r.agent_id == victim_id]:
                queue.withdraw(
                    request,
                    RequestStatus.ABORTED,
                    f"deadlock victim (conflict #{conflict.pk})",
                    team=conflict.team_id,
                    user=user,
                    actor=None if user else "system",
                )
                wakeups.schedule(agent_id=victim_id, step_id=request.step_id, reason="aborted")
                done.append(f"wait for {res.name} cancelled")
        if action in (BreakAction.ABORT, BreakAction.REVOKE) and res.pk in cycle_resources:
            for lock in [lock for lock in queue.live if lock.agent_id == victim_id]:
                revoke(queue, lock, user=user)
                done.append(f"lock on {res.name} revoked")
        queue.grant_waiters()
    by = f"operator {user.get_username()}" if user else f"policy {policy or 'automatic'}"
    conflict.status = ConflictStatus.RESOLVED
    conflict.resolved_at = now
    conflict.resolved_by = user if user is not None and user.is_authenticated else None
    conflict.resolution = f"victim {victim.name} ({action}) by {by}: " + (
        "; ".join(done) or "nothing left to undo"
    )
    conflict.data = {**conflict.data, "victim": victim.name, "action": action}
    conflict.save(update_fields=["status", "resolved_at", "resolved_by", "resolution", "data"])
    event_emit(
        "deadlock.broken",
        team=conflict.team_id,
        user=user,
        actor=None if user else "system",
        subject=conflict,
        payload={
            "conflict": conflict.pk,
            "victim": victim.name,
            "action": action,
            "resolution": conflict.resolution,
        },
    )
    return conflict
