"""Executing an agent's tool calls through the coordination services.

Every result is a JSON-safe dict for the model: ``ok`` says whether the call
did what was asked; ``status`` ``waiting`` (with ``request_id``, ``lock_set_id``
or ``approval_id``) means the step waits and the result is completed when the
wait ends (:func:`agents.steps.wait_result`). Refusals come back as
``{"ok": false, "error", "detail"}``.

``acquire_all`` takes a lock set (core/lock_sets.py): every lock or none, in one
global order. Each of its locks is an ordinary lock on its resource: a ``write``
finds its fence, and ``release`` names the resource, as after ``acquire``.

A grant (``acquire``, each lock of ``acquire_all``) carries the resource's value and
version, so a cycle needs no ``read``; a ``write`` with ``release`` ends the lock it
is fenced by in the write's own transaction, exactly when the write is applied: a lock
cycle in two commits (acquire; write and release).

Arguments are validated with the tool's operation model (agents/tools.py,
core/operations.py) before anything runs: the same refusal, code and text, as
the HTTP API gives for the same input.

In an unguarded run (``Run.unguarded``) the protocol is bypassed, to show what
goes wrong without it: ``acquire`` and ``acquire_all`` are granted without
locking (fence null; the value and version read as they are), ``release`` answers
released, and ``write`` is applied unconditionally (``resource_write_unguarded``, still
recorded in the history and the event log; with ``release`` it answers released too).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from agents.tools import TOOL_MODELS
from orchestrator.core.lock_sets import lock_set_acquire
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Agent,
    Lock,
    LockEnd,
    LockMode,
    LockSet,
    RequestStatus,
    Resource,
    Run,
    Step,
)
from orchestrator.core.operations import (
    Acquire,
    AcquireSet,
    Finish,
    Operation,
    Read,
    RequestApproval,
    ResourceWrite,
    Write,
    parsed,
)
from orchestrator.core.queue import holder_dict, resources_named
from orchestrator.core.resources import (
    WriteResult,
    approval_request,
    resource_read,
    resource_write,
    resource_write_unguarded,
)
from orchestrator.core.tenancy import qualified_name


def _held(
    agent: Agent, step: Step, resource: str, *, exclusive: bool = False
) -> tuple[int, int | None] | None:
    """(lock id, fence) of the agent's live lock on ``resource``, or None.

    A lock granted earlier in the same step is remembered (no query). If it has
    ended since, the services reject what is done with it (a stale fence), which is
    what happened; otherwise the lock is looked up.

    For a write (``exclusive``) the lock the agent was last granted in this run is
    used even if it ended without the agent releasing it (its lease ran out while
    its worker stalled between steps, or it was revoked or force-released): the
    agent still believes it holds it, so its write carries that token and is
    rejected as a stale fence, never sent unfenced to find the resource free."""
    granted = getattr(step, "_granted", {}).get(resource)
    if granted is not None and (granted[2] == LockMode.EXCLUSIVE or not exclusive):
        return granted[0], granted[1]
    named = resources_named(agent, resource)
    if named is None:  # a name no resource can have: nothing is held
        return None
    locks = Lock.objects.filter(agent=agent, resource__in=named, released_at__isnull=True)
    if exclusive:
        locks = locks.filter(mode=LockMode.EXCLUSIVE)
    found = locks.values_list("pk", "token").first()
    if found is None and exclusive:
        found = _lost_lock(agent, step, named)
    return (found[0], found[1]) if found else None


def _lost_lock(
    agent: Agent, step: Step, named: QuerySet[Resource], *, released: bool = False
) -> tuple[int, int] | None:
    """(lock id, fence) of the agent's latest lock on the resource ``named`` selects in
    this run, if it was exclusive and ended other than by the agent's release (with
    ``released``: ended by its release); else None."""
    started = Run.objects.filter(pk=step.run_id).values("started_at")[:1]
    latest = (
        Lock.objects.filter(agent=agent, resource__in=named, acquired_at__gte=started)
        .order_by("-pk")
        .values_list("pk", "token", "mode", "end")
        .first()
    )
    if latest is None or latest[2] != LockMode.EXCLUSIVE or latest[3] == "":
        return None
    if (latest[3] == LockEnd.RELEASED) != released:
        return None
    return latest[0], latest[1]


def _released_with_write(agent: Agent, step: Step, resource: str) -> int | None:
    """The fence of the agent's lock on ``resource`` if it was released, for a retried
    write with ``release``: the first attempt may have committed the write and the
    release (one transaction) before its worker died, and the write's idempotency key
    finds it only if the write carries that fence. None if there is no such lock."""
    named = resources_named(agent, resource)
    found = _lost_lock(agent, step, named, released=True) if named is not None else None
    return found[1] if found else None


def _remember(step: Step, resource: str, lock: Lock | None) -> None:
    """Remember (or forget) the lock the agent holds on ``resource`` for this step."""
    if not hasattr(step, "_granted"):
        step._granted = {}
    if lock is None:
        step._granted.pop(resource, None)
    else:
        step._granted[resource] = (lock.pk, lock.token, lock.mode)


def granted_lock(resource: str, lock: Lock) -> dict[str, Any]:
    """What a model is told of a lock it was granted on ``resource`` (as it names it):
    with the resource's value and version (``lock.resource``, as read with the grant),
    which count as a read of it."""
    return {
        "resource": resource,
        "mode": lock.mode,
        "fence": lock.token,
        "expires_at": lock.expires_at.isoformat(),
        "version": lock.resource.version,
        "value": lock.resource.value,
    }


def _set_granted(agent: Agent, locks: list[Lock]) -> dict[str, Any]:
    """A granted lock set: its locks in the order they were taken (ascending resource
    id), each resource named as ``agent`` names it."""
    return {
        "ok": True,
        "status": "granted",
        "locks": [granted_lock(qualified_name(agent, lock.resource), lock) for lock in locks],
    }


def _set_ended(lock_set: LockSet) -> dict[str, Any]:
    """A lock set that ended without being granted (cancelled, or aborted as a deadlock
    victim): it released whatever it held."""
    return {"ok": False, "status": lock_set.status, "error": lock_set.status,
            "detail": lock_set.reason}  # fmt: skip


def lock_set_outcome(lock_set_id: int) -> dict[str, Any] | None:
    """The final result of a waiting ``acquire_all``: granted with its locks, or ended
    with the reason; None while the set still waits. Read-only (fit for a service's
    transaction): the set goes on by itself (after the grant's commit, or the monitor)."""
    lock_set = LockSet.objects.select_related("agent").get(pk=lock_set_id)
    if lock_set.status == RequestStatus.WAITING:
        return None
    if lock_set.status != RequestStatus.GRANTED:
        return _set_ended(lock_set)
    latest: dict[int, Lock] = {}  # a lock that ran out while the set waited was taken again
    locks = Lock.objects.filter(lock_set=lock_set).select_related("resource__team")
    for lock in locks:
        if lock.resource_id not in latest or lock.pk > latest[lock.resource_id].pk:
            latest[lock.resource_id] = lock
    return _set_granted(lock_set.agent, [latest[rid] for rid in sorted(latest)])


def _acquire_all(agent: Agent, step: Step, args: AcquireSet) -> dict[str, Any]:
    """``acquire_all``: a lock set, granted now (its locks remembered for the step) or
    waiting (the step waits for the whole set)."""
    result = lock_set_acquire(
        agent=agent, resources=args.resources, mode=args.mode, ttl=args.ttl, wait=True, step=step
    )
    if result.status == "granted":
        answer = _set_granted(agent, result.locks)
        for lock, said in zip(result.locks, answer["locks"], strict=True):
            _remember(step, said["resource"], lock)
        return answer
    if result.status == "waiting":
        return {"ok": True, "status": "waiting", "lock_set_id": result.lock_set.pk,
                "waiting_on": qualified_name(agent, result.waiting_on),
                "held": result.held}  # fmt: skip
    return _set_ended(result.lock_set)


def _write_result(result: WriteResult, *, release: bool = False) -> dict[str, Any]:
    """A write's result for the model; ``release``: the write asked to release its lock
    (an applied one says whether it did; a waiting one says the lock is kept)."""
    if result.status == "applied":
        answer = {"ok": True, "status": "applied", "version": result.version,
                  "released": result.released}  # fmt: skip
        if result.approval is not None:  # approved at once by a standing rule
            answer["detail"] = result.detail
        return answer
    if result.status == "approval_pending":
        detail = "waiting for an operator's approval"
        if release:
            detail += "; your lock is kept until it is decided: release it then"
        return {"ok": True, "status": "waiting", "approval_id": result.approval.pk,
                "detail": detail}  # fmt: skip
    return {"ok": False, "error": result.status, "detail": result.detail}


def _unguarded(step: Step) -> bool:
    """Whether the step's run bypasses the protocol (read once per step object)."""
    if not hasattr(step, "_run_unguarded"):
        step._run_unguarded = Run.objects.filter(pk=step.run_id, unguarded=True).exists()
    return step._run_unguarded


BYPASSED = ("acquire", "acquire_all", "release", "write")


def _execute_unguarded(agent: Agent, args: Operation) -> dict[str, Any]:
    """The unguarded answer to ``acquire``, ``acquire_all``, ``release`` or ``write``."""
    if isinstance(args, AcquireSet):
        names = list(dict.fromkeys(args.resources))
        for name in names:  # a missing one is still an error
            resource_read(resource=name, agent=agent)
        locks = [{"resource": name, "mode": args.mode, "fence": None} for name in names]
        return {"ok": True, "status": "granted", "locks": locks, "unguarded": True}
    if isinstance(args, Acquire):
        # A missing one is still an error; the value and version are read as they are.
        res = resource_read(resource=args.resource, agent=agent).resource
        return {"ok": True, "status": "granted", "resource": args.resource, "mode": args.mode,
                "fence": None, "version": res.version, "value": res.value,
                "unguarded": True}  # fmt: skip
    if isinstance(args, Write):
        written = resource_write_unguarded(
            agent=agent, resource=args.resource, value=args.value,
            base_version=args.expected_version,
        )  # fmt: skip
        written.released = args.release  # as a release answers released: there is no lock
        return _write_result(written)
    return {"ok": True, "status": "released", "unguarded": True}


def execute(
    agent: Agent, step: Step, name: str, arguments: dict[str, Any], *, key: str = ""
) -> dict[str, Any]:
    """Run one tool call as ``agent`` in ``step``. Raises ProtocolError for refusals,
    Invalid (core/operations.py) for arguments that do not fit the tool's model.

    ``key`` makes a write idempotent: a retried call returns the earlier result."""
    model = TOOL_MODELS.get(name)
    if model is None:
        return {"ok": False, "error": "unknown_tool", "detail": f"there is no tool named {name!r}"}
    args = parsed(model, arguments)
    if isinstance(args, Finish):
        return {"ok": True, "status": "finished", "summary": args.summary[:2000]}
    if name in BYPASSED and _unguarded(step):
        return _execute_unguarded(agent, args)
    if isinstance(args, AcquireSet):
        return _acquire_all(agent, step, args)
    resource = args.resource
    if isinstance(args, Acquire):
        result = lock_acquire(
            agent=agent, resource=resource, mode=args.mode, ttl=args.ttl, wait=True, step=step
        )
        if result.status == "granted":
            _remember(step, resource, result.lock)
            return {"ok": True, "status": "granted", **granted_lock(resource, result.lock)}
        return {"ok": True, "status": "waiting", "request_id": result.request.pk,
                "holders": [h["agent"] for h in result.holders]}  # fmt: skip
    if isinstance(args, Read):
        state = resource_read(resource=resource, agent=agent)
        return {
            "ok": True,
            "value": state.resource.value,
            "version": state.resource.version,
            "fence": state.resource.fence,
            "holders": [holder_dict(lock) for lock in state.holders],
            "waiters": [{"agent": r.agent.name, "mode": r.mode} for r in state.waiters],
        }
    if isinstance(args, ResourceWrite):  # write or request_approval
        held = _held(agent, step, resource, exclusive=True)
        fence = held[1] if held is not None else None
        if isinstance(args, RequestApproval):
            written = approval_request(
                agent=agent, resource=resource, value=args.value,
                expected_version=args.expected_version, fence=fence, step=step, note=args.note,
            )  # fmt: skip
            return _write_result(written)
        if args.release and fence is None and step.attempts != 1:
            fence = _released_with_write(agent, step, resource)
        if args.release and fence is None:  # the runtime gives the fence: none is held
            return {"ok": False, "error": "not_holder",
                    "detail": f"you hold no exclusive lock on {resource} to release with "
                              "this write: acquire it first"}  # fmt: skip
        written = resource_write(
            agent=agent, resource=resource, value=args.value,
            expected_version=args.expected_version, fence=fence, step=step,
            idempotency_key=key, key_may_exist=step.attempts != 1, release=args.release,
        )  # fmt: skip
        if written.released:
            _remember(step, resource, None)  # it ended with the write, as after release
        return _write_result(written, release=args.release)
    # release: the tool that is left
    held = _held(agent, step, resource)
    if held is None:
        return {"ok": False, "error": "not_holder", "detail": f"you hold no lock on {resource}"}
    _remember(step, resource, None)
    outcome = lock_release(lock_id=held[0], agent=agent)
    if outcome.status == "released":
        return {"ok": True, "status": "released"}
    return {"ok": False, "error": "lease_lost", "detail": f"the lock had {outcome.reason}"}
