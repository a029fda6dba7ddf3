"""The agent HTTP API: the coordination protocol for agents that run elsewhere.

Each endpoint validates its input (schemas.py), calls one service or selector
of the core, and shapes the answer; it writes nothing itself. Agents are
untrusted and authenticate with their bearer token; a paused agent may still
call the API (pausing is the runtime's concern, not a protocol rule).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Path, Query, Status

from orchestrator.api.edge import (
    AgentAPI,
    AgentToken,
    docs_access,
    install_error_handlers,
    long_poll_answer,
)
from orchestrator.api.schemas import (
    ApprovalPendingOut,
    ApprovalRequestedOut,
    ApprovalRequestIn,
    ApprovalStatusOut,
    BusyOut,
    ConflictFilters,
    ConflictOut,
    ErrorOut,
    LockAcquireIn,
    LockOut,
    LockRenewIn,
    LockRequestOut,
    LockSetIn,
    LockSetOut,
    LockWaitingOut,
    RenewOut,
    ResourceCreateIn,
    ResourceFilters,
    ResourceListOut,
    ResourceOut,
    ResourceWriteIn,
    SetBusyOut,
    VersionOut,
    WhoAmIOut,
    WriteRejectedOut,
)
from orchestrator.core.errors import Gone
from orchestrator.core.lock_sets import (
    LockSetResult,
    lock_set_acquire,
    lock_set_poll,
    lock_set_release,
    lock_set_resources,
)
from orchestrator.core.locks import (
    LockOutcome,
    lock_acquire,
    lock_release,
    lock_renew,
    lock_request_cancel,
)
from orchestrator.core.models import Agent, Lock, LockRequest
from orchestrator.core.operations import MAX_ID
from orchestrator.core.resources import (
    ResourceState,
    WriteResult,
    approval_request,
    resource_create,
    resource_read,
    resource_write,
)
from orchestrator.core.selectors import (
    CONFLICTS_LIMIT,
    RESOURCES_LIMIT,
    agent_overview,
    approval_for_agent,
    conflicts_recent,
    lock_request_poll,
    resources_visible,
)
from orchestrator.core.tenancy import qualified_name, split_name

api = AgentAPI(
    title="Orchestrator agent API",
    version="1",
    description=(
        "Locks with leases and fencing tokens, and versioned writes to shared resources, "
        "for agents that run outside the orchestrator. Authenticate with "
        "`Authorization: Bearer <agent token>`. Every error is a 4xx with the JSON body "
        '`{"error": code, "detail": text}`; clients switch on `error`.'
    ),
    urls_namespace="agent_api",
    auth=AgentToken(),
    docs_decorator=docs_access,
)
install_error_handlers(api)
MAX_POLL_WAIT = 30  # seconds a GET /lock-requests/{id}?wait= may block
BLOCKER_FIELDS = ("agent", "mode", "fence", "expires_at", "resource")  # of a busy answer

# Every operation can refuse a malformed request, a missing token and an oversized body.
COMMON_ERRORS: dict[int, Any] = {400: ErrorOut, 401: ErrorOut, 413: ErrorOut}
LockId = Path(..., ge=1, le=MAX_ID, description="A lock id, as returned by POST /locks.")
LockSetId = Path(..., ge=1, le=MAX_ID, description="A lock set id, from POST /lock-sets.")
ApprovalId = Path(..., ge=1, le=MAX_ID, description="An approval id, from POST /approvals.")


def _errors(*codes: int) -> dict[int, Any]:
    return {**COMMON_ERRORS, **dict.fromkeys(codes, ErrorOut)}


# A long poll (?wait=) over the agent's cap of waits at once (ORCHESTRATOR_MAX_WAITS_PER_AGENT).
TOO_MANY_WAITS = (
    " 429 `too_many_waits` (with `Retry-After`, in seconds) when the agent already has "
    "as many waits in progress as it may have at once (ORCHESTRATOR_MAX_WAITS_PER_AGENT): "
    "end one, or poll without `wait`."
)


def _resource_out(state: ResourceState, agent: Agent) -> dict[str, Any]:
    """The resource as ``agent`` names it: another team's as owner::name."""
    res = state.resource
    return {
        "name": qualified_name(agent, res),
        "value": res.value,
        "version": res.version,
        "fence": res.fence,
        "holders": [_holder_out(lock) for lock in state.holders],
        "waiters": [
            {"agent": req.agent.name, "mode": req.mode, "since": req.requested_at}
            for req in state.waiters
        ],
    }


