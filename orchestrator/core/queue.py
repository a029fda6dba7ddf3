"""A resource's lock queue, read under its row lock: the live locks and waiting
requests that every lock decision looks at, and the moves on them (grant, end,
withdraw, settle). The lock manager (locks.py), the write path (resources.py),
approvals and the deadlock detector all act through it.

Each operation locks the Resource row first (``rowlocks``), reads the queue once
and decides in memory (:class:`Queue`); the clock is the database's, read right
after the row lock is granted (``rowlocks.lock_resource_with_clock``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet

from orchestrator.core import paths, sql, tenancy, wakeups
from orchestrator.core.errors import Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import (
    NAME_MAX_LENGTH,
    TEAM_SEPARATOR,
    Agent,
    Lock,
    LockEnd,
    LockMode,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
)
from orchestrator.core.rowlocks import lock_resource_then, lock_resource_with_clock
from orchestrator.core.types import User

logger = logging.getLogger(__name__)


def db_now() -> datetime:
    """The database clock, so that leases mean the same on every host."""
    return sql.clock()


def holder_dict(lock: Lock) -> dict[str, Any]:
    """A live lock as the holder a refusal or a read names: who, how, until when, and on
    what (the resource itself, or a folder above it or a path under it)."""
    return {
        "lock_id": lock.pk,
        "agent": lock.agent.name,
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at.isoformat(),
        "resource": lock.resource.name,
    }


def storable_text(text: str) -> bool:
    """Whether PostgreSQL can store (and so compare) ``text``: no NUL, no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def resource_not_found(resource: Resource | str | int) -> NotFound:
    """The error for a resource that no row matches (or that the caller may not see)."""
    return tenancy.not_found(resource)


def resource_lookup(resource: Resource | str | int, agent: Agent | None = None) -> dict[str, Any]:
    """The lookup for a resource given as a row, an id or a name; NotFound if none can match.

    A name is looked up as ``agent`` names it (core/tenancy.py): its team's resource, or
    ``owner::name``. Without an agent (operators, tools, tests) a plain name must be
    unique across teams; ``owner::name`` says which team's is meant.
    """
    if isinstance(resource, Resource):
        return {"pk": resource.pk}
    if isinstance(resource, int) and not isinstance(resource, bool):
        return {"pk": resource}
    # Names PostgreSQL cannot store would make it raise rather than find nothing.
    if not (isinstance(resource, str) and len(resource) <= 2 * NAME_MAX_LENGTH + 2):
        raise resource_not_found(resource)
    if not storable_text(resource):
        raise resource_not_found(resource)
    team, name = tenancy.split_name(resource)
    if team is not None:
        return {"owner_name": (team, name)}
    if agent is not None:
        return {"team_name": (agent.team_id, name)}
    ids = list(Resource.objects.filter(name=name).values_list("pk", flat=True)[:2])
    if not ids:
        raise resource_not_found(resource)
    if len(ids) > 1:
        raise Invalid(
            "ambiguous_name",
            f"several teams have a resource named {name!r}: name it team{TEAM_SEPARATOR}name",
        )
    return {"pk": ids[0]}


def lookup_filter(lookup: dict[str, Any]) -> Q:
    """:func:`resource_lookup`'s lookup as an ORM filter on Resource."""
    ((key, value),) = lookup.items()
    if key == "team_name":
        return Q(team_id=value[0], name=value[1])
    if key == "owner_name":
        return Q(team__name=value[0], name=value[1])
    return Q(**lookup)


def resources_named(agent: Agent, resource: str) -> QuerySet[Resource] | None:
    """The resource ``agent`` names ``resource`` (its team's, or ``owner::name``), as a
    queryset to filter other rows by (``lock__resource__in=``); None for a name no
    resource can have. Never the resource of another team with the same plain name."""
    try:
        lookup = resource_lookup(resource, agent)
    except NotFound:
        return None
    return Resource.objects.filter(lookup_filter(lookup)).values("pk")


def resource_for_update(
    resource: Resource | str | int, agent: Agent | None = None, need: str = tenancy.WRITE
) -> tuple[Resource, datetime]:
    """Lock a resource given as a row, an id or a name (as ``agent`` names it), and
    check that ``agent`` may act on it as ``need`` says; return it with the clock."""
    try:
        res, now = lock_resource_with_clock(**resource_lookup(resource, agent))
    except Resource.DoesNotExist:
        raise resource_not_found(resource) from None
    tenancy.authorize(agent, res, need, asked=resource)
    return res, now


