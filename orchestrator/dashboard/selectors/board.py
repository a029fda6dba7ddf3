"""The live board: the state the dashboard's pages draw, as plain JSON-safe data.

A browser holds one board. It gets it whole (:func:`board_snapshot`) on
connect, then patches (:func:`board_patch`) built from the events that
happened since: every entity an event touches is read again from the
database and sent whole, so a browser that applied the patches up to event
N holds what a fresh snapshot taken after N would hold (for the entities
those events touched, possibly newer: later events re-send them again).

Shape (collections are maps keyed by id, as strings once on the wire)::

    system     {"paused": bool}
    counts     {"approvals": open approvals, "conflicts": open conflicts}
    teams      {id: {id, name, paused, deadlock_policy, conflict_policy}}
    runs       {id: {id, team, goal, status, paused, steps_done, agents, agents_finished, ...}}
    agents     {id: {id, name, team, status, paused, holds: [...], waits: [...]}}
    resources  {id: {id, name, team, value, version, fence, holders: [...], waiters: [...]}}
    deadlocks  {id: {id, team, policy, agent_ids, resource_ids, cycle, edges, detail}}

An agent's ``waits`` are its waiting lock requests, except that a waiting lock set
(core/lock_sets.py) is one wait of its own, whatever it holds and wherever it is
queued: ``{lock_set, mode, since, request_id, resource, resource_name, resources}``
where ``resource`` is where it is queued (None between a grant and its next step)
and ``resources`` lists every resource of the set in the order it takes them, each
``{id, name, state}`` with state ``held``, ``queued`` or ``later``. A lock of a set
(``holds``, ``holders``) names it in ``lock_set``; a waiter of a resource queued for a
set carries the set (``{id, size, resources: [names]}``) in ``lock_set``.

``agents[..].status`` is derived: done, failed, paused, waiting_human (a
pending approval, or a deadlock that waits for an operator), waiting_lock (a
waiting lock request or lock set), running or idle. Everything agents wrote (names,
values, details) is data for ``textContent``, never markup.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db.models import Count, Exists, OuterRef, Q

from orchestrator.core.events import last_event_id
from orchestrator.core.kinds import COUNTS, GRAPH, KINDS, RESOURCES, RUNS, SYSTEM
from orchestrator.core.models import (
    Agent,
    AgentStatus,
    Approval,
    ApprovalStatus,
    Conflict,
    ConflictKind,
    ConflictStatus,
    DeadlockPolicy,
    Lock,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
    ResourceGrant,
    Run,
    Step,
    Switchboard,
    Team,
)

COLLECTIONS = ("teams", "runs", "agents", "resources")
Ids = Iterable[int] | None
VALUE_PREVIEW_CHARS = 160
RECENT_RUNS = 20
ACTIVE_RUN_STATUSES = (Run.Status.PENDING, Run.Status.RUNNING, Run.Status.PAUSED)
OPEN_STEP_STATUSES = (Step.Status.QUEUED, Step.Status.RUNNING, Step.Status.WAITING)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def value_preview(value: Any, limit: int = VALUE_PREVIEW_CHARS) -> str:
    """A resource value as compact JSON text, cut to ``limit`` characters (with an ellipsis)."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- rows -----------------------------------------------------------------------------


