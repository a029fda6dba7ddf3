"""Conflict records: every Conflict row is created here, with its event.

A conflict is what the protocol refused or found: a stale write, a write
without the lock, a lost lease, a deadlock. Most are recorded already resolved
(the refusal was the resolution) and stay as the history an operator reads; a
deadlock and a write that waits for an approval stay open until an operator
or a policy ends them. Called inside a service, under the row locks the
caller holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from orchestrator.core.events import event_emit
from orchestrator.core.models import Agent, Conflict, ConflictKind, ConflictStatus, Resource
from orchestrator.core.queue import db_now


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
    (at ``now``, the caller's clock, else the database's), and emit ``conflict.opened``."""
    resolved = bool(resolution)
    conflict = Conflict.objects.create(
        kind=kind,
        team_id=team_id,
        detail=detail,
        data=data,
        status=ConflictStatus.RESOLVED if resolved else ConflictStatus.OPEN,
        resolution=resolution,
        resolved_at=(now or db_now()) if resolved else None,
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
    return conflict


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
