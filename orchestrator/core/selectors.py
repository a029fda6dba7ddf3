"""Read queries for the edges (API, pages, consumers): no writes, no row locks."""

from __future__ import annotations

import time

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from orchestrator.core import sql, wakeups
from orchestrator.core.errors import Forbidden, NotFound
from orchestrator.core.models import Agent, Conflict, LockRequest, RequestStatus

CONFLICTS_LIMIT = 200


def lock_request_for_agent(*, request_id: int, agent: Agent) -> LockRequest:
    """The lock request ``request_id``, with its resource and lock, if ``agent`` made it.

    Raises NotFound for an unknown id and Forbidden for another agent's request.
    """
    request = lock_request_with_lock(request_id)
    if request is None:
        raise NotFound("request_not_found", f"no lock request with id {request_id}")
    if request.agent_id != agent.pk:
        raise Forbidden("not_your_request", "this request belongs to another agent")
    return request


def lock_request_with_lock(request_id: int) -> LockRequest | None:
    """The lock request ``request_id`` with its resource and its lock (if granted)
    loaded, the lock's resource being the request's; None if there is none (one
    hand-written statement, sql.lock_request_with_lock: every poll reads it)."""
    return sql.lock_request_with_lock(request_id)


def lock_request_when_decided(*, request_id: int, agent: Agent, timeout: float) -> LockRequest:
    """``lock_request_for_agent``, but while the request is still waiting, wait up to
    ``timeout`` seconds for it to be granted or ended (a long poll).

    The wait blocks on the agent's wake-up list (``wakeups.wait_for_wake``), not on
    the database: the connection goes back to the pool while waiting, and the request
    is read again after each wake-up, and at least every second in case one was lost.
    """
    deadline = time.monotonic() + timeout
    request = lock_request_for_agent(request_id=request_id, agent=agent)
    while request.status == RequestStatus.WAITING:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not connection.in_atomic_block:
            connection.close()  # back to the pool (web) while this thread waits
        wakeups.wait_for_wake(agent.pk, min(left, 1.0))
        request = lock_request_for_agent(request_id=request_id, agent=agent)
    return request


def conflicts_recent(
    *,
    kind: str | None = None,
    status: str | None = None,
    limit: int = CONFLICTS_LIMIT,
    agent: Agent | None = None,
) -> QuerySet[Conflict]:
    """The newest ``limit`` conflicts, newest first, optionally of one kind and status;
    for ``agent``, only those its team may see: its team's, and those its agents are in.

    Agents and resources are prefetched, so reading their names costs two queries.
    """
    queryset = Conflict.objects.all()
    if agent is not None:
        mine = Conflict.agents.through.objects.filter(
            conflict_id=OuterRef("pk"), agent__team_id=agent.team_id
        )
        queryset = queryset.filter(Q(team_id=agent.team_id) | Exists(mine))
    if kind:
        queryset = queryset.filter(kind=kind)
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("-created_at", "-pk").prefetch_related("agents", "resources")[:limit]