def _teams(ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    """The teams, each with what other teams share with it (``shared``: grants as
    ``{owner, resource, prefix, access}``), so that a page filtered by team shows the
    resources its agents may use (core/tenancy.py), not only those it owns."""
    queryset = Team.objects.all() if ids is None else Team.objects.filter(pk__in=list(ids))
    rows = {
        row["id"]: {**row, "shared": []}
        for row in queryset.values("id", "name", "paused", "deadlock_policy", "conflict_policy")
    }
    grants = ResourceGrant.objects.filter(team_id__in=list(rows)).order_by("pk")
    for grant in grants.values("team_id", "owner_id", "resource_id", "prefix", "access"):
        rows[grant.pop("team_id")]["shared"].append(
            {
                "owner": grant["owner_id"],
                "resource": grant["resource_id"],
                "prefix": grant["prefix"],
                "access": grant["access"],
            }
        )
    return rows


def _runs(ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    if ids is None:
        recent = list(
            Run.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)[:RECENT_RUNS]
        )
        active = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).values_list("pk", flat=True)
        ids = set(recent) | set(active)
    ids = list(ids)
    rows = Run.objects.filter(pk__in=ids).values(
        "id", "team_id", "goal", "status", "paused", "max_steps", "created_at", "finished_at"
    )
    progress = {
        row["run_id"]: row
        for row in Step.objects.filter(run_id__in=ids)
        .values("run_id")
        .annotate(
            steps_done=Count("id", filter=Q(status=Step.Status.DONE)),
            agents=Count("agent_id", distinct=True),
            agents_active=Count("agent_id", distinct=True, filter=Q(status__in=OPEN_STEP_STATUSES)),
        )
    }
    result = {}
    for row in rows:
        step_counts = progress.get(row["id"], {})
        agents = step_counts.get("agents", 0)
        result[row["id"]] = {
            "id": row["id"],
            "team": row["team_id"],
            "goal": row["goal"][:300],
            "status": row["status"],
            "paused": row["paused"],
            "max_steps": row["max_steps"],
            "steps_done": step_counts.get("steps_done", 0),
            "agents": agents,
            "agents_finished": agents - step_counts.get("agents_active", 0),
            "created_at": _iso(row["created_at"]),
            "finished_at": _iso(row["finished_at"]),
        }
    return result


def _of_either(queryset: Any, agent_ids: Ids, resource_ids: Ids) -> Any:
    """The rows of these agents or of these resources; every row when both are None."""
    if agent_ids is None and resource_ids is None:
        return queryset
    return queryset.filter(Q(agent_id__in=agent_ids or []) | Q(resource_id__in=resource_ids or []))


# The fields a live lock and a waiting request share, and how the board names them.
_LIVE_FIELDS = (
    "id",
    "agent_id",
    "agent__name",
    "resource_id",
    "resource__name",
    "mode",
    "lock_set_id",
)


def _live_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent": row["agent_id"],
        "agent_name": row["agent__name"],
        "resource": row["resource_id"],
        "resource_name": row["resource__name"],
        "mode": row["mode"],
        "lock_set": row["lock_set_id"],
    }


def _live_locks(*, agent_ids: Ids = None, resource_ids: Ids = None) -> list[dict[str, Any]]:
    """Unreleased locks (a lease that ran out shows until the protocol marks it expired)."""
    queryset = _of_either(Lock.objects.filter(released_at__isnull=True), agent_ids, resource_ids)
    return [
        {
            "lock_id": row["id"],
            **_live_row(row),
            "fence": row["token"],
            "acquired_at": _iso(row["acquired_at"]),
            "expires_at": _iso(row["expires_at"]),
        }
        for row in queryset.order_by("pk").values(
            *_LIVE_FIELDS, "token", "acquired_at", "expires_at"
        )
    ]


def _waits(*, agent_ids: Ids = None, resource_ids: Ids = None) -> list[dict[str, Any]]:
    """Waiting lock requests, in queue (FIFO) order."""
    queryset = _of_either(
        LockRequest.objects.filter(status=RequestStatus.WAITING), agent_ids, resource_ids
    )
    return [
        {"request_id": row["id"], **_live_row(row), "requested_at": _iso(row["requested_at"])}
        for row in queryset.order_by("pk").values(*_LIVE_FIELDS, "requested_at")
    ]


def _waiting_sets(*, agent_ids: list[int], ids: list[int]) -> dict[int, dict[str, Any]]:
    """The waiting lock sets of ``agent_ids`` and those of ``ids``, each with its
    resources in the order it takes them (ascending id), in one query."""
    members = LockSet.resources.through.objects.filter(
        Q(lockset__agent_id__in=agent_ids) | Q(lockset_id__in=ids),
        lockset__status=RequestStatus.WAITING,
    )
    sets: dict[int, dict[str, Any]] = {}
    for row in members.order_by("lockset_id", "resource_id").values(
        "lockset_id",
        "lockset__agent_id",
        "lockset__mode",
        "lockset__requested_at",
        "resource_id",
        "resource__name",
    ):
        lock_set = sets.setdefault(
            row["lockset_id"],
            {
                "lock_set": row["lockset_id"],
                "agent": row["lockset__agent_id"],
                "mode": row["lockset__mode"],
                "since": _iso(row["lockset__requested_at"]),
                "resources": [],
            },
        )
        lock_set["resources"].append({"id": row["resource_id"], "name": row["resource__name"]})
    return sets


