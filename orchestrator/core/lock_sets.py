"""Lock sets: several resources locked all or nothing, in one global order.

Protocol (DESIGN.md, "Lock sets take several resources all or nothing in one
global order"):

* A set's resources are taken one at a time in ascending resource id, the same
  order for every set. A waiting set holds a prefix of its resources and waits
  on one, the first it does not hold, through an ordinary LockRequest in that
  resource's FIFO queue (so the deadlock detector and the dashboard see it like
  any wait). A set waits only for resources above everything it holds, so sets
  can never wait on each other in a cycle. (With agents that lock one resource
  at a time in their own order, a cycle is still possible; the detector breaks
  it, and a set chosen as the victim ends and releases what it held.)
* Every transaction here locks the Resource rows it looks at in ascending id,
  and touches the LockSet row only after the last Resource row it locks, as
  every other path that touches a LockSet row does (a withdrawn request, under
  its resource's row lock): transactions cannot deadlock in PostgreSQL either.
* When the set's request is granted (another agent released, a lease ran out),
  the granting transaction may hold higher rows, so it cannot go on taking the
  set's next rows in order: the set goes on after that transaction commits, in
  a fresh one (:func:`lock_set_advance`), scheduled on commit (queue.py), and
  again on every poll of its agent and every pass of the monitor. Advancing is
  idempotent.
* The agent sees the set only as a whole: ``granted`` with every lock, each
  lease running ``ttl`` from that moment; ``waiting``; or ended (``cancelled``
  by its agent or an operator, ``aborted`` as a deadlock victim, with the
  reason). With ``wait=False`` every row is locked first, and the set is
  granted at once or the answer is ``busy`` with nothing queued or taken.
* While the set waits, each call of its agent (asking again, polling) renews
  the leases of the locks it holds; an abandoned set's locks run out like any
  other. A lock of the set that ran out while it waited is taken again in
  order: the set first gives up what it holds above it, so it always holds a
  prefix.
* A lock the agent already holds on one of the resources (compatible with the
  set's mode) becomes the set's lock: asking for a set granted already returns
  the same locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import reduce
from operator import or_
from typing import Any

from orchestrator.core import paths, tenancy, wakeups
from orchestrator.core.errors import Conflicting, Forbidden, Invalid, NotFound
from orchestrator.core.events import event_emit, service
from orchestrator.core.locks import open_deadlock_check
from orchestrator.core.models import (
    Agent,
    Conflict,
    Lock,
    LockEnd,
    LockMode,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
    Step,
)
from orchestrator.core.operations import MAX_LOCK_SET, AcquireSet, checked
from orchestrator.core.queue import (
    Queue,
    db_now,
    end_lock_set,
    holder_dict,
    lock_queue,
    lookup_filter,
    resource_lookup,
)
from orchestrator.core.rowlocks import lock_set_status
from orchestrator.core.types import User

logger = logging.getLogger(__name__)

ENDED = (RequestStatus.CANCELLED, RequestStatus.ABORTED)


@dataclass
class LockSetResult:
    status: str  # "granted" | "waiting" | "busy" | "cancelled" | "aborted"
    lock_set: LockSet | None = None
    # Granted: the locks in ascending resource id, each with its resource as of the grant.
    locks: list[Lock] = field(default_factory=list)
    waiting_on: Resource | None = None  # waiting: the resource the set is queued for
    held: int = 0  # waiting: how many of its resources the set holds meanwhile
    busy: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # busy: holders
    deadlock: Conflict | None = None


# --- naming the resources ---------------------------------------------------------------


def _resolve(agent: Agent, names: list[Any], need: str) -> list[tuple[Resource, str]]:
    """The resources ``agent`` names (each once, by the first name given for it), in
    ascending id, each with that name; NotFound or Forbidden before anything is locked."""
    lookups = [(name, resource_lookup(name, agent)) for name in names]
    rows = list(
        Resource.objects.filter(reduce(or_, (lookup_filter(lookup) for _, lookup in lookups)))
        .select_related("team")
        .defer("value")
    )
    found: dict[int, tuple[Resource, str]] = {}
    for name, lookup in lookups:
        ((key, value),) = lookup.items()
        res = next((row for row in rows if _matches(row, key, value)), None)
        if res is None:
            raise tenancy.not_found(name)
        tenancy.authorize(agent, res, need, asked=name)
        found.setdefault(res.pk, (res, name))
    return [found[pk] for pk in sorted(found)]


def _refuse_overlaps(named: list[tuple[Resource, str]]) -> None:
    """Invalid if the set names a folder and a path under it (of one team)."""
    for team_id in {res.team_id for res, _ in named}:
        mine = {res.name: asked for res, asked in named if res.team_id == team_id}
        covered = paths.overlapping(list(mine))
        if covered is not None:
            folder, path = covered
            raise Invalid(
                "overlapping_paths",
                f"{mine[path]} is under the folder {mine[folder]}: the folder's lock "
                "covers it, so name the folder only",
            )


def _matches(row: Resource, key: str, value: Any) -> bool:
    if key == "pk":
        return row.pk == value
    if key == "team_name":
        return (row.team_id, row.name) == tuple(value)
    return (row.team.name, row.name) == tuple(value)  # owner_name


def _references(resources: Any) -> list[Any]:
    """Rows and ids (from the core's own callers) as they are; names (from the doors)
    validated as AcquireSet's, with the same refusals."""
    if (
        isinstance(resources, list | tuple)
        and 0 < len(resources) <= MAX_LOCK_SET
        and all(_is_row_or_id(item) for item in resources)
    ):
        return [item.pk if isinstance(item, Resource) else item for item in resources]
    return checked(AcquireSet, resources=resources)["resources"]


def _is_row_or_id(item: Any) -> bool:
    return isinstance(item, Resource) or (isinstance(item, int) and not isinstance(item, bool))


# --- the service -----------------------------------------------------------------------


@service
def lock_set_acquire(
    *,
    agent: Agent,
    resources: list[Any],
    mode: str = LockMode.EXCLUSIVE,
    ttl: Any = None,
    wait: bool = True,
    step: Step | None = None,
) -> LockSetResult:
    """Lock every resource of ``resources`` for ``agent``, all or nothing.

    Granted at once, or queued as one set (``waiting``: poll it with
    :func:`lock_set_advance`), or, with ``wait=False``, ``busy`` with nothing
    taken. A refusal (a resource not found, not shared for this mode, a wait that
    overlaps one the agent has already) leaves nothing locked or queued.
    """
    fields = checked(AcquireSet, mode=mode, ttl=ttl)
    mode = fields["mode"]
    ttl = fields["ttl"] or agent.team.default_lease_ttl
    named = _resolve(agent, _references(resources), tenancy.need_for_mode(mode))
    ids = [res.pk for res, _ in named]
    names = {res.pk: name for res, name in named}
    _refuse_overlaps(named)
    paths.lock_paths_of(ids)  # before the first row lock (core/paths.py)
    same = _waiting_set(agent, ids, mode)
    if same is not None:  # asked again while waiting: the same set, advanced
        return _advance(same, ids, by_agent=True)
    if not wait:
        return _all_at_once(agent, ids, names, mode, ttl, step)
    waits = LockRequest.objects.filter(agent=agent, status=RequestStatus.WAITING)
    other_sets = LockSet.objects.filter(agent=agent, status=RequestStatus.WAITING)
    overlap = (
        waits.filter(resource_id__in=ids).exists() or other_sets.filter(resources__in=ids).exists()
    )
    if overlap:
        raise Conflicting(
            "already_waiting",
            "you already wait for one of these resources (a lock request or another lock "
            "set): wait for it, or cancel it, before asking for a lock set with it",
        )
    lock_set = LockSet.objects.create(
        agent=agent, mode=mode, ttl=ttl, step=step, requested_at=db_now()
    )
    lock_set.resources.set(ids)
    lock_set.agent = agent
    return _advance(lock_set, ids, by_agent=True, created=True)


def _waiting_set(agent: Agent, ids: list[int], mode: str) -> LockSet | None:
    """The agent's waiting set of exactly these resources in this mode, if any."""
    for lock_set in LockSet.objects.filter(
        agent=agent, status=RequestStatus.WAITING, mode=mode
    ).prefetch_related("resources"):
        if sorted(res.pk for res in lock_set.resources.all()) == ids:
            lock_set.agent = agent
            return lock_set
    return None


def _all_at_once(
    agent: Agent, ids: list[int], names: dict[int, str], mode: str, ttl: int, step: Step | None
) -> LockSetResult:
    """wait=False: lock every row (ascending), then grant them all or answer busy."""
    queues = []
    busy: dict[str, list[dict[str, Any]]] = {}
    for rid in ids:
        queue = lock_queue(pk=rid)
        queue.settle()
        queues.append(queue)
        mine = queue.holding(agent.pk)
        if mine is not None:
            _check_upgrade(mine, mode)
        elif not (queue.compatible(mode, agent.pk) and not queue.waiting):
            busy[names[rid]] = [holder_dict(lock) for lock in queue.blockers(mode, agent.pk)]
    if busy:
        return LockSetResult("busy", busy=busy)
    lock_set = LockSet.objects.create(
        agent=agent, mode=mode, ttl=ttl, step=step, requested_at=queues[0].now
    )
    lock_set.resources.set(ids)
    lock_set.agent = agent
    held = [(queue, _take(queue, lock_set)) for queue in queues]
    _renew(lock_set, held)
    return _granted(lock_set, held, wake=False)  # its agent has the answer


def _check_upgrade(lock: Lock, mode: str) -> None:
    if lock.mode == LockMode.SHARED and mode == LockMode.EXCLUSIVE:
        raise Invalid(
            "upgrade_not_supported",
            f"you hold a shared lock on {lock.resource.name}; release it before asking for "
            "an exclusive lock set with it",
        )


def _take(queue: Queue, lock_set: LockSet) -> Lock:
    """The set's lock on the queue's resource: the agent's own lock there (adopted), or
    a new grant. Caller checked that one of them can be had."""
    agent = lock_set.agent
    mine = queue.holding(agent.pk)
    if mine is None:
        return queue.grant(agent, lock_set.mode, lock_set.ttl, lock_set=lock_set.pk)
    if mine.lock_set_id != lock_set.pk:
        mine.lock_set_id = lock_set.pk
        Lock.objects.filter(pk=mine.pk).update(lock_set=lock_set.pk)
    return mine


def _advance(
    lock_set: LockSet, ids: list[int], *, by_agent: bool, created: bool = False
) -> LockSetResult:
    """Take the set's resources in ascending id as far as they can be had now, queue at
    the first that cannot, or complete the set. Inside a service."""
    held: list[tuple[Queue, Lock]] = []
    for index, rid in enumerate(ids):
        queue = lock_queue(pk=rid)
        queue.settle()  # may grant the set's own request here
        mine = queue.holding(lock_set.agent_id)
        if mine is not None:
            if mine.mode == LockMode.SHARED and lock_set.mode == LockMode.EXCLUSIVE:
                if created:
                    _check_upgrade(mine, lock_set.mode)
                return _end_here(lock_set, f"holds a shared lock on {queue.resource.name}")
            held.append((queue, _take(queue, lock_set)))
            continue
        request = _own_request(queue, lock_set)
        if (
            request is None
            and queue.compatible(lock_set.mode, lock_set.agent_id)
            and not queue.waiting
        ):
            held.append((queue, _take(queue, lock_set)))
            continue
        return _wait_here(lock_set, queue, request, held, ids, index, by_agent=by_agent)
    _renew(lock_set, held)  # every lease from now (the Lock rows before the set's row)
    if not _still_waiting(lock_set):
        return _as_it_stands(lock_set, ids)
    return _granted(lock_set, held, wake=not by_agent)


def _own_request(queue: Queue, lock_set: LockSet) -> LockRequest | None:
    """The set's waiting request on the queue's resource, if any. A request its agent
    queued there alone, while the set waited below, becomes the set's (an agent waits
    at most once per resource)."""
    request = next((r for r in queue.waiting if r.agent_id == lock_set.agent_id), None)
    if request is not None and request.lock_set_id != lock_set.pk:
        request.lock_set_id = lock_set.pk
        LockRequest.objects.filter(pk=request.pk).update(lock_set=lock_set.pk)
    return request


def _as_it_stands(lock_set: LockSet, ids: list[int]) -> LockSetResult:
    """A set that another transaction granted or ended while this one advanced it."""
    if lock_set.status == RequestStatus.GRANTED:
        return _as_granted(lock_set, ids)
    return _ended(lock_set)


def _still_waiting(lock_set: LockSet) -> bool:
    """Lock the set's row (after the Resource rows: see the module docstring) and
    read whether it still waits: a withdrawn request may have ended it meanwhile."""
    status, reason = lock_set_status(lock_set.pk)
    lock_set.status, lock_set.reason = status, reason
    return status == RequestStatus.WAITING


def _wait_here(
    lock_set: LockSet,
    queue: Queue,
    request: LockRequest | None,
    held: list[tuple[Queue, Lock]],
    ids: list[int],
    index: int,
    *,
    by_agent: bool,
) -> LockSetResult:
    """The set cannot have ``queue``'s resource (``ids[index]``) now: give up what it
    holds or waits for above it (a lock that ran out below made it so), queue here
    unless it is queued already, and renew what it holds if its agent is asking."""
    _let_go_above(lock_set, ids[index + 1 :])
    if by_agent and held:
        _renew(lock_set, held)
    if not _still_waiting(lock_set):
        return _as_it_stands(lock_set, ids)
    agent = lock_set.agent
    deadlock = None
    if request is None:
        request = LockRequest.objects.create(
            resource=queue.resource,
            agent=agent,
            mode=lock_set.mode,
            ttl=lock_set.ttl,
            step_id=lock_set.step_id,
            requested_at=queue.now,
            lock_set=lock_set,
        )
        event_emit(
            "lock.waiting",
            agent=agent,
            subject=request,
            payload={
                "resource": queue.resource.name,
                "resource_id": queue.resource.pk,
                "mode": lock_set.mode,
                "holders": [lock.agent.name for lock in queue.blockers(lock_set.mode, agent.pk)],
                "ahead": len(queue.waiting),
                "lock_set": lock_set.pk,
            },
        )
        deadlock = open_deadlock_check(agent, queue)
        queue.waiting.append(request)
    return LockSetResult(
        "waiting",
        lock_set=lock_set,
        waiting_on=queue.resource,
        held=len(held),
        deadlock=deadlock,
    )


def _let_go_above(lock_set: LockSet, above: list[int]) -> None:
    """Release the set's locks and withdraw its requests on the resources ``above``
    (ascending, each under its row lock): the set must hold a prefix only."""
    if not above:
        return
    touched = set(
        Lock.objects.filter(
            lock_set=lock_set, released_at__isnull=True, resource_id__in=above
        ).values_list("resource_id", flat=True)
    ) | set(
        LockRequest.objects.filter(
            lock_set=lock_set, status=RequestStatus.WAITING, resource_id__in=above
        ).values_list("resource_id", flat=True)
    )
    for rid in sorted(touched):
        queue = lock_queue(pk=rid)
        _let_go(queue, lock_set, "the lock set lost an earlier lock and queues for it again")
        queue.grant_waiters()


def _let_go(queue: Queue, lock_set: LockSet, reason: str) -> None:
    """End the set's lock and request on one resource (row locked). No grants."""
    for request in [r for r in queue.waiting if r.lock_set_id == lock_set.pk]:
        queue.withdraw(
            request, RequestStatus.CANCELLED, reason, agent=request.agent, actor="system",
            ends_set=False,
        )  # fmt: skip
    for lock in [lock for lock in queue.live if lock.lock_set_id == lock_set.pk]:
        queue.end(lock, LockEnd.RELEASED, agent=lock.agent, actor="system")


def _renew(lock_set: LockSet, held: list[tuple[Queue, Lock]]) -> None:
    """Every held lock's lease runs ``ttl`` from now (each row is locked); those granted
    before this transaction say so in a lock.renewed event (the dashboard shows leases)."""
    began, now = held[0][0].now, held[-1][0].now
    expires = now + timedelta(seconds=lock_set.ttl)
    Lock.objects.filter(pk__in=[lock.pk for _, lock in held]).update(expires_at=expires)
    for queue, lock in held:
        lock.expires_at = expires
        if lock.acquired_at >= began:
            continue  # granted just now: its lock.granted event says when it expires
        event_emit(
            "lock.renewed",
            agent=lock_set.agent,
            subject=lock,
            payload={
                "resource": queue.resource.name,
                "resource_id": queue.resource.pk,
                "expires_at": expires.isoformat(),
            },
        )


def _granted(lock_set: LockSet, held: list[tuple[Queue, Lock]], *, wake: bool) -> LockSetResult:
    """Every resource is held, every lease renewed from now: the set is granted. Its
    agent is woken after commit with ``wake`` (unless it is the one asking, it waits)."""
    now = held[-1][0].now
    lock_set.status, lock_set.resolved_at = RequestStatus.GRANTED, now
    LockSet.objects.filter(pk=lock_set.pk).update(status=lock_set.status, resolved_at=now)
    locks = []
    for queue, lock in held:
        lock.resource = queue.resource
        locks.append(lock)
    event_emit(
        "lockset.granted",
        agent=lock_set.agent,
        subject=lock_set,
        payload={
            "resources": [lock.resource.name for lock in locks],
            "mode": lock_set.mode,
            "expires_at": locks[0].expires_at.isoformat(),
        },
    )
    if wake:
        wakeups.schedule(agent_id=lock_set.agent_id, step_id=lock_set.step_id, reason="lock")
    return LockSetResult("granted", lock_set=lock_set, locks=locks)


def _end_here(lock_set: LockSet, why: str) -> LockSetResult:
    """Abort a waiting set that can no longer be granted; what it held is let go."""
    if _still_waiting(lock_set):
        end_lock_set(lock_set.pk, RequestStatus.ABORTED, why, agent=lock_set.agent)
        lock_set.status, lock_set.reason = RequestStatus.ABORTED, why
    return _ended(lock_set)


def _ended(lock_set: LockSet) -> LockSetResult:
    """A set that ended: what it still holds is released after commit."""
    wakeups.LOCK_SETS.schedule(lock_set.pk)
    return LockSetResult(lock_set.status, lock_set=lock_set)


# --- going on after commit, ending ---------------------------------------------------


def continue_lock_set(lock_set_id: int) -> None:
    """After commit: advance a waiting set, or release what an ended set still holds.
    Never raises (the monitor's sweep tries again)."""
    try:
        lock_set_advance(lock_set_id=lock_set_id)
    except Exception:
        logger.exception("continuing lock set %s failed", lock_set_id)


wakeups.LOCK_SETS.register(continue_lock_set)


@service
def lock_set_advance(
    *, lock_set_id: int, agent: Agent | None = None, user: User = None
) -> LockSetResult:
    """Go on with a set: take what it can have now, or, if it ended, release what it
    still holds. ``agent`` is its agent asking (only it may; its held leases are renewed
    while it waits); None for the system. Idempotent."""
    lock_set = LockSet.objects.select_related("agent__team").filter(pk=lock_set_id).first()
    if lock_set is None or (agent is not None and lock_set.agent_id != agent.pk):
        if lock_set is not None and agent is not None:
            raise Forbidden("not_your_lock_set", "this lock set belongs to another agent")
        raise NotFound("lock_set_not_found", f"no lock set with id {lock_set_id}")
    ids = list(lock_set.resources.order_by("pk").values_list("pk", flat=True))
    paths.lock_paths_of(ids)  # before the first row lock (core/paths.py)
    if lock_set.status == RequestStatus.WAITING:
        return _advance(lock_set, ids, by_agent=agent is not None)
    if lock_set.status in ENDED:  # a request it still has is withdrawn too
        _release_held(lock_set, ids, user=user, withdraw=f"the lock set was {lock_set.status}")
        return LockSetResult(lock_set.status, lock_set=lock_set)
    return _as_granted(lock_set, ids)


def _release_held(
    lock_set: LockSet, ids: list[int], *, user: User = None, withdraw: str = ""
) -> int:
    """Release every live lock of the set (ascending, each under its row lock), and with
    ``withdraw`` (the reason) its waiting request too, without ending the set; grant the
    waiters behind. Returns how many locks were released."""
    touched = set(
        Lock.objects.filter(lock_set=lock_set, released_at__isnull=True).values_list(
            "resource_id", flat=True
        )
    )
    if withdraw:
        touched |= set(
            LockRequest.objects.filter(lock_set=lock_set, status=RequestStatus.WAITING).values_list(
                "resource_id", flat=True
            )
        )
    released = 0
    for rid in [rid for rid in ids if rid in touched]:
        queue = lock_queue(pk=rid)
        for request in [r for r in queue.waiting if withdraw and r.lock_set_id == lock_set.pk]:
            queue.withdraw(
                request, RequestStatus.CANCELLED, withdraw, agent=None if user else lock_set.agent,
                team=lock_set.agent.team_id, user=user, ends_set=False,
            )  # fmt: skip
        for lock in [lock for lock in queue.live if lock.lock_set_id == lock_set.pk]:
            queue.end(
                lock, LockEnd.RELEASED, agent=lock.agent, user=user,
                actor=None if user else "system",
            )  # fmt: skip
            released += 1
        queue.grant_waiters()
    return released


def _as_granted(lock_set: LockSet, ids: list[int]) -> LockSetResult:
    """A granted set as it stands: its locks (live or since ended), with their resources."""
    locks = list(
        Lock.objects.filter(lock_set=lock_set)
        .select_related("resource")
        .order_by("resource_id", "-pk")
    )
    latest = {lock.resource_id: lock for lock in reversed(locks)}
    for lock in latest.values():
        lock.agent = lock_set.agent
    return LockSetResult(
        "granted", lock_set=lock_set, locks=[latest[rid] for rid in ids if rid in latest]
    )


@service
def lock_set_release(*, lock_set_id: int, agent: Agent | None, user: User = None) -> LockSetResult:
    """Give up a set: a waiting one is cancelled, a granted one's live locks are
    released; both free their resources for the waiters behind. Idempotent."""
    lock_set = LockSet.objects.select_related("agent__team").filter(pk=lock_set_id).first()
    if lock_set is None:
        raise NotFound("lock_set_not_found", f"no lock set with id {lock_set_id}")
    if agent is not None and lock_set.agent_id != agent.pk:
        raise Forbidden("not_your_lock_set", "this lock set belongs to another agent")
    ids = list(lock_set.resources.order_by("pk").values_list("pk", flat=True))
    paths.lock_paths_of(ids)  # before the first row lock (core/paths.py)
    by = "an operator" if user is not None else "its agent"
    _release_held(lock_set, ids, user=user, withdraw=f"lock set cancelled by {by}")
    # The set's row last, after every Resource row (the module docstring says why).
    if lock_set.status == RequestStatus.WAITING and end_lock_set(
        lock_set.pk, RequestStatus.CANCELLED, f"cancelled by {by}", user=user
    ):
        lock_set.status = RequestStatus.CANCELLED
    lock_set.refresh_from_db(fields=["status", "reason", "resolved_at"])
    return LockSetResult(lock_set.status, lock_set=lock_set)


def lock_sets_to_continue() -> list[int]:
    """The sets the monitor should go on with: waiting ones that queue nowhere (their
    request was granted, or withdrawn without ending them), and ended ones that still
    hold a live lock (their after-commit release was lost)."""
    queued = LockRequest.objects.filter(status=RequestStatus.WAITING, lock_set__isnull=False)
    stuck = LockSet.objects.filter(status=RequestStatus.WAITING).exclude(
        pk__in=queued.values("lock_set_id")
    )
    holding = LockSet.objects.filter(status__in=ENDED, locks__released_at__isnull=True).values_list(
        "pk", flat=True
    )
    return sorted(set(stuck.values_list("pk", flat=True)) | set(holding))


def lock_set_resources(lock_set: LockSet) -> list[Resource]:
    """The set's resources in the order they are taken (ascending id), with their teams
    (for naming them as its agent does: tenancy.qualified_name)."""
    return list(lock_set.resources.select_related("team").defer("value").order_by("pk"))


def lock_set_when_decided(*, lock_set_id: int, agent: Agent, timeout: float) -> LockSetResult:
    """:func:`lock_set_poll` waited for in this thread."""
    return lock_set_poll(lock_set_id=lock_set_id, agent=agent, timeout=timeout).wait()


def lock_set_poll(
    *, lock_set_id: int, agent: Agent, timeout: float
) -> wakeups.LongPoll[LockSetResult]:
    """The long poll of a lock set: :func:`lock_set_advance` as ``agent`` now (its held
    leases renewed), then, while the set still waits, for up to ``timeout`` seconds, the
    set is advanced again after a wake-up, or when a read of its status, at least every
    second, finds it moved (``wakeups.LongPoll``)."""

    def again(result: LockSetResult, woken: bool) -> LockSetResult:
        moved = LockSet.objects.filter(pk=lock_set_id).exclude(status=RequestStatus.WAITING)
        return lock_set_advance(lock_set_id=lock_set_id) if woken or moved.exists() else result

    return wakeups.LongPoll(
        agent.pk,
        timeout,
        lock_set_advance(lock_set_id=lock_set_id, agent=agent),
        waiting=lambda result: result.status == RequestStatus.WAITING,
        again=again,
        watch=wakeups.Watch(lock_sets_moved, lock_set_id),
    )


def lock_sets_moved(lock_set_ids: list[int]) -> list[int]:
    """Those of ``lock_set_ids`` that no longer wait (granted or ended)."""
    ended = LockSet.objects.filter(pk__in=lock_set_ids).exclude(status=RequestStatus.WAITING)
    return list(ended.values_list("pk", flat=True))
