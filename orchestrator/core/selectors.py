"""Read queries for the edges (API, pages, consumers): no writes, no row locks."""

from __future__ import annotations

from django.db.models import QuerySet

from orchestrator.core.errors import Forbidden, NotFound
from orchestrator.core.models import Agent, Conflict, LockRequest

CONFLICTS_LIMIT = 200


def lock_request_for_agent(*, request_id: int, agent: Agent) -> LockRequest:
    """The lock request ``request_id``, with its resource and lock, if ``agent`` made it.

    Raises NotFound for an unknown id and Forbidden for another agent's request.
    """
    request = (
        LockRequest.objects.select_related("resource", "lock", "lock__resource")
        .filter(pk=request_id)
        .first()
    )
    if request is None:
        raise NotFound("request_not_found", f"no lock request with id {request_id}")
    if request.agent_id != agent.pk:
        raise Forbidden("not_your_request", "this request belongs to another agent")
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