class Queue:
    """The live locks and waiting requests of one resource, read once.

    Caller holds the Resource row lock for as long as it uses this object.
    Creating it marks leases that ran out as expired (with their Events).
    """

    def __init__(self, resource: Resource, now: datetime, rows: list[tuple] | None = None) -> None:
        self.resource = resource
        self.now = now
        rows, self._waiting, self.waiting_elsewhere = sql.load_queue(resource, rows)
        self.expired = [lock for lock in rows if lock.expires_at <= now]
        self.live = [lock for lock in rows if lock.expires_at > now]
        # A path's folders above, or a folder's paths under it (core/paths.py): their live
        # locks count as this resource's too. Read behind the team's path lock.
        self.is_path = paths.is_path(resource.name)
        self.covering = paths.covering_locks(resource, now) if self.is_path else []
        for lock in self.expired:
            sql.end_lock(lock, end=LockEnd.EXPIRED, now=max(now, lock.acquired_at))
            self._uncovered()
            event_emit(
                "lock.expired",
                agent=lock.agent,
                actor="system",
                subject=lock,
                payload=self._payload(lock),
            )

    def _uncovered(self) -> None:
        """A lock of this path ended: the queues it covered may go, after commit."""
        if self.is_path:
            wakeups.PATHS.schedule(self.resource.pk)

    def _payload(self, lock: Lock) -> dict[str, Any]:
        return {
            "resource": self.resource.name,
            "resource_id": self.resource.pk,
            "mode": lock.mode,
            "fence": lock.token,
            "holder": lock.agent.name,
        }

    @property
    def waiting(self) -> list[LockRequest]:
        """The FIFO queue of waiting requests."""
        return self._waiting

    def holding(self, agent_id: int) -> Lock | None:
        return next((lock for lock in self.live if lock.agent_id == agent_id), None)

    def compatible(self, mode: str, agent_id: int | None = None) -> bool:
        """Whether a ``mode`` lock can be granted now beside the live locks, and the
        covering locks of other agents than ``agent_id`` (a path's folders, a folder's
        paths: an agent's own folder lock does not block its files)."""
        covering = [lock for lock in self.covering if lock.agent_id != agent_id]
        if mode == LockMode.EXCLUSIVE:
            return not self.live and not covering
        return all(lock.mode == LockMode.SHARED for lock in [*self.live, *covering])

    def blockers(self, mode: str, agent_id: int) -> list[Lock]:
        """The locks that keep a ``mode`` lock of ``agent_id`` from being granted now:
        live ones here, then covering ones of other agents."""
        covering = [lock for lock in self.covering if lock.agent_id != agent_id]
        found = [lock for lock in [*self.live, *covering] if lock.agent_id != agent_id]
        if mode == LockMode.EXCLUSIVE:
            return found
        return [lock for lock in found if lock.mode == LockMode.EXCLUSIVE]

    def grant(
        self,
        agent: Agent,
        mode: str,
        ttl: int,
        *,
        actor: str | None = None,
        lock_set: int | None = None,
        waited: float | None = None,
    ) -> Lock:
        """Create a live lock (of the lock set ``lock_set``, if any), for a request that
        ``waited`` seconds in the queue if it did. Caller checked compatibility."""
        res = self.resource
        if mode == LockMode.EXCLUSIVE:  # the fence bumped in the same statement
            lock = sql.grant_exclusive(
                res, agent_id=agent.pk, ttl=ttl, now=self.now, lock_set_id=lock_set
            )
        else:
            lock = Lock.objects.create(
                resource=res,
                agent=agent,
                mode=mode,
                token=res.fence,
                acquired_at=self.now,
                expires_at=self.now + timedelta(seconds=ttl),
                lock_set_id=lock_set,
            )
        lock.agent, lock.resource = agent, res
        self.live.append(lock)
        payload = {**self._payload(lock), "expires_at": lock.expires_at.isoformat()}
        if waited is not None:
            payload["waited"] = round(waited, 6)
        event_emit("lock.granted", agent=agent, actor=actor, subject=lock, payload=payload)
        return lock

    def end(self, lock: Lock, end: str, **emit: Any) -> None:
        """End a live lock (released, revoked, force-released)."""
        sql.end_lock(lock, end=end, now=self.now)
        self.live = [other for other in self.live if other.pk != lock.pk]
        self._uncovered()
        kind = {
            LockEnd.RELEASED: "lock.released",
            LockEnd.REVOKED: "lock.revoked",
            LockEnd.FORCE_RELEASED: "lock.force_released",
        }[end]
        event_emit(kind, subject=lock, payload=self._payload(lock), **emit)

    def withdraw(
        self, request: LockRequest, status: str, reason: str, *, ends_set: bool = True, **emit: Any
    ) -> LockRequest:
        """End a waiting request (cancelled, or aborted as a deadlock victim).

        The caller grants the waiters that can go afterwards (``grant_waiters``):
        a withdrawn head may have been blocking them. The request of a lock set ends
        the set too (:func:`end_lock_set`), unless the set itself lets it go
        (``ends_set=False``: it queues elsewhere instead).
        """
        request.status, request.resolved_at, request.reason = status, self.now, reason[:500]
        LockRequest.objects.filter(pk=request.pk).update(
            status=status, resolved_at=self.now, reason=request.reason
        )
        self._waiting = [other for other in self._waiting if other.pk != request.pk]
        event_emit(
            "request.aborted" if status == RequestStatus.ABORTED else "request.cancelled",
            subject=request,
            payload={
                "resource": self.resource.name,
                "agent": request.agent.name,
                "reason": request.reason,
            },
            **emit,
        )
        if request.lock_set_id is not None and ends_set:
            end_lock_set(request.lock_set_id, status, request.reason, **emit)
        return request

    def bump_fence(self) -> None:
        """Invalidate every token issued so far (the former holder's writes fail)."""
        self.resource.fence += 1
        Resource.objects.filter(pk=self.resource.pk).update(fence=self.resource.fence)

    def grant_waiters(self) -> list[LockRequest]:
        """Grant the queue's head requests that are now compatible, FIFO.

        The agents of granted requests are woken after commit.
        """
        granted: list[LockRequest] = []
        for request in list(self.waiting):
            if not self.compatible(request.mode, request.agent_id):
                break
            lock = self.grant(
                request.agent, request.mode, request.ttl, actor="system",
                lock_set=request.lock_set_id,
                waited=max(0.0, (self.now - request.requested_at).total_seconds()),
            )  # fmt: skip
            request.status = RequestStatus.GRANTED
            request.lock = lock
            request.resolved_at = self.now
            LockRequest.objects.filter(pk=request.pk).update(
                status=request.status, lock=lock, resolved_at=self.now
            )
            self.waiting.remove(request)
            granted.append(request)
            if request.lock_set_id is not None:  # the set goes on (its agent waits for all)
                wakeups.LOCK_SETS.schedule(request.lock_set_id)
            else:
                wakeups.schedule(agent_id=request.agent_id, step_id=request.step_id, reason="lock")
        return granted

    def settle(self) -> list[LockRequest]:
        """After expiries, grant whoever can go now. Returns the granted requests.
        (A path's waiters may also go because a covering lock ended.)"""
        if self.expired or not self.live or self.is_path:
            return self.grant_waiters()
        return []


