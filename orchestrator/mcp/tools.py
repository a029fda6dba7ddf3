"""The MCP tools: what each does, told to the model, and the core call it makes.

Each tool is an operation's model (its arguments, validated by core/operations.py
or a model of arguments.py built on it), a description written for a model that
has never seen this server, and a plain function ``(agent, arguments) -> dict``
that calls one service or selector of the core, as the HTTP API's endpoint for
the same operation does, and shapes the answer. These functions are synchronous:
server.py runs them in a thread. A tool that waits for a lock answers
:class:`Waiting` when it can wait without its thread (core/request_threads.py):
server.py then awaits the long poll on the event loop and shapes its result in a
read thread. A refusal is a ProtocolError (core/errors.py)
with the code the HTTP API answers with; server.py turns it into a tool error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.core.errors import Conflicting, Gone
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
from orchestrator.core.models import Agent, Lock, LockRequest, RequestStatus, Resource
from orchestrator.core.operations import (
    AskApproval,
    ListResources,
    Operation,
    Read,
    ReadApproval,
    WhoAmI,
)
from orchestrator.core.resources import WriteResult, approval_request, resource_read, resource_write
from orchestrator.core.selectors import (
    agent_overview,
    approval_for_agent,
    lock_request_poll,
    resources_visible,
)
from orchestrator.core.tenancy import qualified_name
from orchestrator.core.wakeups import LongPoll
from orchestrator.mcp.arguments import (
    MAX_WAIT_SECONDS,
    AcquireArgs,
    ReleaseArgs,
    RenewArgs,
    RequestArgs,
    WaitArgs,
    WriteArgs,
    capped,
)


@dataclass(frozen=True)
class Waiting:
    """A tool's answer to come: ``answer(result)`` once ``poll`` has waited."""

    poll: LongPoll[Any]
    answer: Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class ToolSpec:
    model: type[Operation]
    description: str
    run: Callable[[Agent, Any], dict[str, Any] | Waiting]
    read_only: bool = False


def _when_decided(poll: LongPoll[Any], answer: Callable[[Any], dict[str, Any]]) -> Any:
    """``answer`` of the poll's result: now, or :class:`Waiting` (LongPoll.deferred)."""
    return Waiting(poll, answer) if poll.deferred() else answer(poll.result)


# --- shaping --------------------------------------------------------------------------


def _grant(lock: Lock, resource: Resource) -> dict[str, Any]:
    return {
        "status": "granted",
        "lock_id": lock.pk,
        "resource": qualified_name(lock.agent, resource),
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at,
        "version": resource.version,
        "value": resource.value,
    }


def _request(request: LockRequest) -> dict[str, Any]:
    """A lock request as it stands: granted (the grant), waiting, or ended."""
    if request.status == RequestStatus.GRANTED and request.lock is not None:
        return {**_grant(request.lock, request.resource), "request_id": request.pk}
    answer = {
        "status": request.status,
        "request_id": request.pk,
        "resource": qualified_name(request.agent, request.resource),
    }
    if request.status == RequestStatus.WAITING:
        return {**answer, "detail": "still queued: call wait with this request_id"}
    return {**answer, "reason": request.reason}


def _lock_set(agent: Agent, result: LockSetResult) -> dict[str, Any]:
    """A lock set as it stands: granted (every grant), waiting, or ended."""
    lock_set = result.lock_set
    answer: dict[str, Any] = {
        "status": result.status,
        "lock_set_id": lock_set.pk,
        "resources": [qualified_name(agent, res) for res in lock_set_resources(lock_set)],
    }
    if result.status == RequestStatus.GRANTED:
        return {**answer, "locks": [_grant(lock, lock.resource) for lock in result.locks]}
    if result.status == RequestStatus.WAITING:
        return {
            **answer,
            "waiting_on": qualified_name(agent, result.waiting_on),
            "held": result.held,
            "detail": "still queued: call wait with this lock_set_id",
        }
    return {**answer, "reason": lock_set.reason}


def _rejected(result: WriteResult) -> Conflicting:
    extra: dict[str, Any] = {"conflict_id": result.conflict.pk if result.conflict else None}
    if result.status == "version_conflict":
        extra["current_version"] = result.resource.version
    return Conflicting(result.status, result.detail, **extra)


