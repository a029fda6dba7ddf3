"""The write itself, below the services that decide when it may happen (resources,
approvals): the fence check, and storing the next version with its history and
event. Callers hold the Resource row lock; values and versions were validated by
the services (core/operations.py).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.events import event_emit
from orchestrator.core.models import Agent, Approval, Lock, LockMode, Resource
from orchestrator.core.queue import Queue
from orchestrator.core.types import User


def check_fence(queue: Queue, agent: Agent | None, fence: int) -> Lock | None:
    """The live exclusive lock of ``agent`` whose token is ``fence``, if it is current."""
    if agent is None or fence != queue.resource.fence:
        return None
    return next(
        (
            lock
            for lock in queue.live
            if lock.agent_id == agent.pk and lock.mode == LockMode.EXCLUSIVE and lock.token == fence
        ),
        None,
    )


def apply_write(
    res: Resource,
    value: Any,
    *,
    agent: Agent | None,
    user: User = None,
    fence: int | None,
    team_id: int | None,
    approval: Approval | None = None,
    idempotency_key: str = "",
) -> int:
    """Store ``value`` as the next version. Caller holds the Resource row lock and checked."""
    sql.write_value(
        res,
        value,
        agent_id=agent.pk if agent else None,
        user_id=user.pk if user is not None and user.is_authenticated else None,
        fence=fence,
        now=timezone.now(),
        idempotency_key=idempotency_key[:100],
    )
    event_emit(
        "resource.written",
        team=team_id,
        agent=agent,
        user=user,
        subject=res,
        payload={
            "resource": res.name,
            "version": res.version,
            "fence": fence,
            "approval": approval.pk if approval else None,
            "by": agent.name if agent else None,
        },
    )
    return res.version