class LiveRows:
    """The live locks and the waiting requests of some agents and resources (all of
    them: None), read once for the agents' rows and the resources' rows of a patch or
    a snapshot: two queries instead of four. The waiting lock sets they need are read
    on demand (:meth:`waiting_sets`): no query while nobody waits for a set."""

    def __init__(self, *, agent_ids: Ids = None, resource_ids: Ids = None) -> None:
        self.locks = _live_locks(agent_ids=agent_ids, resource_ids=resource_ids)
        self.waits = _waits(agent_ids=agent_ids, resource_ids=resource_ids)
        self._sets: dict[int, dict[str, Any]] = {}
        self._asked_agents: set[int] = set()
        self._asked_sets: set[int] = set()

    def waiting_sets(self, agent_ids: Iterable[int] = ()) -> dict[int, dict[str, Any]]:
        """The waiting lock sets of ``agent_ids`` and of every waiting request read here,
        by id; one query for those not read yet, none when there are none."""
        agents = set(agent_ids) - self._asked_agents
        ids = {wait["lock_set"] for wait in self.waits if wait["lock_set"]} - self._asked_sets
        if agents or ids:
            self._sets.update(_waiting_sets(agent_ids=sorted(agents), ids=sorted(ids)))
            self._asked_agents |= agents
            self._asked_sets |= ids | set(self._sets)
        return self._sets

    def by(self, key: str, ids: Ids) -> tuple[dict[int, list], dict[int, list]]:
        """The locks and the waits of each of ``ids`` (all: None), by ``key``
        (agent or resource), in id and queue order."""
        wanted = None if ids is None else set(ids)
        locks: dict[int, list[dict[str, Any]]] = defaultdict(list)
        waits: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for rows, into in ((self.locks, locks), (self.waits, waits)):
            for row in rows:
                if wanted is None or row[key] in wanted:
                    into[row[key]].append(row)
        return locks, waits


def _waits_for_human() -> Exists:
    """Whether the agent of the outer row waits for a human: a pending approval, or an
    open deadlock whose team leaves the victim to an operator (an annotation, so the
    agents' rows come in one query)."""
    approvals = Approval.objects.filter(status=ApprovalStatus.PENDING, agent_id=OuterRef("pk"))
    deadlocks = Conflict.agents.through.objects.filter(
        agent_id=OuterRef("pk"),
        conflict__kind=ConflictKind.DEADLOCK,
        conflict__status=ConflictStatus.OPEN,
        conflict__team__deadlock_policy=DeadlockPolicy.ASK_OPERATOR,
    )
    return Exists(approvals) | Exists(deadlocks)