def _holder_out(lock: Lock) -> dict[str, Any]:
    return {
        "agent": lock.agent.name,
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at,
    }


def _lock_out(lock: Lock, resource_name: str) -> dict[str, Any]:
    """A lock as granted, with its resource's value and version (``lock.resource``, read
    with the lock): a lock cycle needs no separate read."""
    return {
        "id": lock.pk,
        "resource": resource_name,
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at,
        "version": lock.resource.version,
        "value": lock.resource.value,
    }


def _lease_lost(outcome: LockOutcome) -> Gone:
    return Gone(
        "lease_lost",
        f"lock #{outcome.lock.pk} already ended ({outcome.reason}); acquire it again, and "
        "re-read the resource: someone else may have written it",
        conflict_id=outcome.conflict.pk if outcome.conflict else None,
    )


@api.post(
    "/resources",
    response={201: ResourceOut, **_errors(409)},
    tags=["resources"],
    summary="Create a resource",
    description="Creates a resource at version 0 in the caller's team. 409 `name_taken`.",
)
def create_resource(request: HttpRequest, payload: ResourceCreateIn) -> Status:
    resource = resource_create(
        name=payload.name,
        value=payload.value,
        requires_approval=payload.requires_approval,
        agent=request.auth,
    )
    return Status(201, _resource_out(ResourceState(resource, holders=[], waiters=[]), request.auth))


@api.get(
    "/resources",
    response={200: ResourceListOut, **_errors()},
    tags=["resources"],
    summary="List resources",
    description=(
        f"The resources the caller may use whose names start with `prefix`, by name, at "
        f"most {RESOURCES_LIMIT} (`truncated` says there are more): each with its version, "
        "whether writes need an operator's approval, and who holds a lock on it now."
    ),
)
def list_resources(request: HttpRequest, filters: Query[ResourceFilters]) -> dict[str, Any]:
    return resources_visible(agent=request.auth, prefix=filters.prefix)


@api.get(
    "/resources/{path:name}",
    response={200: ResourceOut, **_errors(404)},
    tags=["resources"],
    summary="Read a resource",
    description=(
        "Value, version, current fence, live holders and queued waiters, read at one "
        "moment. The name may contain any character (percent-encode it), including `/`."
    ),
)
def read_resource(request: HttpRequest, name: str) -> dict[str, Any]:
    return _resource_out(resource_read(resource=name, agent=request.auth), request.auth)


@api.put(
    "/resources/{path:name}",
    response={
        200: VersionOut,
        202: ApprovalPendingOut,
        409: WriteRejectedOut,
        **_errors(404),
    },
    tags=["resources"],
    summary="Write a resource",
    description=(
        "Applies the value as the next version (200), or refuses it (409: `stale_fence` "
        "when `fence` is not the caller's live lock and current fence, `not_holder` "
        "when another agent holds a lock and no fence is given, `version_conflict` when "
        "`expected_version` is not current), or turns it into an approval for an "
        "operator (202). Rejections are recorded as conflicts. With `release: true` "
        "(and `fence`), the lock is released in the same transaction exactly when the "
        "value is applied (200 with `released: true` and its `lock_id`; the agents "
        "queued behind it are granted in that commit): the last write of a lock cycle, "
        "which then needs no DELETE. A 409 or a 202 releases nothing: the lock stays "
        "held (an approval re-checks the fence when it is decided). 400 "
        "`invalid_request` for `release` without `fence`."
    ),
)
def write_resource(request: HttpRequest, name: str, payload: ResourceWriteIn) -> Status:
    result = resource_write(
        agent=request.auth,
        resource=name,
        value=payload.value,
        expected_version=payload.expected_version,
        fence=payload.fence,
        release=payload.release,
    )
    if result.status == "applied":
        lock_id = result.lock.pk if result.released else None
        return Status(
            200, {"version": result.version, "released": result.released, "lock_id": lock_id}
        )
    if result.status == "approval_pending":
        return Status(202, {"approval_id": result.approval.pk})
    return _write_rejected(result)


