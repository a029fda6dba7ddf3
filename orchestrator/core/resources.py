"""Resources: create, read, and write with fencing tokens and versions.

A write is applied only if

* its fencing token (when given) is that of a live exclusive lock the writer
  holds on the resource and equals the resource's current fence; otherwise
  it is rejected and a Conflict (stale_fence) records it;
* without a token, nobody else holds a live lock on the resource (not_holder);
* the version it read (when given) is still current; otherwise, by the team's
  conflict policy, it is rejected (and a resolved write_conflict Conflict
  records it) or becomes an Approval for an operator;
* the resource does not require approval (then every write is an Approval).

An applied write bumps the version and appends a ResourceVersion row. A write with
``release`` also ends the lock its fence names, in the same transaction, if and only
if it is applied: a lock cycle in two commits (acquire; write and release), and no
moment at which the write is committed and the lock still held, or the other way
round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import DateTimeField as DTField
from django.db.models import Func
from django.utils import timezone

from orchestrator.core import sql, tenancy
from orchestrator.core.approvals import approval_open
from orchestrator.core.conflicts import conflict_open
from orchestrator.core.errors import Conflicting, Forbidden
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalReason,
    ApprovalStatus,
    Conflict,
    ConflictKind,
    ConflictPolicy,
    Lock,
    LockEnd,
    LockRequest,
    Resource,
    ResourceVersion,
    Step,
    Team,
)
from orchestrator.core.operations import (
    CreateResource,
    FencedWrite,
    WriteBody,
    checked,
    release_refusal,
)
from orchestrator.core.queue import (
    Queue,
    lookup_filter,
    open_queue,
    resource_for_update,
    resource_lookup,
    resource_not_found,
)
from orchestrator.core.types import User
from orchestrator.core.writes import apply_write, check_fence


@service
def resource_create(
    *,
    name: Any,
    value: Any = None,
    requires_approval: bool = False,
    team: Team | None = None,
    agent: Agent | None = None,
    user: User = None,
) -> Resource:
    """Create a resource at version 0, owned by ``team``: by default the agent's, and
    without either the team named ``tenancy.DEFAULT_TEAM``. An agent creates
    resources in its own team only. Raises Conflicting(name_taken) if the team has a
    resource of that name, and Invalid for what the CreateResource operation refuses."""
    fields = checked(CreateResource, name=name, value=value, requires_approval=requires_approval)
    name, value = fields["name"], fields["value"]
    if agent is not None and team is not None and team.pk != agent.team_id:
        raise Forbidden("forbidden", "an agent creates resources in its own team only")
    owner = team or (agent.team if agent is not None else tenancy.default_team())
    try:
        with transaction.atomic():
            resource = Resource.objects.create(
                name=name, value=value, requires_approval=fields["requires_approval"], team=owner
            )
    except IntegrityError:
        raise Conflicting(
            "name_taken", f"{owner.name} already has a resource named {name!r}"
        ) from None
    real_user = user if user is not None and user.is_authenticated else None
    ResourceVersion.objects.create(
        resource=resource, version=0, value=value, agent=agent, user=real_user
    )
    event_emit(
        "resource.created",
        team=resource.team_id,
        agent=agent,
        user=user,
        subject=resource,
        payload={"resource": name, "requires_approval": resource.requires_approval},
    )
    return resource


@dataclass
class ResourceState:
    resource: Resource
    holders: list[Lock]
    waiters: list[LockRequest]


def resource_read(*, resource: Resource | str | int, agent: Agent | None = None) -> ResourceState:
    """Value, version, fence, live holders and waiting requests, read consistently.

    The reads share one REPEATABLE READ snapshot, so holders and value belong to
    the same moment without taking the row lock: a reader never waits behind
    lock traffic and never delays it. Expired leases are left out (they count as
    free), by the database's clock, read in the same statement as the resource.
    ``resource`` is named as ``agent`` names it (core/tenancy.py), who must be able to
    read it.
    """
    lookup = resource_lookup(resource, agent)
    with transaction.atomic():
        sql.read_only_snapshot()
        clock = Func(function="clock_timestamp", output_field=DTField())
        res = Resource.objects.filter(lookup_filter(lookup)).annotate(db_clock=clock).first()
        if res is None:
            raise resource_not_found(resource)
        tenancy.authorize(agent, res, tenancy.READ, asked=resource)
        locks, waiters, _elsewhere = sql.load_queue(res)
    return ResourceState(res, [lock for lock in locks if lock.expires_at > res.db_clock], waiters)


@dataclass
class WriteResult:
    # applied | stale_fence | not_holder | version_conflict | approval_pending |
    # approval_rejected (by a standing rule)
    status: str
    resource: Resource
    version: int | None = None
    approval: Approval | None = None
    conflict: Conflict | None = None
    detail: str = ""
    # A write with ``release``: whether its lock ended with it (only ever when applied),
    # and that lock.
    released: bool = False
    lock: Lock | None = None


def _approval_result(
    res: Resource, approval: Approval, *, conflict: Conflict | None = None, detail: str = ""
) -> WriteResult:
    """A write that became ``approval``: pending, or decided at once by a standing rule
    (applied, or ``approval_rejected`` with the rule's reason)."""
    if approval.status == ApprovalStatus.PENDING:
        return WriteResult(
            "approval_pending", res, approval=approval, conflict=conflict, detail=detail
        )
    if approval.status == ApprovalStatus.APPROVED:
        return WriteResult(
            "applied",
            res,
            version=approval.applied_version,
            approval=approval,
            conflict=conflict,
            detail=approval.decision_note,
        )
    return WriteResult(
        "approval_rejected", res, approval=approval, conflict=conflict,
        detail=approval.decision_note,
    )  # fmt: skip


@service
def resource_write(
    *,
    agent: Agent,
    resource: Resource | str | int,
    value: Any,
    expected_version: Any = None,
    fence: Any = None,
    step: Step | None = None,
    note: str = "",
    force_approval: bool = False,
    idempotency_key: str = "",
    key_may_exist: bool = True,
    release: Any = False,
) -> WriteResult:
    """Write ``value`` as ``agent`` under the protocol (see the module docstring).

    ``idempotency_key`` is stored with the version; a write whose key is already
    stored returns that version instead of applying again. ``key_may_exist=False``
    says the caller knows the key was never used (an agent step's first attempt)
    and skips that lookup; the unique constraint still guards it.

    With ``release`` (which needs ``fence``), the lock the fence names is released
    in the same transaction exactly when the write is applied, as ``lock_release``
    would (its waiters granted in that commit, with the value just written); a
    refused write or one that waits for an approval releases nothing (the approval
    re-checks the fence when it is decided). ``released`` says which.

    Refusals of malformed input raise before anything is written; every
    protocol decision (applied, rejected, pending approval) is committed with
    its Event, and its Conflict where there is one.
    """
    fields = checked(
        FencedWrite, value=value, expected_version=expected_version, fence=fence, release=release
    )
    value, expected_version, fence = fields["value"], fields["expected_version"], fields["fence"]
    refused = release_refusal(fields["release"], fence)
    if refused is not None:
        raise refused
    queue = open_queue(resource, agent, tenancy.WRITE)
    result = _write(
        queue,
        agent=agent,
        value=value,
        expected_version=expected_version,
        fence=fence,
        step=step,
        note=note,
        force_approval=force_approval,
        idempotency_key=idempotency_key,
        key_may_exist=key_may_exist,
    )
    if fields["release"] and result.status == "applied":
        _release_with(result, queue, agent, fence)
    return result


def _release_with(result: WriteResult, queue: Queue, agent: Agent, fence: int) -> None:
    """End the writer's lock (the live exclusive lock whose token is ``fence``) with its
    applied write, and grant the waiters behind it, as ``lock_release`` does (a path's
    related queues are settled after commit: ``Queue.end``). Caller holds the Resource
    row lock, in the write's transaction."""
    lock = check_fence(queue, agent, fence)
    if lock is not None:
        queue.end(lock, LockEnd.RELEASED, agent=agent)
        queue.grant_waiters()
        result.released, result.lock = True, lock
        return
    # Only a retried write found applied already (by its idempotency key) gets here:
    # the first attempt, with the same arguments, released the lock when it committed.
    ended = Lock.objects.filter(
        resource_id=queue.resource.pk, agent=agent, token=fence, end=LockEnd.RELEASED
    ).first()
    result.released, result.lock = ended is not None, ended


def _write(
    queue: Queue,
    *,
    agent: Agent,
    value: Any,
    expected_version: int | None,
    fence: int | None,
    step: Step | None,
    note: str,
    force_approval: bool,
    idempotency_key: str,
    key_may_exist: bool,
) -> WriteResult:
    """:func:`resource_write`'s decision on validated arguments. Caller holds the
    Resource row lock (``queue``); the caller releases the lock of an applied write
    with ``release`` (applied here, by a standing rule, or found applied by its key)."""
    res = queue.resource
    if idempotency_key and key_may_exist:
        done = ResourceVersion.objects.filter(resource_id=res.pk, idempotency_key=idempotency_key)
        version = done.values_list("version", flat=True).first()
        if version is not None:  # a retried call: it was applied before the crash
            return WriteResult("applied", res, version=version, detail="already applied")
    team_id = agent.team_id
    others = [lock for lock in queue.live if lock.agent_id != agent.pk]
    if fence is not None:
        if check_fence(queue, agent, fence) is None:
            mine = Lock.objects.filter(resource=res, agent=agent, token=fence).first()
            detail = (
                f"{agent.name} wrote to {res.name} with fencing token {fence}, "
                f"but the current fence is {res.fence}"
                + (f" and its lock ended ({mine.end})" if mine and mine.end else "")
            )
            event_emit(
                "write.rejected",
                agent=agent,
                subject=res,
                payload={"resource": res.name, "error": "stale_fence", "fence": fence},
            )
            conflict = conflict_open(
                kind=ConflictKind.STALE_FENCE,
                res=res,
                agent=agent,
                team_id=team_id,
                detail=detail,
                data={
                    "fence": fence,
                    "current_fence": res.fence,
                    "holders": [lock.agent.name for lock in others],
                },
                resolution="write rejected",
            )
            return WriteResult("stale_fence", res, conflict=conflict, detail=detail)
    elif others:
        detail = f"{res.name} is locked by {', '.join(sorted(o.agent.name for o in others))}"
        event_emit(
            "write.rejected",
            agent=agent,
            subject=res,
            payload={"resource": res.name, "error": "not_holder"},
        )
        return WriteResult("not_holder", res, detail=detail)

    if expected_version is not None and expected_version != res.version:
        team = agent.team
        detail = (
            f"{agent.name} wrote {res.name} based on version {expected_version}, "
            f"but it is at version {res.version}"
        )
        data = {"expected_version": expected_version, "current_version": res.version}
        if team.conflict_policy == ConflictPolicy.ASK_OPERATOR:
            conflict = conflict_open(
                kind=ConflictKind.WRITE_CONFLICT,
                res=res,
                agent=agent,
                team_id=team_id,
                detail=detail,
                data=data,
            )
            approval = approval_open(
                res=res,
                agent=agent,
                reason=ApprovalReason.VERSION_CONFLICT,
                value=value,
                base_version=expected_version,
                fence=fence,
                note=note,
                step=step,
                conflict=conflict,
                queue=queue,
            )
            return _approval_result(res, approval, conflict=conflict, detail=detail)
        event_emit(
            "write.rejected",
            agent=agent,
            subject=res,
            payload={"resource": res.name, "error": "version_conflict", **data},
        )
        conflict = conflict_open(
            kind=ConflictKind.WRITE_CONFLICT,
            res=res,
            agent=agent,
            team_id=team_id,
            detail=detail,
            data=data,
            resolution="write rejected by policy; the agent must re-read",
        )
        return WriteResult("version_conflict", res, conflict=conflict, detail=detail)

    if res.requires_approval or force_approval:
        approval = approval_open(
            res=res,
            agent=agent,
            reason=ApprovalReason.REQUIRES_APPROVAL
            if res.requires_approval
            else ApprovalReason.REQUESTED,
            value=value,
            base_version=expected_version if expected_version is not None else res.version,
            fence=fence,
            note=note,
            step=step,
            queue=queue,
        )
        return _approval_result(res, approval)

    version = apply_write(
        res, value, agent=agent, fence=fence, team_id=team_id, idempotency_key=idempotency_key
    )
    return WriteResult("applied", res, version=version)


def approval_request(
    *,
    agent: Agent,
    resource: Resource | str | int,
    value: Any,
    expected_version: Any = None,
    fence: Any = None,
    step: Step | None = None,
    note: str = "",
) -> WriteResult:
    """An agent asks an operator to approve a write, whatever the resource's settings
    (the agents' ``request_approval``): :func:`resource_write` with ``force_approval``.

        The same checks as any write run first (fence, version); if they pass,
        the write waits as a pending Approval (status ``approval_pending``).
        ``resource_write`` owns the transaction.
    """
    return resource_write(
        agent=agent,
        resource=resource,
        value=value,
        expected_version=expected_version,
        fence=fence,
        step=step,
        note=note,
        force_approval=True,
    )


@service
def resource_write_unguarded(
    *,
    agent: Agent,
    resource: Resource | str | int,
    value: Any,
    base_version: Any = None,
) -> WriteResult:
    """Apply ``value`` as the next version with no protocol checks (an unguarded run).

    No fence, lock or version is checked: this is what agents do without the
    protocol, so that the failures can be shown. The write is still recorded
    like any other (a ResourceVersion row and a ``resource.written`` Event whose
    payload says ``"unguarded": true`` and the version the writer said it read),
    so the run checker can tell what happened. The Resource row lock is taken
    only to number the versions consistently.
    """
    # The version it says it read is checked as a write's expected_version.
    fields = checked(WriteBody, value=value, expected_version=base_version)
    value, base_version = fields["value"], fields["expected_version"]
    res, _now = resource_for_update(resource, agent)
    version = sql.write_value(
        res, value, agent_id=agent.pk, user_id=None, fence=None, now=timezone.now()
    )
    event_emit(
        "resource.written",
        team=agent.team_id,
        agent=agent,
        subject=res,
        payload={
            "resource": res.name,
            "version": version,
            "fence": None,
            "approval": None,
            "by": agent.name,
            "unguarded": True,
            "base_version": base_version,
        },
    )
    return WriteResult("applied", res, version=version)