def _lost(outcome: LockOutcome) -> Gone:
    return Gone(
        "lease_lost",
        f"lock #{outcome.lock.pk} had already ended ({outcome.reason}): someone else may "
        "have written the resource since; acquire it again and re-read it",
        conflict_id=outcome.conflict.pk if outcome.conflict else None,
    )


# --- the tools ------------------------------------------------------------------------


def acquire(agent: Agent, args: AcquireArgs) -> dict[str, Any] | Waiting:
    if isinstance(args.resource, list):
        return _acquire_set(agent, args)
    result = lock_acquire(
        agent=agent, resource=args.resource, mode=args.mode, ttl=args.ttl, wait=True
    )
    if result.status == "granted":
        return _grant(result.lock, result.resource)
    # Queued: wait as long as asked, then say how the request stands (it may also have
    # been aborted at once, as the victim of the deadlock it closed).
    poll = lock_request_poll(
        request_id=result.request.pk, agent=agent, timeout=capped(args.wait_seconds)
    )
    return _when_decided(poll, _request)


def _acquire_set(agent: Agent, args: AcquireArgs) -> dict[str, Any] | Waiting:
    result = lock_set_acquire(agent=agent, resources=args.resource, mode=args.mode, ttl=args.ttl)
    if result.status == RequestStatus.WAITING and args.wait_seconds > 0:
        poll = lock_set_poll(
            lock_set_id=result.lock_set.pk, agent=agent, timeout=capped(args.wait_seconds)
        )
        return _when_decided(poll, lambda result: _lock_set(agent, result))
    return _lock_set(agent, result)


def cancel(agent: Agent, args: RequestArgs) -> dict[str, Any]:
    if args.lock_set_id is not None:
        return _lock_set(agent, lock_set_release(lock_set_id=args.lock_set_id, agent=agent))
    return _request(lock_request_cancel(request_id=args.request_id, agent=agent))


def wait(agent: Agent, args: WaitArgs) -> dict[str, Any] | Waiting:
    timeout = capped(args.wait_seconds)
    if args.lock_set_id is not None:
        poll = lock_set_poll(lock_set_id=args.lock_set_id, agent=agent, timeout=timeout)
        return _when_decided(poll, lambda result: _lock_set(agent, result))
    poll = lock_request_poll(request_id=args.request_id, agent=agent, timeout=timeout)
    return _when_decided(poll, _request)


def read(agent: Agent, args: Read) -> dict[str, Any]:
    state = resource_read(resource=args.resource, agent=agent)
    res = state.resource
    return {
        "resource": qualified_name(agent, res),
        "value": res.value,
        "version": res.version,
        "fence": res.fence,
        "requires_approval": res.requires_approval,
        "holders": [
            {"agent": lock.agent.name, "mode": lock.mode, "expires_at": lock.expires_at}
            for lock in state.holders
        ],
        "waiters": [{"agent": req.agent.name, "mode": req.mode} for req in state.waiters],
    }


def write(agent: Agent, args: WriteArgs) -> dict[str, Any]:
    result = resource_write(
        agent=agent,
        resource=args.resource,
        value=args.value,
        expected_version=args.expected_version,
        fence=args.fence,
        release=args.release,
    )
    if result.status == "applied":
        answer = {"status": "applied", "version": result.version, "released": result.released}
        return {**answer, "lock_id": result.lock.pk} if result.released else answer
    if result.status == "approval_pending":
        detail = result.detail or "every write to this resource waits for an operator"
        if args.release:
            detail += (
                "; your lock was not released: the approval re-checks its fence when it "
                "is decided, so keep it (renew it) until then, then release it"
            )
        return {"status": "approval_pending", "approval_id": result.approval.pk, "detail": detail}
    raise _rejected(result)


def release(agent: Agent, args: ReleaseArgs) -> dict[str, Any]:
    if args.lock_set_id is not None:
        result = lock_set_release(lock_set_id=args.lock_set_id, agent=agent)
        # A granted set's locks are released; a waiting one is cancelled instead.
        status = "released" if result.status == RequestStatus.GRANTED else result.status
        return {"status": status, "lock_set_id": result.lock_set.pk}
    outcome = lock_release(lock_id=args.lock_id, agent=agent)
    if outcome.status == "lost":
        raise _lost(outcome)
    return {"status": "released", "lock_id": outcome.lock.pk}