def _write_rejected(result: WriteResult) -> Status:
    body: dict[str, Any] = {"error": result.status, "detail": result.detail}
    if result.conflict is not None:
        body["conflict_id"] = result.conflict.pk
    if result.status == "version_conflict":
        body["current_version"] = result.resource.version
    return Status(409, body)


@api.post(
    "/locks",
    response={201: LockOut, 202: LockWaitingOut, 409: BusyOut, **_errors(404)},
    tags=["locks"],
    summary="Acquire a lock",
    description=(
        "Grants the lock (201) with its fencing token and the resource's value and "
        "version (no separate read needed), or, when it is busy, queues the "
        "request if `wait` is true (202: poll GET /lock-requests/{id}) or answers 409 "
        "`busy` with the holders. Idempotent: a holder asking again gets its lock back."
    ),
)
def acquire_lock(request: HttpRequest, payload: LockAcquireIn) -> Status:
    result = lock_acquire(
        agent=request.auth,
        resource=payload.resource,
        mode=payload.mode,
        ttl=payload.ttl,
        wait=payload.wait,
    )
    if result.status == "granted":
        return Status(201, _lock_out(result.lock, payload.resource))
    if result.status == "waiting":
        return Status(202, {"request_id": result.request.pk, "status": "waiting"})
    holders = [{key: holder[key] for key in BLOCKER_FIELDS} for holder in result.holders]
    _team, asked = split_name(payload.resource)
    names = ", ".join(
        holder["agent"]
        if holder["resource"] == asked
        else f"{holder['agent']} ({holder['resource']})"
        for holder in holders
    )
    names = names or "queued agents"
    return Status(
        409,
        {
            "error": "busy",
            "detail": f"{payload.resource} is held by or promised to {names}",
            "holders": holders,
        },
    )


@api.get(
    "/lock-requests/{request_id}",
    response={200: LockRequestOut, **_errors(403, 404, 429)},
    tags=["locks"],
    summary="Poll a queued lock request",
    description=(
        "`lock` is set once the request is granted, with the resource's value and version "
        "as of this answer. Only its agent may read it. With "
        "`wait` (seconds, up to 30) the answer waits while the request is still waiting: "
        "it comes as soon as the request is granted or ended, or when `wait` runs out "
        "(then `status` is still `waiting`; ask again)." + TOO_MANY_WAITS
    ),
)
def read_lock_request(
    request: HttpRequest,
    request_id: int = Path(..., ge=1, le=MAX_ID),
    wait: float = Query(0, ge=0, le=MAX_POLL_WAIT, description="long poll: seconds to wait"),
) -> Any:
    poll = lock_request_poll(request_id=request_id, agent=request.auth, timeout=wait)
    return long_poll_answer(api, request, poll, _request_out, LockRequestOut)


def _request_out(lock_request: LockRequest) -> dict[str, Any]:
    lock = lock_request.lock
    return {
        "status": lock_request.status,
        "lock": _lock_out(lock, qualified_name(lock_request.agent, lock.resource))
        if lock is not None
        else None,
        "reason": lock_request.reason,
    }


@api.delete(
    "/lock-requests/{request_id}",
    response={200: LockRequestOut, **_errors(403, 404)},
    tags=["locks"],
    summary="Cancel a queued lock request",
    description=(
        "Takes a waiting request out of its queue, so that the agents behind it go first "
        "(`status` becomes `cancelled`). A request that was already granted or ended is "
        "answered as it stands: a granted one holds its lock (release it). Only its "
        "agent may cancel it."
    ),
)
def cancel_lock_request(
    request: HttpRequest, request_id: int = Path(..., ge=1, le=MAX_ID)
) -> dict[str, Any]:
    return _request_out(lock_request_cancel(request_id=request_id, agent=request.auth))


