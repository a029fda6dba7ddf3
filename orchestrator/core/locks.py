"""The lock manager: acquire, renew, release, expire, force-release.

Protocol (DESIGN.md, "The coordination protocol"):

* Every operation locks the Resource row first (``rowlocks``), so all lock
  decisions about one resource are serialized by PostgreSQL.
* Live locks whose lease ran out are marked expired by whichever transaction
  looks at the resource next (or by the monitor): expired leases are free.
* Grants are FIFO. A request is granted at once only if nobody is queued and
  it is compatible with the live locks; shared locks are compatible with each
  other; a queued exclusive request therefore blocks later shared ones.
* Every exclusive grant increments the resource's fence; the new value is the
  lock's fencing token. Shared locks carry the fence current at grant time.
* Releasing, expiring or revoking a lock grants the next compatible waiters in
  the same transaction; their agents are woken after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.utils import timezone

from orchestrator.core import wakeups
from orchestrator.core.errors import Forbidden, Gone, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    NAME_MAX_LENGTH,
    Agent,
    Conflict,
    ConflictKind,
    ConflictStatus,
    Lock,
    LockEnd,
    LockMode,
    LockRequest,
    RequestStatus,
    Resource,
    Step,
)
from orchestrator.core.rowlocks import lock_resource, lock_resource_by_name

MAX_TTL = 86400
User = AbstractBaseUser | AnonymousUser | None


def db_now() -> datetime:
    """The database clock, so that leases mean the same on every host."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            return cursor.fetchone()[0]
    return timezone.now()


def holder_dict(lock: Lock) -> dict[str, Any]:
    return {
        "lock_id": lock.pk,
        "agent": lock.agent.name,
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at.isoformat(),
    }


@dataclass
class AcquireResult:
    status: str  # "granted" | "waiting" | "busy"
    lock: Lock | None = None
    request: LockRequest | None = None
    holders: list[dict[str, Any]] = field(default_factory=list)
    deadlock: Conflict | None = None


@dataclass
class LockOutcome:
    status: str  # "released" | "renewed" | "lost"
    lock: Lock
    reason: str = ""
    conflict: Conflict | None = None


def clean_ttl(ttl: Any, default: int) -> int:
    """A lease length in whole seconds, 1..86400."""
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= MAX_TTL:
        raise Invalid("invalid_ttl", f"ttl must be a number of seconds from 1 to {MAX_TTL}")
    return int(ttl)


def clean_mode(mode: Any) -> str:
    if mode not in LockMode.values:
        raise Invalid("invalid_mode", "mode must be 'exclusive' or 'shared'")
    return mode


def resource_for_update(resource: Resource | str | int) -> Resource:
    try:
        if isinstance(resource, Resource):
            return lock_resource(resource.pk)
        if isinstance(resource, int):
            return lock_resource(resource)
        if not isinstance(resource, str) or len(resource) > NAME_MAX_LENGTH:
            raise Resource.DoesNotExist
        return lock_resource_by_name(resource)
    except Resource.DoesNotExist:
        raise NotFound("resource_not_found", f"no resource named {resource!s:.200}") from None


def live_locks(resource: Resource) -> list[Lock]:
    """Live locks on a resource. Caller holds the Resource row lock and has expired leases."""
    return list(
        Lock.objects.filter(resource=resource, released_at__isnull=True)
        .select_related("agent")
        .order_by("pk")
    )


def waiting_requests(resource: Resource) -> list[LockRequest]:
    """The FIFO queue of a resource. Caller holds the Resource row lock."""
    return list(
        LockRequest.objects.filter(resource=resource, status=RequestStatus.WAITING)
        .select_related("agent")
        .order_by("pk")
    )


def expire_leases(resource: Resource, now: datetime) -> list[Lock]:
    """Mark the locks whose lease ran out as expired. Caller holds the Resource row lock."""
    expired = list(
        Lock.objects.filter(
            resource=resource, released_at__isnull=True, expires_at__lte=now
        ).select_related("agent")
    )
    for lock in expired:
        lock.released_at = max(now, lock.acquired_at)
        lock.end = LockEnd.EXPIRED
        lock.save(update_fields=["released_at", "end"])
        event_emit(
            "lock.expired",
            agent=lock.agent,
            actor="system",
            subject=lock,
            payload={"resource": resource.name, "mode": lock.mode, "fence": lock.token},
        )
    return expired


