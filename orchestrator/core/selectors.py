"""Read queries for the edges (API, pages, consumers): no writes, no row locks."""

from __future__ import annotations

import functools
import time

from django.db import connection
from django.db.models import QuerySet

from orchestrator.core import wakeups
from orchestrator.core.errors import Forbidden, NotFound
from orchestrator.core.models import Agent, Conflict, Lock, LockRequest, RequestStatus, Resource
from orchestrator.core.rowlocks import columns, one_row_as

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


@functools.cache
def _lock_request_sql() -> str:
    # Column names come from the models' metadata; the one value is a parameter.
    return (
        f"SELECT {columns(LockRequest, 'q')}, {columns(Resource, 'r')}, "  # noqa: S608
        f"{columns(Lock, 'l')} FROM core_lockrequest q "
        "JOIN core_resource r ON r.id = q.resource_id "
        "LEFT JOIN core_lock l ON l.id = q.lock_id WHERE q.id = %s"
    )


def lock_request_with_lock(request_id: int) -> LockRequest | None:
    """The lock request ``request_id`` with its resource and its lock (if granted)
    loaded, the lock's resource being the request's; None if there is none.

    Every poll of a queued request reads this (the API's long polls, the
    runtime's waiting calls); on PostgreSQL it is one hand-written statement,
    the ORM's select_related version cost about as much CPU as the rest of a
    poll (profiled under bench/locks.py).
    """
    if connection.vendor != "postgresql":
        return (
            LockRequest.objects.select_related("resource", "lock", "lock__resource")
            .filter(pk=request_id)
            .first()
        )
    found = one_row_as(_lock_request_sql(), [request_id], LockRequest, Resource, Lock)
    if found is None:
        return None
    (request, resource, lock), _ = found
    request.resource = resource
    if lock.pk is None:  # no lock (LEFT JOIN): the request is not granted
        request.lock = None
    else:
        lock.resource = resource
        request.lock = lock
    return request


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
    *, kind: str | None = None, status: str | None = None, limit: int = CONFLICTS_LIMIT
) -> QuerySet[Conflict]:
    """The newest ``limit`` conflicts, newest first, optionally of one kind and status.

    Agents and resources are prefetched, so reading their names costs two queries.
    """
    queryset = Conflict.objects.all()
    if kind:
        queryset = queryset.filter(kind=kind)
    if status:
        queryset = queryset.filter(status=status)
    return queryset.order_by("-created_at", "-pk").prefetch_related("agents", "resources")[:limit]
