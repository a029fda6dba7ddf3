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

An applied write bumps the version and appends a ResourceVersion row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import DateTimeField as DTField
from django.db.models import Func
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.errors import Conflicting, Invalid
from orchestrator.core.events import event_emit, service
from orchestrator.core.locks import (
    Queue,
    User,
    db_now,
    open_queue,
    resource_for_update,
    resource_lookup,
    resource_not_found,
)
from orchestrator.core.models import (
    NAME_MAX_LENGTH,
    Agent,
    Approval,
    ApprovalReason,
    Conflict,
    ConflictKind,
    ConflictPolicy,
    ConflictStatus,
    Lock,
    LockMode,
    LockRequest,
    Resource,
    ResourceVersion,
    Step,
    Team,
)


def max_value_bytes() -> int:
    return getattr(settings, "ORCHESTRATOR_MAX_VALUE_BYTES", 256 * 1024)


def clean_name(name: Any) -> str:
    """A resource name: 1-200 printable characters, no surrounding whitespace."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX_LENGTH:
        raise Invalid("invalid_name", f"name must be 1 to {NAME_MAX_LENGTH} characters")
    if name != name.strip() or not name.isprintable():
        raise Invalid("invalid_name", "name must not have surrounding spaces or control characters")
    return name


def clean_value(value: Any) -> Any:
    """A JSON value within the size and nesting limits that PostgreSQL's jsonb can store."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise Invalid("invalid_value", f"value must be JSON: {exc}") from None
    limit = max_value_bytes()
    if len(encoded) > limit:
        raise Invalid(
            "value_too_large",
            f"value is {len(encoded)} bytes of JSON; the limit is {limit}",
            status=413,
        )
    _check_nesting_and_nul(value)
    return value


MAX_VALUE_DEPTH = 100