def _grant(
    resource: Resource, agent: Agent, mode: str, ttl: int, now: datetime, *, actor: str = ""
) -> Lock:
    """Create a lock. Caller holds the Resource row lock and checked compatibility."""
    if mode == LockMode.EXCLUSIVE:
        resource.fence += 1
        resource.save(update_fields=["fence"])
    lock = Lock.objects.create(
        resource=resource,
        agent=agent,
        mode=mode,
        token=resource.fence,
        acquired_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    event_emit(
        "lock.granted",
        agent=agent,
        actor=actor or None,
        subject=lock,
        payload={
            "resource": resource.name,
            "resource_id": resource.pk,
            "mode": mode,
            "fence": lock.token,
            "expires_at": lock.expires_at.isoformat(),
        },
    )
    return lock


def grant_waiters(resource: Resource, now: datetime) -> list[LockRequest]:
    """Grant the queue's head requests that are now compatible, FIFO.

    Caller holds the Resource row lock and has expired leases. The agents of
    granted requests are woken after commit.
    """
    live = live_locks(resource)
    granted: list[LockRequest] = []
    for request in waiting_requests(resource):
        exclusive_held = any(lock.mode == LockMode.EXCLUSIVE for lock in live)
        if request.mode == LockMode.EXCLUSIVE and live:
            break
        if request.mode == LockMode.SHARED and exclusive_held:
            break
        lock = _grant(resource, request.agent, request.mode, request.ttl, now, actor="system")
        request.status = RequestStatus.GRANTED
        request.lock = lock
        request.resolved_at = now
        request.save(update_fields=["status", "lock", "resolved_at"])
        live.append(lock)
        granted.append(request)
        wakeups.schedule(agent_id=request.agent_id, step_id=request.step_id, reason="lock")
    return granted


def _open_deadlock_check(agent: Agent) -> Conflict | None:
    from orchestrator.core.deadlocks import deadlock_check_for

    return deadlock_check_for(agent)


@service
def lock_acquire(
    *,
    agent: Agent,
    resource: Resource | str | int,
    mode: str = LockMode.EXCLUSIVE,
    ttl: Any = None,
    wait: bool = True,
    step: Step | None = None,
) -> AcquireResult:
    """Acquire a lock on ``resource`` for ``agent``, or queue for it, or report it busy.

    Idempotent: an agent that already holds a compatible live lock gets it
    back; one already queued gets its request back (a retried step does not
    queue twice). A newly queued request is checked for a deadlock at once.
    """
    mode = clean_mode(mode)
    ttl = clean_ttl(ttl, agent.team.default_lease_ttl)
    res = resource_for_update(resource)
    now = db_now()
    expire_leases(res, now)
    grant_waiters(res, now)  # an expiry may have freed the head of the queue
    live = live_locks(res)
    mine = next((lock for lock in live if lock.agent_id == agent.pk), None)
    if mine is not None:
        if mine.mode == mode or mine.mode == LockMode.EXCLUSIVE:
            return AcquireResult("granted", lock=mine)
        raise Invalid(
            "upgrade_not_supported",
            "you hold a shared lock on this resource; release it before asking for exclusive",
        )
    queue = waiting_requests(res)
    queued = next((req for req in queue if req.agent_id == agent.pk), None)
    if queued is not None:
        return AcquireResult("waiting", request=queued)
    compatible = (
        not live
        if mode == LockMode.EXCLUSIVE
        else all(lock.mode == LockMode.SHARED for lock in live)
    )
    if compatible and not queue:
        return AcquireResult("granted", lock=_grant(res, agent, mode, ttl, now))
    holders = [holder_dict(lock) for lock in live]
    if not wait:
        return AcquireResult("busy", holders=holders)
    request = LockRequest.objects.create(
        resource=res, agent=agent, mode=mode, ttl=ttl, step=step, requested_at=now
    )
    event_emit(
        "lock.waiting",
        agent=agent,
        subject=request,
        payload={
            "resource": res.name,
            "resource_id": res.pk,
            "mode": mode,
            "holders": [h["agent"] for h in holders],
            "ahead": len(queue),
        },
    )
    deadlock = _open_deadlock_check(agent)
    return AcquireResult("waiting", request=request, holders=holders, deadlock=deadlock)


def _lock_for_update(lock_id: int) -> tuple[Resource, Lock]:
    """Lock the resource of a lock, then re-read the lock under that row lock."""
    resource_id = Lock.objects.filter(pk=lock_id).values_list("resource_id", flat=True).first()
    if resource_id is None:
        raise NotFound("lock_not_found", f"no lock with id {lock_id}")
    res = lock_resource(resource_id)
    return res, Lock.objects.select_related("agent").get(pk=lock_id)


def _lease_lost(res: Resource, lock: Lock, *, attempted: str) -> Conflict:
    conflict = Conflict.objects.create(
        kind=ConflictKind.LEASE_LOST,
        status=ConflictStatus.RESOLVED,
        team_id=lock.agent.team_id,
        detail=(
            f"{lock.agent.name} tried to {attempted} lock #{lock.pk} on {res.name}, "
            f"which had ended ({lock.end})"
        ),
        data={"lock": lock.pk, "fence": lock.token, "end": lock.end, "attempted": attempted},
        resolved_at=timezone.now(),
        resolution="refused: the holder must acquire the lock again",
    )
    conflict.agents.add(lock.agent)
    conflict.resources.add(res)
    event_emit(
        "conflict.opened",
        agent=lock.agent,
        subject=conflict,
        payload={"kind": conflict.kind, "detail": conflict.detail, "resource": res.name},
    )
    return conflict


@service
def lock_renew(*, lock_id: int, agent: Agent, ttl: Any = None) -> LockOutcome:
    """Extend a live lease to ``ttl`` seconds from now.

    A lock that has ended (expired, revoked, force-released) cannot be
    renewed: the outcome is ``lost`` and a lease_lost Conflict records it.
    """
    ttl = clean_ttl(ttl, agent.team.default_lease_ttl)
    res, lock = _lock_for_update(lock_id)
    if lock.agent_id != agent.pk:
        raise Forbidden("not_your_lock", "this lock belongs to another agent")
    now = db_now()
    expire_leases(res, now)
    grant_waiters(res, now)
    lock.refresh_from_db()
    if lock.released_at is not None:
        return LockOutcome("lost", lock, lock.end, _lease_lost(res, lock, attempted="renew"))
    lock.expires_at = now + timedelta(seconds=ttl)
    lock.save(update_fields=["expires_at"])
    event_emit(
        "lock.renewed",
        agent=agent,
        subject=lock,
        payload={"resource": res.name, "expires_at": lock.expires_at.isoformat()},
    )
    return LockOutcome("renewed", lock)


def _end_lock(res: Resource, lock: Lock, end: str, now: datetime, **emit: Any) -> None:
    lock.released_at = now
    lock.end = end
    lock.save(update_fields=["released_at", "end"])
    kind = {
        LockEnd.RELEASED: "lock.released",
        LockEnd.REVOKED: "lock.revoked",
        LockEnd.FORCE_RELEASED: "lock.force_released",
    }[end]
    event_emit(
        kind,
        subject=lock,
        payload={
            "resource": res.name,
            "resource_id": res.pk,
            "mode": lock.mode,
            "fence": lock.token,
            "holder": lock.agent.name,
        },
        **emit,
    )


@service
def lock_release(*, lock_id: int, agent: Agent) -> LockOutcome:
    """Release a lock held by ``agent`` and grant the next waiters.

    Raises Forbidden for another agent's lock. Releasing a lock that has
    already ended is ``lost`` (a lease_lost Conflict records it), so a holder
    learns that someone else may have written in between.
    """
    res, lock = _lock_for_update(lock_id)
    if lock.agent_id != agent.pk:
        raise Forbidden("not_your_lock", "this lock belongs to another agent")
    now = db_now()
    expire_leases(res, now)
    lock.refresh_from_db()
    if lock.released_at is not None:
        grant_waiters(res, now)
        if lock.end == LockEnd.RELEASED:  # a repeated release: idempotent
            return LockOutcome("released", lock)
        return LockOutcome("lost", lock, lock.end, _lease_lost(res, lock, attempted="release"))
    _end_lock(res, lock, LockEnd.RELEASED, now, agent=agent)
    grant_waiters(res, now)
    return LockOutcome("released", lock)


@service
def lock_force_release(*, lock_id: int, user: User, reason: str = "") -> LockOutcome:
    """Operator action: end a live lock now and grant the next waiters.

    The resource's fence is bumped so that the former holder's later writes
    are rejected even if it still believes it holds the lock.
    """
    res, lock = _lock_for_update(lock_id)
    now = db_now()
    expire_leases(res, now)
    lock.refresh_from_db()
    if lock.released_at is not None:
        raise Gone("lock_not_live", f"lock #{lock.pk} already ended ({lock.end})")
    _end_lock(res, lock, LockEnd.FORCE_RELEASED, now, user=user, team=lock.agent.team_id)
    _bump_fence(res)
    grant_waiters(res, now)
    return LockOutcome("released", lock, reason)


def _bump_fence(res: Resource) -> None:
    res.fence += 1
    res.save(update_fields=["fence"])


def revoke(res: Resource, lock: Lock, now: datetime, *, user: User = None) -> None:
    """End a live lock to break a deadlock, bumping the fence. Caller holds the row lock."""
    _end_lock(
        res,
        lock,
        LockEnd.REVOKED,
        now,
        user=user,
        team=lock.agent.team_id,
        agent=lock.agent if user is None else None,
    )
    _bump_fence(res)


@service
def lock_request_cancel(*, request_id: int, agent: Agent | None, user: User = None) -> LockRequest:
    """Withdraw a waiting request (its agent, or an operator). Idempotent once resolved."""
    resource_id = (
        LockRequest.objects.filter(pk=request_id).values_list("resource_id", flat=True).first()
    )
    if resource_id is None:
        raise NotFound("request_not_found", f"no lock request with id {request_id}")
    res = lock_resource(resource_id)
    request = LockRequest.objects.select_related("agent").get(pk=request_id)
    if agent is not None and request.agent_id != agent.pk:
        raise Forbidden("not_your_request", "this request belongs to another agent")
    if request.status != RequestStatus.WAITING:
        return request
    now = db_now()
    request.status = RequestStatus.CANCELLED
    request.resolved_at = now
    request.reason = "cancelled by operator" if user is not None else "cancelled by its agent"
    request.save(update_fields=["status", "resolved_at", "reason"])
    event_emit(
        "request.cancelled",
        agent=request.agent if user is None else None,
        team=request.agent.team_id,
        user=user,
        subject=request,
        payload={"resource": res.name, "agent": request.agent.name},
    )
    expire_leases(res, now)
    grant_waiters(res, now)  # a cancelled head may have been blocking shared waiters
    return request