def renew(agent: Agent, args: RenewArgs) -> dict[str, Any]:
    outcome = lock_renew(lock_id=args.lock_id, agent=agent, ttl=args.ttl)
    if outcome.status == "lost":
        raise _lost(outcome)
    return {"status": "renewed", "lock_id": outcome.lock.pk, "expires_at": outcome.lock.expires_at}


def request_approval(agent: Agent, args: AskApproval) -> dict[str, Any]:
    result = approval_request(
        agent=agent,
        resource=args.resource,
        value=args.value,
        expected_version=args.expected_version,
        fence=args.fence,
        note=args.reason,
    )
    if result.status == "applied":  # a standing rule approved it at once
        return {"status": "approved", "approval_id": result.approval.pk,
                "version": result.version, "reason": result.detail}  # fmt: skip
    if result.status != "approval_pending":
        raise _rejected(result)
    return {"status": "pending", "approval_id": result.approval.pk}


def approval_status(agent: Agent, args: ReadApproval) -> dict[str, Any]:
    return approval_for_agent(approval_id=args.approval_id, agent=agent)


def list_resources(agent: Agent, args: ListResources) -> dict[str, Any]:
    return resources_visible(agent=agent, prefix=args.prefix)


def whoami(agent: Agent, args: WhoAmI) -> dict[str, Any]:
    return agent_overview(agent)


# --- what the model is told -----------------------------------------------------------