def _check_nesting_and_nul(value: Any) -> None:
    """Refuse what jsonb cannot store and what a later encoder cannot write.

    json.dumps writes NUL as \\u0000, which jsonb rejects; nesting deeper than
    MAX_VALUE_DEPTH could exhaust the stack of psycopg's encoder or a renderer.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise Invalid("invalid_value", "value must not contain NUL characters")
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > MAX_VALUE_DEPTH:
            raise Invalid(
                "invalid_value", f"value must not be nested deeper than {MAX_VALUE_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in children)


def clean_version(version: Any, field: str = "expected_version") -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**62:
        raise Invalid(f"invalid_{field}", f"{field} must be a non-negative integer")
    return version


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
    """Create a resource at version 0. Raises Conflicting(name_taken) if the name exists."""
    name = clean_name(name)
    value = clean_value(value)
    try:
        with transaction.atomic():
            resource = Resource.objects.create(
                name=name,
                value=value,
                requires_approval=bool(requires_approval),
                team=team or (agent.team if agent else None),
            )
    except IntegrityError:
        raise Conflicting("name_taken", f"a resource named {name!r} already exists") from None
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


def resource_read(*, resource: Resource | str | int) -> ResourceState:
    """Value, version, fence, live holders and waiting requests, read consistently.

    The reads share one REPEATABLE READ snapshot, so holders and value belong to
    the same moment without taking the row lock: a reader never waits behind
    lock traffic and never delays it. Expired leases are left out (they count as
    free), by the database's clock, read in the same statement as the resource.
    """
    lookup = resource_lookup(resource)
    with transaction.atomic():
        sql.read_only_snapshot()
        clock = Func(function="clock_timestamp", output_field=DTField())
        res = Resource.objects.filter(**lookup).annotate(db_clock=clock).first()
        if res is None:
            raise resource_not_found(resource)
        locks, waiters, _elsewhere = sql.load_queue(res)
    return ResourceState(res, [lock for lock in locks if lock.expires_at > res.db_clock], waiters)


@dataclass
class WriteResult:
    status: str  # applied | stale_fence | not_holder | version_conflict | approval_pending
    resource: Resource
    version: int | None = None
    approval: Approval | None = None
    conflict: Conflict | None = None
    detail: str = ""


def _conflict(
    *,
    kind: str,
    res: Resource,
    agent: Agent | None,
    team_id: int | None,
    detail: str,
    data: dict[str, Any],
    resolution: str = "",
) -> Conflict:
    resolved = bool(resolution)
    conflict = Conflict.objects.create(
        kind=kind,
        team_id=team_id,
        detail=detail,
        data=data,
        status=ConflictStatus.RESOLVED if resolved else ConflictStatus.OPEN,
        resolution=resolution,
        resolved_at=db_now() if resolved else None,
    )
    if agent is not None:
        conflict.agents.add(agent)
    conflict.resources.add(res)
    event_emit(
        "conflict.opened",
        team=team_id,
        agent=agent,
        subject=conflict,
        payload={
            "kind": kind,
            "resource": res.name,
            "detail": detail,
            "status": conflict.status,
        },
    )
    return conflict


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


def _approval(
    *,
    res: Resource,
    agent: Agent,
    reason: str,
    value: Any,
    base_version: int | None,
    fence: int | None,
    note: str,
    step: Step | None,
    conflict: Conflict | None = None,
) -> Approval:
    base_value = None
    if base_version is not None:
        base_value = (
            ResourceVersion.objects.filter(resource=res, version=base_version)
            .values_list("value", flat=True)
            .first()
        )
    approval = Approval.objects.create(
        resource=res,
        agent=agent,
        team_id=agent.team_id,
        step=step,
        conflict=conflict,
        reason=reason,
        base_version=base_version,
        base_value=base_value,
        current_version=res.version,
        current_value=res.value,
        proposed_value=value,
        fence=fence,
        note=note[:5000],
    )
    event_emit(
        "approval.requested",
        agent=agent,
        subject=approval,
        payload={
            "approval": approval.pk,
            "resource": res.name,
            "reason": reason,
            "base_version": base_version,
            "current_version": res.version,
        },
    )
    return approval


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
) -> WriteResult:
    """Write ``value`` as ``agent`` under the protocol (see the module docstring).

    ``idempotency_key`` is stored with the version; a write whose key is already
    stored returns that version instead of applying again. ``key_may_exist=False``
    says the caller knows the key was never used (an agent step's first attempt)
    and skips that lookup; the unique constraint still guards it.

    Refusals of malformed input raise before anything is written; every
    protocol decision (applied, rejected, pending approval) is committed with
    its Event, and its Conflict where there is one.
    """
    value = clean_value(value)
    expected_version = clean_version(expected_version)
    fence = clean_version(fence, "fence")
    queue = open_queue(resource)
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
            conflict = _conflict(
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
            conflict = _conflict(
                kind=ConflictKind.WRITE_CONFLICT,
                res=res,
                agent=agent,
                team_id=team_id,
                detail=detail,
                data=data,
            )
            approval = _approval(
                res=res,
                agent=agent,
                reason=ApprovalReason.VERSION_CONFLICT,
                value=value,
                base_version=expected_version,
                fence=fence,
                note=note,
                step=step,
                conflict=conflict,
            )
            return WriteResult(
                "approval_pending", res, approval=approval, conflict=conflict, detail=detail
            )
        event_emit(
            "write.rejected",
            agent=agent,
            subject=res,
            payload={"resource": res.name, "error": "version_conflict", **data},
        )
        conflict = _conflict(
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
        approval = _approval(
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
        )
        return WriteResult("approval_pending", res, approval=approval)

    version = apply_write(
        res, value, agent=agent, fence=fence, team_id=team_id, idempotency_key=idempotency_key
    )
    return WriteResult("applied", res, version=version)


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
    value = clean_value(value)
    base_version = clean_version(base_version)
    res, _now = resource_for_update(resource)
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
