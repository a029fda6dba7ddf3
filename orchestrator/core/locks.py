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

The clock is the database's, read right after the row lock is granted (see
``rowlocks.lock_resource_with_clock``): the same on every host, and a lease
runs from the moment its transaction owns the resource, however long it
waited for the row.

Each operation reads the resource's live locks and queue once
(:class:`Queue`) and decides in memory: a lock cycle costs a handful of
statements per transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator.core import paths, tenancy
from orchestrator.core.conflicts import conflict_open
from orchestrator.core.deadlocks import deadlock_check_for
from orchestrator.core.errors import Forbidden, Gone, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    Agent,
    Conflict,
    ConflictKind,
    Lock,
    LockEnd,
    LockMode,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
    Step,
)
from orchestrator.core.operations import Acquire, Renew, checked
from orchestrator.core.queue import (
    Queue,
    end_lock_set,
    holder_dict,
    lock_queue,
    open_queue,
)
from orchestrator.core.types import User


@dataclass
class AcquireResult:
    status: str  # "granted" | "waiting" | "busy"
    lock: Lock | None = None
    request: LockRequest | None = None
    holders: list[dict[str, Any]] = field(default_factory=list)
    deadlock: Conflict | None = None
    resource: Resource | None = None  # the row as of the grant, when granted at once


@dataclass
class LockOutcome:
    status: str  # "released" | "renewed" | "lost"
    lock: Lock
    reason: str = ""
    conflict: Conflict | None = None


def open_deadlock_check(agent: Agent, queue: Queue) -> Conflict | None:
    # Everyone holding or queued on this resource: every wait-for path out of
    # the new request runs through them (not only through the incompatible ones:
    # a queued writer ahead of a reader waits for the shared holders).
    nearby = {lock.agent_id for lock in queue.live} | {req.agent_id for req in queue.waiting}
    nearby.discard(agent.pk)
    # A path's covering locks are wait-for edges to other resources: no cheap exit.
    if not queue.covering and not nearby & queue.waiting_elsewhere:  # no query needed
        return None  # every wait-for edge out of here stays on this resource
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
    fields = checked(Acquire, mode=mode, ttl=ttl)
    mode = fields["mode"]
    ttl = fields["ttl"] or agent.team.default_lease_ttl
    queue = open_queue(resource, agent, tenancy.need_for_mode(mode))
    res = queue.resource
    mine = queue.holding(agent.pk)
    if mine is not None:
        if mine.mode == mode or mine.mode == LockMode.EXCLUSIVE:
            return AcquireResult("granted", lock=mine, resource=res)
        raise Invalid(
            "upgrade_not_supported",
            "you hold a shared lock on this resource; release it before asking for exclusive",
        )
    queued = next((req for req in queue.waiting if req.agent_id == agent.pk), None)
    if queued is not None:
        return AcquireResult("waiting", request=queued)
    if queue.compatible(mode, agent.pk) and not queue.waiting:
        return AcquireResult("granted", lock=queue.grant(agent, mode, ttl), resource=res)
    holders = [holder_dict(lock) for lock in queue.blockers(mode, agent.pk) or queue.live]
    if not wait:
        return AcquireResult("busy", holders=holders)
    request = LockRequest.objects.create(
        resource=res, agent=agent, mode=mode, ttl=ttl, step=step, requested_at=queue.now
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
            "ahead": len(queue.waiting),
        },
    )
    deadlock = open_deadlock_check(agent, queue)
    queue.waiting.append(request)
    return AcquireResult("waiting", request=request, holders=holders, deadlock=deadlock)


def _queue_of_lock(lock_id: int) -> tuple[Queue, Lock]:
    """Lock the resource of a lock and return its queue and the lock as of now."""
    try:
        queue = lock_queue(locks__id=lock_id)
    except Resource.DoesNotExist:
        raise NotFound("lock_not_found", f"no lock with id {lock_id}") from None
    lock = next((lock for lock in queue.live if lock.pk == lock_id), None)
    if lock is None:  # ended: read it as it is
        lock = Lock.objects.select_related("agent").get(pk=lock_id)
    return queue, lock


def _lease_lost(res: Resource, lock: Lock, *, attempted: str, now: datetime) -> Conflict:
    return conflict_open(
        kind=ConflictKind.LEASE_LOST,
        res=res,
        agent=lock.agent,
        team_id=lock.agent.team_id,
        detail=(
            f"{lock.agent.name} tried to {attempted} lock #{lock.pk} on {res.name}, "
            f"which had ended ({lock.end})"
        ),
        data={"lock": lock.pk, "fence": lock.token, "end": lock.end, "attempted": attempted},
        resolution="refused: the holder must acquire the lock again",
        now=now,
    )