TOOLS: dict[str, ToolSpec] = {
    "acquire": ToolSpec(
        AcquireArgs,
        "Lock a shared resource before you change it (mode 'exclusive', the default) or "
        "to read it consistently ('shared'; several agents may share). Returns either a "
        "grant {status: 'granted', lock_id, fence, expires_at, version, value}: the "
        "resource as it is now that you hold it, so you need no `read` before you "
        "write (a cycle is acquire, then write with release: true), or, when "
        "another agent holds it, a queued request {status: 'waiting', request_id}: then "
        "call `wait` with that request_id until it is granted, and change nothing "
        "meanwhile. It waits up to wait_seconds (at most "
        f"{MAX_WAIT_SECONDS}) for a busy lock before answering. status 'aborted' or "
        "'cancelled' means the request ended (e.g. you were chosen as a deadlock "
        "victim): release what you hold, then start over. Keep the fence for `write`, "
        "and the lock_id for `release` and `renew`; the lease lasts ttl seconds (default "
        "the team's lease): renew it before expires_at if you need longer. Acquiring a "
        "lock you already hold returns it again. "
        "To lock SEVERAL resources (e.g. every file a change touches), pass a list of "
        "names as resource: you get all of them or none, taken in one global order, so "
        "agents that lock this way never deadlock each other. Prefer that to several "
        "acquire calls. The answer is {status: 'granted', lock_set_id, locks: [one grant "
        "per resource]}, or {status: 'waiting', lock_set_id, waiting_on}: then call "
        "`wait` with that lock_set_id. Release the whole set with `release` and its "
        "lock_set_id (or each lock by its lock_id). Errors: resource_not_found (check "
        "the name with list_resources), forbidden (not shared with your team for this), "
        "already_waiting (you already wait for one of the resources), invalid_request "
        "(fix the arguments).",
        acquire,
    ),
    "wait": ToolSpec(
        WaitArgs,
        "Wait for a queued lock request (the request_id from `acquire`), or a lock set "
        "(its lock_set_id), for up to "
        f"wait_seconds (at most {MAX_WAIT_SECONDS}). Returns the grant (status "
        "'granted', with lock_id, fence, expires_at, version and value; for a lock set, "
        "locks: one grant per resource), or status "
        "'waiting' (not yet: call wait again), or status 'aborted' / 'cancelled' with "
        "a reason (the request ended, e.g. as a deadlock victim: do not write; release "
        "your other locks and start over). Errors: request_not_found, not_your_request, "
        "lock_set_not_found, not_your_lock_set.",
        wait,
        read_only=True,
    ),
    "cancel": ToolSpec(
        RequestArgs,
        "Give up a queued lock request (the request_id from `acquire`) or lock set (its "
        "lock_set_id) that you no longer want, so that the agents behind you in the "
        "queue are not held up (a waiting lock set also lets go of what it held). "
        "Returns status 'cancelled'; or the grant, if it was granted first (then you "
        "hold the lock: release it). Errors: request_not_found, not_your_request, "
        "lock_set_not_found, not_your_lock_set.",
        cancel,
    ),
    "read": ToolSpec(
        Read,
        "Read a resource: its JSON value, version, current fence, and who holds or "
        "waits for it. Pass the version you read as expected_version when you write. "
        "Errors: resource_not_found.",
        read,
        read_only=True,
    ),
    "write": ToolSpec(
        WriteArgs,
        "Replace a resource's value. Hold an exclusive lock first and pass its fence, "
        "and pass the version your change is based on as expected_version (the version "
        "`acquire` returned, or a later `read`). For the LAST write of a change, pass "
        "release: true: the lock is released in the same step if and only if the write "
        "is applied, so you need no `release` call afterwards (and a refused write keeps "
        "your lock, so you can re-read and retry). Returns "
        "{status: 'applied', version, released} (the new version; released: true with "
        "the lock_id when the lock was released with it), or {status: "
        "'approval_pending', approval_id} when an operator must approve it (poll "
        "approval_status; your lock is NOT released then: release it once decided). "
        "Errors: stale_fence (your lock is no longer the current one: "
        "it expired or was revoked; acquire again, re-read, redo your change), "
        "version_conflict (someone wrote since you read: re-read, redo your change on "
        "the new value, write with the new version), not_holder (another agent holds a "
        "lock on it: acquire it first), resource_not_found, invalid_value / "
        "value_too_large / invalid_request (fix the value or arguments; release needs "
        "the fence).",
        write,
    ),
    "release": ToolSpec(
        ReleaseArgs,
        "Release a lock you hold (the lock_id from `acquire`), or every lock of a lock "
        "set (its lock_set_id), as soon as you are done, "
        "so that the next agent in the queue gets it. Releasing twice is harmless. "
        "Errors: lease_lost (the lock had already ended, e.g. its lease expired: "
        "someone else may have written since, so re-read before trusting what you "
        "wrote), not_your_lock, lock_not_found.",
        release,
    ),
    "renew": ToolSpec(
        RenewArgs,
        "Extend the lease of a lock you hold to ttl seconds from now (default: the "
        "team's lease). Returns the new expires_at. Call it before the lease runs out "
        "when a change takes long. Errors: lease_lost (the lock already ended: acquire "
        "it again and re-read), not_your_lock, lock_not_found.",
        renew,
    ),
    "request_approval": ToolSpec(
        AskApproval,
        "Ask a human operator to approve a write before it is applied: the value you "
        "propose, the expected_version it is based on, the fence of your lock if you "
        "hold one, and a reason the operator reads. Returns {status: 'pending', "
        "approval_id}; the operator decides in the dashboard, possibly much later: poll "
        "approval_status. Errors: as for write (stale_fence, version_conflict, "
        "not_holder, resource_not_found, invalid_request).",
        request_approval,
    ),
    "approval_status": ToolSpec(
        ReadApproval,
        "How an approval you requested stands: status 'pending' (not decided yet: ask "
        "again later), 'approved' or 'edited' (applied; version is the new version, "
        "applied_value what was written: the operator may have edited it), 'rejected' "
        "(nothing written; reason says why: take it into account before trying again), "
        "or 'failed' (the resource or your lock moved before the decision: re-read and "
        "ask again). Errors: approval_not_found (no approval of yours has this id).",
        approval_status,
        read_only=True,
    ),
    "list_resources": ToolSpec(
        ListResources,
        "List the resources you may use whose names start with prefix (all of them "
        "without one), by name: each with its version, whether writes need an "
        "operator's approval, and who holds a lock on it now. truncated is true when "
        "there are more than were listed: narrow the prefix.",
        list_resources,
        read_only=True,
    ),
    "whoami": ToolSpec(
        WhoAmI,
        "Who you are here: your agent and team, whether you are paused (then wait for "
        "an operator to resume you before changing anything), the locks you hold now "
        "with their lock_id, fence and seconds left on each lease, and your queued lock "
        "requests. Call it first, and whenever you are unsure what you hold.",
        whoami,
        read_only=True,
    ),
}