def _lock_set_out(result: LockSetResult, agent: Agent) -> dict[str, Any]:
    lock_set = result.lock_set
    return {
        "id": lock_set.pk,
        "status": result.status,
        "mode": lock_set.mode,
        "resources": [qualified_name(agent, res) for res in lock_set_resources(lock_set)],
        "locks": [_lock_out(lock, qualified_name(agent, lock.resource)) for lock in result.locks],
        "waiting_on": qualified_name(agent, result.waiting_on) if result.waiting_on else None,
        "held": result.held,
        "reason": lock_set.reason,
    }


@api.post(
    "/lock-sets",
    response={201: LockSetOut, 202: LockSetOut, 409: SetBusyOut, **_errors(403, 404)},
    tags=["locks"],
    summary="Acquire a lock set",
    description=(
        "Locks several resources all or nothing, with one mode and lease. They are taken "
        "in one global order (ascending resource id), so agents that lock with sets never "
        "deadlock among themselves. Every lock granted now (201); or, when one is busy, "
        "with `wait` the set queues as one request (202: poll GET /lock-sets/{id}; "
        "meanwhile it holds the resources before the busy one, and each poll renews "
        "them) or answers 409 `busy` with the holders of each busy resource, having "
        "taken nothing. Asking again for the same waiting set returns it; a lock you "
        "hold already on one of them becomes the set's. 409 `already_waiting` when you "
        "already wait for one of them; 404 and 403 as for POST /locks, before anything "
        "is taken."
    ),
)
def acquire_lock_set(request: HttpRequest, payload: LockSetIn) -> Status:
    result = lock_set_acquire(
        agent=request.auth,
        resources=payload.resources,
        mode=payload.mode,
        ttl=payload.ttl,
        wait=payload.wait,
    )
    if result.status == "busy":
        busy = {
            name: [{key: holder[key] for key in BLOCKER_FIELDS}
                   for holder in holders]
            for name, holders in result.busy.items()
        }  # fmt: skip
        return Status(
            409,
            {"error": "busy", "detail": f"busy: {', '.join(busy)}", "busy": busy},
        )
    return Status(201 if result.status == "granted" else 202, _lock_set_out(result, request.auth))


@api.get(
    "/lock-sets/{lock_set_id}",
    response={200: LockSetOut, **_errors(403, 404, 429)},
    tags=["locks"],
    summary="Poll a lock set",
    description=(
        "How a lock set stands: `granted` with every lock, `waiting`, or ended "
        "(`cancelled`, `aborted` as a deadlock victim: it released what it held). Each "
        "poll of a waiting set renews the leases of what it holds. With `wait` (seconds, "
        "up to 30) the answer waits while the set is still waiting. Only its agent may "
        "read it." + TOO_MANY_WAITS
    ),
)
def read_lock_set(
    request: HttpRequest,
    lock_set_id: int = LockSetId,
    wait: float = Query(0, ge=0, le=MAX_POLL_WAIT, description="long poll: seconds to wait"),
) -> Any:
    poll = lock_set_poll(lock_set_id=lock_set_id, agent=request.auth, timeout=wait)
    agent = request.auth
    return long_poll_answer(
        api, request, poll, lambda result: _lock_set_out(result, agent), LockSetOut
    )


@api.delete(
    "/lock-sets/{lock_set_id}",
    response={200: LockSetOut, **_errors(403, 404)},
    tags=["locks"],
    summary="Cancel or release a lock set",
    description=(
        "A waiting set is cancelled (`cancelled`), a granted one's live locks are "
        "released; either way its resources go to the agents queued behind. Idempotent. "
        "Only its agent may."
    ),
)
def release_lock_set(request: HttpRequest, lock_set_id: int = LockSetId) -> dict[str, Any]:
    result = lock_set_release(lock_set_id=lock_set_id, agent=request.auth)
    return _lock_set_out(result, request.auth)