@service
def lock_renew(*, lock_id: int, agent: Agent, ttl: Any = None) -> LockOutcome:
    """Extend a live lease to ``ttl`` seconds from now.

    A lock that has ended (expired, revoked, force-released) cannot be
    renewed: the outcome is ``lost`` and a lease_lost Conflict records it.
    """
    ttl = checked(Renew, ttl=ttl)["ttl"] or agent.team.default_lease_ttl
    queue, lock = _queue_of_lock(lock_id)
    if lock.agent_id != agent.pk:
        raise Forbidden("not_your_lock", "this lock belongs to another agent")
    queue.settle()
    if lock.released_at is not None:
        conflict = _lease_lost(queue.resource, lock, attempted="renew", now=queue.now)
        return LockOutcome("lost", lock, lock.end, conflict)
    lock.expires_at = queue.now + timedelta(seconds=ttl)
    Lock.objects.filter(pk=lock.pk).update(expires_at=lock.expires_at)
    event_emit(
        "lock.renewed",
        agent=agent,
        subject=lock,
        payload={
            "resource": queue.resource.name,
            "resource_id": queue.resource.pk,
            "expires_at": lock.expires_at.isoformat(),
        },
    )
    return LockOutcome("renewed", lock)


@service
def lock_release(*, lock_id: int, agent: Agent) -> LockOutcome:
    """Release a lock held by ``agent`` and grant the next waiters.

    Raises Forbidden for another agent's lock. Releasing a lock that has
    already ended is ``lost`` (a lease_lost Conflict records it), so a holder
    learns that someone else may have written in between; releasing twice is
    harmless.
    """
    queue, lock = _queue_of_lock(lock_id)
    if lock.agent_id != agent.pk:
        raise Forbidden("not_your_lock", "this lock belongs to another agent")
    if lock.released_at is not None:
        queue.settle()
        if lock.end == LockEnd.RELEASED:
            return LockOutcome("released", lock)
        conflict = _lease_lost(queue.resource, lock, attempted="release", now=queue.now)
        return LockOutcome("lost", lock, lock.end, conflict)
    queue.end(lock, LockEnd.RELEASED, agent=agent)
    queue.grant_waiters()
    return LockOutcome("released", lock)


@service
def lock_force_release(*, lock_id: int, user: User, reason: str = "") -> LockOutcome:
    """Operator action: end a live lock now and grant the next waiters.

    The resource's fence is bumped so that the former holder's later writes
    are rejected even if it still believes it holds the lock.
    """
    queue, lock = _queue_of_lock(lock_id)
    if lock.released_at is not None:
        queue.settle()
        raise Gone("lock_not_live", f"lock #{lock.pk} already ended ({lock.end})")
    queue.end(lock, LockEnd.FORCE_RELEASED, user=user, team=lock.agent.team_id)
    queue.bump_fence()
    queue.grant_waiters()
    return LockOutcome("released", lock, reason)


@service
def lock_request_cancel(*, request_id: int, agent: Agent | None, user: User = None) -> LockRequest:
    """Withdraw a waiting request (its agent, or an operator). Idempotent once resolved."""
    try:
        queue = lock_queue(requests__id=request_id)
    except Resource.DoesNotExist:
        raise NotFound("request_not_found", f"no lock request with id {request_id}") from None
    request = next((r for r in queue.waiting if r.pk == request_id), None)
    if request is None:  # resolved already: idempotent
        request = LockRequest.objects.select_related("agent").get(pk=request_id)
    if agent is not None and request.agent_id != agent.pk:
        raise Forbidden("not_your_request", "this request belongs to another agent")
    if request.status != RequestStatus.WAITING:
        queue.settle()  # leases that Queue() just ended free their waiters now
        return request
    by_operator = user is not None
    queue.withdraw(
        request,
        RequestStatus.CANCELLED,
        "cancelled by operator" if by_operator else "cancelled by its agent",
        agent=None if by_operator else request.agent,
        team=request.agent.team_id,
        user=user,
    )
    queue.grant_waiters()
    return request


def lock_release_all(*, agent_id: int, reason: str, user: User = None) -> int:
    """End every live lock and waiting request of an agent (it finished, failed or was
    cancelled). Called inside a service; takes each resource's row lock in id order.
    Returns how many locks were released."""
    resource_ids = sorted(
        set(
            Lock.objects.filter(agent_id=agent_id, released_at__isnull=True).values_list(
                "resource_id", flat=True
            )
        )
        | set(
            LockRequest.objects.filter(agent_id=agent_id, status=RequestStatus.WAITING).values_list(
                "resource_id", flat=True
            )
        )
    )
    paths.lock_paths_of(resource_ids)  # before the first row lock (core/paths.py)
    released = 0
    for resource_id in resource_ids:
        queue = lock_queue(pk=resource_id)
        for request in [r for r in queue.waiting if r.agent_id == agent_id]:
            queue.withdraw(
                request,
                RequestStatus.CANCELLED,
                reason,
                agent=request.agent,
                user=user,
                actor=None if user else "system",
            )
        for lock in [lock for lock in queue.live if lock.agent_id == agent_id]:
            queue.end(lock, LockEnd.RELEASED, agent=lock.agent, user=user,
                      actor=None if user else "system")  # fmt: skip
            released += 1
        queue.grant_waiters()
    # Its waiting lock sets end too (their rows after the Resource rows): one whose
    # request was granted but has not gone on yet would otherwise take its locks again.
    for lock_set_id in LockSet.objects.filter(
        agent_id=agent_id, status=RequestStatus.WAITING
    ).values_list("pk", flat=True):
        end_lock_set(lock_set_id, RequestStatus.CANCELLED, reason, user=user,
                     actor=None if user else "system")  # fmt: skip
    return released
