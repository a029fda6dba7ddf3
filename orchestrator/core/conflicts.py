"""Conflict records: every Conflict row is created here, with its event.

A conflict is what the protocol refused or found: a stale write, a write
without the lock, a lost lease, a deadlock. Most are recorded already resolved
(the refusal was the resolution) and stay as the history an operator reads; a
deadlock and a write that waits for an approval stay open until an operator
or a policy ends them. Called inside a service, under the row locks the
caller holds.

A refusal repeated by the same agent on the same resource within
:data:`REPEAT_WINDOW` of the conflict that recorded the first one (an agent
retrying a stale write in a loop) is counted on that conflict
(``occurrences``, and a ``conflict.repeated`` event) instead of adding a row:
an agent cannot fill the table, and the event log still has every refusal.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from orchestrator.core.control import PAUSING_CONFLICTS, agent_pause_by_policy
from orchestrator.core.events import event_emit
from orchestrator.core.models import Agent, Conflict, ConflictKind, ConflictStatus, Resource
from orchestrator.core.queue import db_now

# How long after a refusal's conflict was recorded the same refusal counts on it.
REPEAT_WINDOW = timedelta(minutes=10)


def _repeat_key(agent: Agent, res: Resource) -> str:
    return f"agent:{agent.pk} resource:{res.pk}"


def _repeat_of(kind: str, key: str, resolution: str, since: datetime) -> Conflict | None:
    """The refusal conflict that a new one of ``kind`` in the situation ``key`` repeats."""
    return (
        Conflict.objects.filter(
            kind=kind,
            key=key,
            status=ConflictStatus.RESOLVED,
            resolution=resolution,
            created_at__gte=since,
        )
        .order_by("-created_at")
        .first()
    )


def conflict_open(
    *,
    kind: str,
    res: Resource,
    agent: Agent | None,
    team_id: int | None,
    detail: str,
    data: dict[str, Any],
    resolution: str = "",
    now: datetime | None = None,
) -> Conflict:
    """Record a conflict on one resource, resolved at once when ``resolution`` says how
    (at ``now``, the caller's clock, else the database's), and emit ``conflict.opened``.

    A resolved one (a refusal) by an agent that repeats the last such conflict of
    its kind on ``res`` by the same agent, recorded within :data:`REPEAT_WINDOW`,
    increments that conflict's ``occurrences`` and emits ``conflict.repeated``
    instead; it is returned as it is now. The caller holds the Resource row lock,
    so two repeats cannot both miss the conflict and create one each.
    """
    resolved = bool(resolution)
    at = (now or db_now()) if resolved else None
    key = _repeat_key(agent, res) if resolved and agent is not None else ""
    if key and at is not None:
        repeated = _repeat_of(kind, key, resolution, at - REPEAT_WINDOW)
        if repeated is not None:
            Conflict.objects.filter(pk=repeated.pk).update(occurrences=F("occurrences") + 1)
            repeated.refresh_from_db(fields=["occurrences"])
            event_emit(
                "conflict.repeated",
                team=team_id,
                agent=agent,
                subject=repeated,
                payload={
                    "kind": kind,
                    "resource": res.name,
                    "detail": detail,
                    "occurrences": repeated.occurrences,
                },
            )
            _pause_check(kind, agent)
            return repeated
    conflict = Conflict.objects.create(
        kind=kind,
        team_id=team_id,
        key=key,
        detail=detail,
        data=data,
        status=ConflictStatus.RESOLVED if resolved else ConflictStatus.OPEN,
        resolution=resolution,
        resolved_at=at,
    )
    if agent is not None:
        conflict.agents.add(agent)
    conflict.resources.add(res)
    event_emit(
        "conflict.opened",
        team=team_id,
        agent=agent,
        subject=conflict,
        payload={"kind": kind, "resource": res.name, "detail": detail, "status": conflict.status},
    )
    _pause_check(kind, agent)
    return conflict


def _pause_check(kind: str, agent: Agent | None) -> None:
    """Once this transaction commits, pause ``agent`` if its team's policy says so
    (control.agent_pause_by_policy). Not in this transaction: it holds the Resource
    row lock, and the Agent row comes before it in the one lock order. Only for teams
    with the policy on (``agent.team`` is loaded with the agent on the write paths)."""
    if agent is None or kind not in PAUSING_CONFLICTS or agent.team.pause_after_conflicts is None:
        return
    agent_id = agent.pk
    transaction.on_commit(lambda: agent_pause_by_policy(agent_id=agent_id), robust=True)


def deadlock_open(
    *,
    key: str,
    team_id: int,
    agent_ids: frozenset[int],
    resource_ids: list[int],
    detail: str,
    data: dict[str, Any],
    payload: dict[str, Any],
) -> tuple[Conflict, bool]:
    """The open deadlock conflict of the cycle ``key``: created (and ``deadlock.detected``
    emitted with ``payload``), or the one a concurrent detector created first.
    Returns (conflict, created)."""
    try:
        with transaction.atomic():  # a concurrent detector may have reported it first
            conflict = Conflict.objects.create(
                kind=ConflictKind.DEADLOCK, key=key, team_id=team_id, detail=detail, data=data
            )
    except IntegrityError:
        existing = Conflict.objects.get(
            kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN, key=key
        )
        return existing, False
    conflict.agents.set(agent_ids)
    conflict.resources.set(resource_ids)
    event_emit(
        "deadlock.detected",
        team=team_id,
        actor="system",
        subject=conflict,
        payload={"conflict": conflict.pk, **payload},
    )
    return conflict, True
