"""Read queries for the edges (API, pages, consumers): no writes, no row locks."""

from __future__ import annotations

from typing import Any

from django.db.models import Case, DateTimeField, Exists, F, Func, OuterRef, Q, QuerySet, When

from orchestrator.core import sql, tenancy, wakeups
from orchestrator.core.errors import Forbidden, NotFound
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalStatus,
    Conflict,
    Lock,
    LockRequest,
    RequestStatus,
    Switchboard,
)

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
    ``timeout`` seconds (in this thread) for it to be granted or ended:
    :func:`lock_request_poll` waited for."""
    return lock_request_poll(request_id=request_id, agent=agent, timeout=timeout).wait()


def lock_request_poll(
    *, request_id: int, agent: Agent, timeout: float
) -> wakeups.LongPoll[LockRequest]:
    """The long poll of a lock request: read now (``lock_request_for_agent``: NotFound,
    Forbidden), and while it is still waiting, for up to ``timeout`` seconds, read again
    after each of the agent's wake-ups, and at least every second
    (``wakeups.LongPoll``: on the agent's wake-up list, not on the database)."""
    return wakeups.LongPoll(
        agent.pk,
        timeout,
        lock_request_for_agent(request_id=request_id, agent=agent),
        waiting=lambda request: request.status == RequestStatus.WAITING,
        again=lambda _request, _woken: lock_request_for_agent(request_id=request_id, agent=agent),
        watch=wakeups.Watch(lock_requests_moved, request_id),
    )


def lock_requests_moved(request_ids: list[int]) -> list[int]:
    """Those of ``request_ids`` that no longer wait (granted or ended)."""
    ended = LockRequest.objects.filter(pk__in=request_ids).exclude(status=RequestStatus.WAITING)
    return list(ended.values_list("pk", flat=True))


def conflicts_recent(
    *,
    kind: str | None = None,
    status: str | None = None,
    limit: int = CONFLICTS_LIMIT,
    agent: Agent | None = None,
) -> QuerySet[Conflict]:
    """The newest ``limit`` conflicts, newest first, optionally of one kind and status;
    for ``agent``, only those its team may see: its team's, and those its agents are in.

    Agents and resources (with their teams) are prefetched: reading their names costs
    three queries.
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
    return queryset.order_by("-created_at", "-pk").prefetch_related("agents", "resources__team")[
        :limit
    ]


# --- what an agent outside the runtime may ask about itself (the API, the MCP server) ---

RESOURCES_LIMIT = 500


def _db_clock() -> Func:
    return Func(function="clock_timestamp", output_field=DateTimeField())


def resources_visible(
    *, agent: Agent, prefix: str = "", limit: int = RESOURCES_LIMIT
) -> dict[str, Any]:
    """The resources ``agent`` may use whose names, as it names them, start with
    ``prefix``: its team's by name, then those other teams share with its team as
    ``owner::name`` (core/tenancy.py); at most ``limit`` of them (``truncated`` says
    there are more), each with its version, whether it requires approval, the access
    the agent has (``own``, ``read`` or ``read_write``), and the agents holding a live
    lock on it now."""
    owner, name_prefix = tenancy.split_name(prefix)
    queryset = tenancy.visible_resources(agent).filter(name__startswith=name_prefix)
    if owner is not None:
        queryset = queryset.filter(team__name=owner)
    own_first = Case(When(team_id=agent.team_id, then=0), default=1)
    rows = list(
        queryset.order_by(own_first, "team__name", "name").values(
            "pk", "name", "team_id", "team__name", "version", "requires_approval", "updated_at"
        )[: limit + 1]
    )
    truncated = len(rows) > limit
    rows = rows[:limit]
    holders: dict[int, list[str]] = {}
    live = Lock.objects.filter(
        resource_id__in=[row["pk"] for row in rows],
        released_at__isnull=True,
        expires_at__gt=_db_clock(),
    ).order_by("agent__name")
    for resource_id, name in live.values_list("resource_id", "agent__name"):
        holders.setdefault(resource_id, []).append(name)
    shared = tenancy.shared_with(agent)
    resources = [
        {
            "name": row["name"]
            if row["team_id"] == agent.team_id
            else tenancy.qualify(row["team__name"], row["name"]),
            "access": "own"
            if row["team_id"] == agent.team_id
            else tenancy.access_to(shared, row["pk"], row["team_id"], row["name"]),
            "version": row["version"],
            "requires_approval": row["requires_approval"],
            "updated_at": row["updated_at"],
            "held_by": holders.get(row["pk"], []),
        }
        for row in rows
    ]
    return {"resources": resources, "truncated": truncated}


def approval_for_agent(*, approval_id: int, agent: Agent) -> dict[str, Any]:
    """How the approval ``approval_id``, which ``agent`` requested, stands: ``status`` is
    pending, approved, edited (approved with a value the operator changed), rejected
    or failed (the resource or the lock moved before the decision); ``reason`` is the
    operator's note (a rejection's reason) or why it failed; ``version`` the version
    its value was applied as.

    Raises NotFound for an unknown id and for another agent's approval alike: an
    agent learns nothing of other agents' approvals.
    """
    mine = Approval.objects.filter(pk=approval_id, agent_id=agent.pk)
    approval = mine.select_related("resource__team").first()
    if approval is None:
        raise NotFound("approval_not_found", f"no approval of yours with id {approval_id}")
    status = approval.status
    if status == ApprovalStatus.APPROVED and approval.applied_value != approval.proposed_value:
        status = "edited"
    reason = approval.decision_note
    if approval.status == ApprovalStatus.FAILED and not reason:
        reason = (
            "not applied: the resource changed, or your lock ended, before the operator "
            "decided; re-read it and ask again"
        )
    return {
        "approval_id": approval.pk,
        "resource": tenancy.qualified_name(agent, approval.resource),
        "status": status,
        "reason": reason,
        "version": approval.applied_version,
        "proposed_value": approval.proposed_value,
        "applied_value": approval.applied_value,
        "requested_at": approval.created_at,
        "decided_at": approval.decided_at,
    }


def agent_overview(agent: Agent) -> dict[str, Any]:
    """Who ``agent`` is, read now: its name and role, its team, whether it is paused
    (itself, its team, or everything), its live locks with the seconds left on each
    lease (by the database's clock), and its waiting lock requests, oldest first."""
    agent = Agent.objects.select_related("team").get(pk=agent.pk)
    team = agent.team
    system_paused = Switchboard.objects.filter(pk=1, paused=True).exists()
    locks = (
        Lock.objects.filter(agent_id=agent.pk, released_at__isnull=True)
        .annotate(now=_db_clock())
        .filter(expires_at__gt=F("now"))
        .select_related("resource__team")
        .order_by("acquired_at", "pk")
    )
    waits = (
        LockRequest.objects.filter(agent_id=agent.pk, status=RequestStatus.WAITING)
        .select_related("resource__team")
        .order_by("requested_at", "pk")
    )
    return {
        "agent": {"id": agent.pk, "name": agent.name, "role": agent.role},
        "team": {"id": team.pk, "name": team.name, "default_lease_ttl": team.default_lease_ttl},
        "paused": agent.paused or team.paused or system_paused,
        "paused_by": [
            scope
            for scope, paused in (
                ("agent", agent.paused),
                ("team", team.paused),
                ("everything", system_paused),
            )
            if paused
        ],
        "locks": [
            {
                "lock_id": lock.pk,
                "resource": tenancy.qualified_name(agent, lock.resource),
                "mode": lock.mode,
                "fence": lock.token,
                "expires_at": lock.expires_at,
                "lease_seconds_left": round((lock.expires_at - lock.now).total_seconds(), 3),
                "lock_set_id": lock.lock_set_id,
            }
            for lock in locks
        ],
        "waits": [
            {
                "request_id": request.pk,
                "resource": tenancy.qualified_name(agent, request.resource),
                "mode": request.mode,
                "since": request.requested_at,
                "lock_set_id": request.lock_set_id,
            }
            for request in waits
        ],
    }