def _agent_waits(
    waits: list[dict[str, Any]], holds: list[dict[str, Any]], sets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """An agent's waits: its requests, then each of its waiting lock ``sets`` as one
    wait (with the request it is queued with folded into it)."""
    ids = {lock_set["lock_set"] for lock_set in sets}
    of_set = {wait["lock_set"]: wait for wait in waits if wait["lock_set"] in ids}
    plain = [
        {k: wait[k] for k in ("request_id", "resource", "resource_name", "mode")}
        for wait in waits
        if wait["lock_set"] not in ids
    ]
    return plain + [
        _set_wait(lock_set, of_set.get(lock_set["lock_set"]), holds) for lock_set in sets
    ]


def _set_wait(
    lock_set: dict[str, Any], queued: dict[str, Any] | None, holds: list[dict[str, Any]]
) -> dict[str, Any]:
    """One waiting lock set as a wait: where it is queued (``queued``, its request, if
    any), and the state of each of its resources (its locks among ``holds``)."""
    held = {lock["resource"] for lock in holds if lock["lock_set"] == lock_set["lock_set"]}
    at = queued["resource"] if queued else None
    return {
        "lock_set": lock_set["lock_set"],
        "mode": lock_set["mode"],
        "since": lock_set["since"],
        "request_id": queued["request_id"] if queued else None,
        "resource": at,
        "resource_name": queued["resource_name"] if queued else None,
        "resources": [
            {
                **res,
                "state": "held" if res["id"] in held else "queued" if res["id"] == at else "later",
            }
            for res in lock_set["resources"]
        ],
    }


def derive_status(*, status: str, paused: bool, waits_for_human: bool, waits_for_lock: bool) -> str:
    """One status per agent, the same on every page (and so the same colour)."""
    if status in (AgentStatus.DONE, AgentStatus.FAILED):
        return status
    if paused:
        return "paused"
    if waits_for_human:
        return AgentStatus.WAITING_HUMAN
    if waits_for_lock:
        return AgentStatus.WAITING_LOCK
    return status


def _agents(
    ids: Iterable[int] | None = None, live: LiveRows | None = None
) -> dict[int, dict[str, Any]]:
    """The agents ``ids`` (all: None); ``live`` holds at least their locks and waits."""
    id_list = None if ids is None else list(ids)
    queryset = Agent.objects.all() if id_list is None else Agent.objects.filter(pk__in=id_list)
    waiting_set = LockSet.objects.filter(agent_id=OuterRef("pk"), status=RequestStatus.WAITING)
    rows = list(
        queryset.annotate(
            waits_for_human=_waits_for_human(), waits_for_set=Exists(waiting_set)
        ).values(
            "id",
            "name",
            "team_id",
            "status",
            "paused",
            "team__paused",
            "waits_for_human",
            "waits_for_set",
        )
    )
    id_list_for_rest = None if id_list is None else [row["id"] for row in rows]
    if live is None:
        live = LiveRows(agent_ids=id_list_for_rest)
    holds, waits = live.by("agent", id_list_for_rest)
    sets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for lock_set in live.waiting_sets(row["id"] for row in rows if row["waits_for_set"]).values():
        sets[lock_set["agent"]].append(lock_set)
    result = {}
    for row in rows:
        pk = row["id"]
        paused = row["paused"] or row["team__paused"]
        agent_waits = _agent_waits(waits[pk], holds[pk], sets[pk])
        result[pk] = {
            "id": pk,
            "name": row["name"],
            "team": row["team_id"],
            "status": derive_status(
                status=row["status"],
                paused=paused,
                waits_for_human=row["waits_for_human"],
                waits_for_lock=bool(agent_waits),
            ),
            "paused": row["paused"],
            "team_paused": row["team__paused"],
            "holds": [
                {k: lock[k] for k in ("lock_id", "resource", "resource_name", "mode", "fence")}
                | {"expires_at": lock["expires_at"], "lock_set": lock["lock_set"]}
                for lock in holds[pk]
            ],
            "waits": agent_waits,
        }
    return result


def _resources(
    ids: Iterable[int] | None = None, live: LiveRows | None = None
) -> dict[int, dict[str, Any]]:
    """The resources ``ids`` (all: None); ``live`` holds at least their locks and waits."""
    id_list = None if ids is None else list(ids)
    queryset = (
        Resource.objects.all() if id_list is None else Resource.objects.filter(pk__in=id_list)
    )
    rows = list(
        queryset.values("id", "name", "team_id", "value", "version", "fence", "requires_approval")
    )
    scope = None if id_list is None else [row["id"] for row in rows]
    if live is None:
        live = LiveRows(resource_ids=scope)
    locks, waits = live.by("resource", scope)
    sets = live.waiting_sets()
    holders = {
        pk: [
            {k: lock[k] for k in ("lock_id", "agent", "agent_name", "mode", "fence", "lock_set")}
            | {"acquired_at": lock["acquired_at"], "expires_at": lock["expires_at"]}
            for lock in rows_
        ]
        for pk, rows_ in locks.items()
    }
    waiters = {
        pk: [
            {k: wait[k] for k in ("request_id", "agent", "agent_name", "mode", "requested_at")}
            | {"lock_set": _set_named(sets.get(wait["lock_set"]))}
            for wait in rows_
        ]
        for pk, rows_ in waits.items()
    }
    return {
        row["id"]: {
            "id": row["id"],
            "name": row["name"],
            "team": row["team_id"],
            "value": value_preview(row["value"]),
            "version": row["version"],
            "fence": row["fence"],
            "requires_approval": row["requires_approval"],
            "holders": holders.get(row["id"], []),
            "waiters": waiters.get(row["id"], []),
        }
        for row in rows
    }


def _set_named(lock_set: dict[str, Any] | None) -> dict[str, Any] | None:
    """A waiter's lock set as its resource's row shows it: which set, and its resources."""
    if lock_set is None:
        return None
    names = [res["name"] for res in lock_set["resources"]]
    return {"id": lock_set["lock_set"], "size": len(names), "resources": names}


def _deadlocks() -> dict[int, dict[str, Any]]:
    """Open deadlocks, with the cycle the detector reported."""
    queryset = Conflict.objects.filter(kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN)
    return {
        row["id"]: {
            "id": row["id"],
            "team": row["team_id"],
            "policy": row["team__deadlock_policy"] or "",
            "agent_ids": list((row["data"] or {}).get("agent_ids", [])),
            "resource_ids": list((row["data"] or {}).get("resource_ids", [])),
            "cycle": list((row["data"] or {}).get("cycle", [])),
            "edges": list((row["data"] or {}).get("edges", [])),
            "detail": row["detail"][:1000],
            "created_at": _iso(row["created_at"]),
        }
        for row in queryset.order_by("pk").values(
            "id", "team_id", "team__deadlock_policy", "data", "detail", "created_at"
        )
    }


def board_counts() -> dict[str, int]:
    """Open approvals and open conflicts: the numbers in the navigation bar."""
    return {
        "approvals": Approval.objects.filter(status=ApprovalStatus.PENDING).count(),
        "conflicts": Conflict.objects.filter(status=ConflictStatus.OPEN).count(),
    }


def system_state() -> dict[str, Any]:
    board = Switchboard.objects.filter(pk=1).first()
    return {"paused": bool(board and board.paused)}


def _keyed(rows: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(pk): row for pk, row in rows.items()}


# --- snapshot and patch ---------------------------------------------------------------


def board_snapshot() -> dict[str, Any]:
    """The whole board and the id of the last event it includes.

    The id is read first, so the board is at least as new as that event;
    events after it are sent as patches, which re-read what they touch.
    """
    last_id = last_event_id()
    live = LiveRows()
    state = {
        "system": system_state(),
        "counts": board_counts(),
        "teams": _keyed(_teams()),
        "runs": _keyed(_runs()),
        "agents": _keyed(_agents(live=live)),
        "resources": _keyed(_resources(live=live)),
        "deadlocks": _keyed(_deadlocks()),
    }
    return {"last_id": last_id, "state": state}


# Subjects whose rows name just an agent and a resource (Touched.by).
SELF_NAMED = frozenset({"lock", "lockrequest"})


class Touched:
    """The entities a batch of events may have changed."""

    def __init__(self) -> None:
        self.teams: set[int] = set()
        self.runs: set[int] = set()
        self.agents: set[int] = set()
        self.resources: set[int] = set()
        self.deadlocks = False
        self.counts = False
        self.system = False

    @classmethod
    def by(cls, events: Iterable[dict[str, Any]]) -> Touched:
        touched = cls()
        subjects: dict[str, set[int]] = defaultdict(set)
        for event in events:
            if event.get("agent"):
                touched.agents.add(event["agent"])
            kind = KINDS.get(event.get("kind", ""))
            ids: dict[str, set[int]] = {}
            if kind is not None:  # what the kind declares (core/kinds.py)
                ids = kind.entity_ids(event.get("payload") or {})
                touched.resources |= ids.get(RESOURCES, set())
                touched.runs |= ids.get(RUNS, set())
                touched.deadlocks = touched.deadlocks or GRAPH in kind.touches
                touched.counts = touched.counts or COUNTS in kind.touches
                touched.system = touched.system or SYSTEM in kind.touches
            subject = event.get("subject_type")
            if not subject or not isinstance(event.get("subject_id"), int):
                continue
            # A lock's or a request's row names its agent and its resource: when the
            # event names both (the lock kinds emitted by the holder or requester, all of
            # the hot path), the row need not be read.
            if subject in SELF_NAMED and event.get("agent") and ids.get(RESOURCES):
                continue
            subjects[subject].add(event["subject_id"])
        touched._resolve(subjects)
        return touched

    def _resolve(self, subjects: dict[str, set[int]]) -> None:
        self.agents |= subjects.get("agent", set())
        self.resources |= subjects.get("resource", set())
        if subjects.get("run"):
            # A run starting or ending changes its agents' status too.
            self.runs |= subjects["run"]
            self.agents |= set(
                Step.objects.filter(run_id__in=subjects["run"]).values_list("agent_id", flat=True)
            )
        if subjects.get("team"):
            self.teams |= subjects["team"]
            self.agents |= set(
                Agent.objects.filter(team_id__in=subjects["team"]).values_list("pk", flat=True)
            )
        for model, key in ((Lock, "lock"), (LockRequest, "lockrequest"), (Approval, "approval")):
            if subjects.get(key):
                for agent_id, resource_id in model.objects.filter(pk__in=subjects[key]).values_list(
                    "agent_id", "resource_id"
                ):
                    self.agents.add(agent_id)
                    self.resources.add(resource_id)
        if subjects.get("lockset"):
            # A set granted renews the lease of every lock it holds (no lock.renewed):
            # its resources change too, and an operator's end of a set may name no agent.
            for agent_id, resource_id in LockSet.resources.through.objects.filter(
                lockset_id__in=subjects["lockset"]
            ).values_list("lockset__agent_id", "resource_id"):
                self.agents.add(agent_id)
                self.resources.add(resource_id)
        if subjects.get("step"):
            for agent_id, run_id in Step.objects.filter(pk__in=subjects["step"]).values_list(
                "agent_id", "run_id"
            ):
                self.agents.add(agent_id)
                self.runs.add(run_id)
        if subjects.get("conflict"):
            ids = subjects["conflict"]
            self.agents |= set(
                Conflict.agents.through.objects.filter(conflict_id__in=ids).values_list(
                    "agent_id", flat=True
                )
            )
            self.resources |= set(
                Conflict.resources.through.objects.filter(conflict_id__in=ids).values_list(
                    "resource_id", flat=True
                )
            )
        if self.runs:
            self.teams |= set(
                Run.objects.filter(pk__in=self.runs).values_list("team_id", flat=True)
            )


def board_patch(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What changed with ``events`` (as :func:`orchestrator.core.events.event_messages_after` shapes
    them): the touched entities re-read whole, those that no longer exist in ``removed``,
    and the counts and the system flags when the events' kinds say they change them."""
    touched = Touched.by(events)
    patch: dict[str, Any] = {}
    if touched.system:
        patch["system"] = system_state()
    if touched.counts:
        patch["counts"] = board_counts()
    removed: dict[str, list[str]] = {}
    live = None
    if touched.agents and touched.resources:  # else the one read by _agents or _resources
        live = LiveRows(agent_ids=sorted(touched.agents), resource_ids=sorted(touched.resources))
    for name, ids, read in (
        ("teams", touched.teams, _teams),
        ("runs", touched.runs, _runs),
        ("agents", touched.agents, functools.partial(_agents, live=live)),
        ("resources", touched.resources, functools.partial(_resources, live=live)),
    ):
        if not ids:
            continue
        rows = read(ids)
        patch[name] = _keyed(rows)
        gone = sorted(set(ids) - set(rows))
        if gone:
            removed[name] = [str(pk) for pk in gone]
    if touched.deadlocks:
        patch["deadlocks"] = _keyed(_deadlocks())
    if removed:
        patch["removed"] = removed
    return patch


def patch_merge(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """One patch that does what ``older`` then ``newer`` do (rows are whole, so the
    newer row of an entity replaces the older; a removal then a re-read is a row)."""
    merged: dict[str, Any] = {
        key: newer.get(key, older.get(key))
        for key in ("system", "counts", "deadlocks")
        if key in older or key in newer
    }
    removed: dict[str, list[str]] = {}
    for name in COLLECTIONS:
        rows = {**older.get(name, {})}
        gone = set(older.get("removed", {}).get(name, []))
        for pk in newer.get("removed", {}).get(name, []):
            rows.pop(pk, None)
            gone.add(pk)
        rows.update(newer.get(name, {}))
        gone -= set(newer.get(name, {}))
        if rows:
            merged[name] = rows
        if gone:
            removed[name] = sorted(gone)
    if removed:
        merged["removed"] = removed
    return merged


def board_apply(state: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply a patch to a board, as the browser does (live.js): used by tests and tools."""
    for key in ("system", "counts", "deadlocks"):
        if key in patch:
            state[key] = patch[key]
    for name in COLLECTIONS:
        state.setdefault(name, {}).update(patch.get(name, {}))
        for pk in patch.get("removed", {}).get(name, []):
            state[name].pop(pk, None)
    return state