@api.post(
    "/locks/{lock_id}/renew",
    response={200: RenewOut, **_errors(403, 404, 410)},
    tags=["locks"],
    summary="Renew a lease",
    description="410 `lease_lost` if the lock already ended (expired, revoked, released).",
)
def renew_lock(
    request: HttpRequest, lock_id: int = LockId, payload: LockRenewIn | None = None
) -> dict[str, Any]:
    ttl = payload.ttl if payload is not None else None
    outcome = lock_renew(lock_id=lock_id, agent=request.auth, ttl=ttl)
    if outcome.status == "lost":
        raise _lease_lost(outcome)
    return {"expires_at": outcome.lock.expires_at}


@api.delete(
    "/locks/{lock_id}",
    response={204: None, **_errors(403, 404, 410)},
    tags=["locks"],
    summary="Release a lock",
    description=(
        "Releases the lock and grants the next waiters. Releasing twice is harmless; "
        "410 `lease_lost` if the lock had ended otherwise (expired, revoked)."
    ),
)
def release_lock(request: HttpRequest, lock_id: int = LockId) -> Status:
    outcome = lock_release(lock_id=lock_id, agent=request.auth)
    if outcome.status == "lost":
        raise _lease_lost(outcome)
    return Status(204, None)


@api.get(
    "/conflicts",
    response={200: list[ConflictOut], **_errors()},
    tags=["conflicts"],
    summary="List recent conflicts",
    description=f"The newest {CONFLICTS_LIMIT} conflicts, newest first, optionally filtered.",
)
def list_conflicts(request: HttpRequest, filters: Query[ConflictFilters]) -> list[dict[str, Any]]:
    return [
        {
            "id": conflict.pk,
            "kind": conflict.kind,
            "status": conflict.status,
            "agents": sorted(agent.name for agent in conflict.agents.all()),
            "resources": sorted(
                qualified_name(request.auth, res) for res in conflict.resources.all()
            ),
            "detail": conflict.detail,
            "occurrences": conflict.occurrences,
            "created_at": conflict.created_at,
        }
        for conflict in conflicts_recent(
            kind=filters.kind, status=filters.status, agent=request.auth
        )
    ]


@api.post(
    "/approvals",
    response={202: ApprovalRequestedOut, 409: WriteRejectedOut, **_errors(403, 404)},
    tags=["approvals"],
    summary="Ask an operator to approve a write",
    description=(
        "The write waits for an operator, whatever the resource's settings (202; poll GET "
        "/approvals/{id}). The checks of any write run first and refuse it as PUT does "
        "(409 `stale_fence`, `not_holder`, `version_conflict`). `reason` is shown to the "
        "operator beside the base, current and proposed values."
    ),
)
def request_approval(request: HttpRequest, payload: ApprovalRequestIn) -> Status:
    result = approval_request(
        agent=request.auth,
        resource=payload.resource,
        value=payload.value,
        expected_version=payload.expected_version,
        fence=payload.fence,
        note=payload.reason,
    )
    if result.status == "applied":  # a standing rule approved it at once
        return Status(202, {"approval_id": result.approval.pk, "status": "approved",
                            "version": result.version, "reason": result.detail})  # fmt: skip
    if result.status != "approval_pending":
        return _write_rejected(result)
    return Status(202, {"approval_id": result.approval.pk, "status": "pending"})


@api.get(
    "/approvals/{approval_id}",
    response={200: ApprovalStatusOut, **_errors(404)},
    tags=["approvals"],
    summary="How an approval stands",
    description=(
        "`status`: pending, approved, edited (approved with a value the operator changed), "
        "rejected, or failed (the resource or the lock moved before the decision). "
        "`reason` is the operator's note, such as why it was rejected. Only the agent that "
        "asked may read it: any other gets 404."
    ),
)
def read_approval(request: HttpRequest, approval_id: int = ApprovalId) -> dict[str, Any]:
    return approval_for_agent(approval_id=approval_id, agent=request.auth)


@api.get(
    "/whoami",
    response={200: WhoAmIOut, **_errors()},
    tags=["agents"],
    summary="The calling agent",
    description=(
        "The agent and its team, whether it is paused (by whom: itself, its team, or "
        "everything), its live locks with the seconds left on each lease, and its queued "
        "lock requests."
    ),
)
def whoami(request: HttpRequest) -> dict[str, Any]:
    return agent_overview(request.auth)