def lock_queue(**lookup: Any) -> Queue:
    """Lock a resource row (``lookup`` as for ``lock_resource_with_clock``) and read
    its queue, in one round trip. Raises Resource.DoesNotExist."""
    return Queue(*lock_resource_then(sql.QUEUE, **lookup))


def open_queue(
    resource: Resource | str | int, agent: Agent | None = None, need: str = tenancy.WRITE
) -> Queue:
    """Lock the resource row (named as ``agent`` names it), check that ``agent`` may
    act on it as ``need`` says (before anything is written), expire its leases and
    grant freed waiters."""
    try:
        queue = lock_queue(**resource_lookup(resource, agent))
    except Resource.DoesNotExist:
        raise resource_not_found(resource) from None
    tenancy.authorize(agent, queue.resource, need, asked=resource)
    queue.settle()
    return queue


@service
def _settle_queue(resource_id: int) -> int:
    """Grant the waiters of one resource that can go now (in a transaction of its own)."""
    return len(lock_queue(pk=resource_id).grant_waiters())


def settle_related(resource_id: int) -> None:
    """After commit: a path's lock ended, so the queues of the folders above it and of
    the paths under it may go (core/paths.py). Each in its own transaction; the
    monitor's sweep retries what fails here."""
    resource = Resource.objects.filter(pk=resource_id).only("pk", "team_id", "name").first()
    if resource is None:
        return
    for related_id in paths.related_waiting(resource):
        try:
            _settle_queue(related_id)
        except Exception:
            logger.exception("settling the queue of resource %s failed", related_id)


wakeups.PATHS.register(settle_related)


def end_lock_set(lock_set_id: int, status: str, reason: str, **emit: Any) -> bool:
    """Mark a waiting lock set ended (cancelled, aborted), wake its agent, and release
    what it holds after commit (core/lock_sets.py). Called where its request is
    withdrawn, under that resource's row lock, or after the last Resource row lock a
    transaction takes. True if it was waiting."""
    ended = LockSet.objects.filter(pk=lock_set_id, status=RequestStatus.WAITING).update(
        status=status, resolved_at=db_now(), reason=reason[:500]
    )
    if not ended:
        return False
    lock_set = LockSet.objects.select_related("agent").get(pk=lock_set_id)
    names = lock_set.resources.order_by("pk").values_list("name", flat=True)
    emit.setdefault("agent", lock_set.agent)
    event_emit(
        "lockset.ended",
        subject=lock_set,
        payload={"resources": list(names), "status": status, "reason": lock_set.reason},
        **emit,
    )
    wakeups.schedule(agent_id=lock_set.agent_id, step_id=lock_set.step_id, reason=status)
    wakeups.LOCK_SETS.schedule(lock_set_id)
    return True


def revoke(queue: Queue, lock: Lock, *, user: User = None) -> None:
    """End a live lock to break a deadlock, bumping the fence. Caller holds the row lock."""
    queue.end(
        lock,
        LockEnd.REVOKED,
        user=user,
        team=lock.agent.team_id,
        agent=lock.agent if user is None else None,
    )
    queue.bump_fence()
