"""Work run inside child processes (see processes.py), and the facts the tests check.

Every function here takes and returns plain, picklable data (ids, names,
counts, datetimes): a child re-reads the rows it needs through its own
database connection, as an RQ job would.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

from orchestrator.core import wakeups
from orchestrator.core.lock_sets import lock_set_acquire, lock_set_advance, lock_set_release
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Agent,
    Lock,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
    ResourceVersion,
    Team,
)
from orchestrator.core.resources import resource_create, resource_read, resource_write
from tests.concurrency.processes import wait_until

# Liveness limits, far above what any step takes on a loaded 2-core machine.
GRANT_TIMEOUT = 60
BARRIER_TIMEOUT = 60
# How long a waiter goes without re-reading its request if no wake-up arrives
# (grants made by a process that does not signal, such as the monitor's).
POLL_INTERVAL = 0.5

_names = itertools.count(1)


def signal_wakeups(wake_events: dict[int, Any] | None) -> None:
    """Make every committed grant in this process set the granted agent's event.

    The core wakes agents through ``wakeups`` after commit, in whichever
    process granted the lock (usually the releaser's); the event carries that
    wake-up to the waiting agent's process, which then re-reads its request.
    """
    if not wake_events:
        return

    def handler(*, agent_id: int, step_id: int | None, reason: str) -> None:
        event = wake_events.get(agent_id)
        if event is not None:
            event.set()

    wakeups.register(handler)


def acquire_exclusive(
    agent: Agent, resource_id: int, *, ttl: int, wake: Any = None
) -> tuple[int, int, bool]:
    """Acquire an exclusive lock, waiting for the grant if queued.

    Returns (lock id, fencing token, whether the request was queued). Waiting
    is a condition wait: the request row is re-read until it is granted,
    right after a wake-up or every POLL_INTERVAL, with a deadline.
    """
    result = lock_acquire(agent=agent, resource=resource_id, ttl=ttl, wait=True)
    if result.status == "granted":
        return result.lock.pk, result.lock.token, False
    if result.status != "waiting":
        raise AssertionError(f"lock_acquire(wait=True) returned {result.status!r}")
    request_id = result.request.pk

    def granted_lock() -> tuple[int, int] | None:
        status, lock_id, token = LockRequest.objects.values_list(
            "status", "lock_id", "lock__token"
        ).get(pk=request_id)
        if status not in (RequestStatus.WAITING, RequestStatus.GRANTED):
            raise AssertionError(f"lock request {request_id} ended as {status}")
        return (lock_id, token) if status == RequestStatus.GRANTED else None

    lock_id, token = wait_until(
        granted_lock,
        timeout=GRANT_TIMEOUT,
        interval=POLL_INTERVAL,
        wake=wake,
        what=f"grant of lock request {request_id}",
    )
    return lock_id, token, True


def counter_setup(*, agents: int, counters: int, prefix: str) -> dict[str, Any]:
    """A team of ``agents`` agents and ``counters`` resources holding 0, and the database kind."""
    team = Team.objects.create(name=f"{prefix}-team-{next(_names)}", default_lease_ttl=30)
    agent_ids = [
        Agent.objects.create(team=team, name=f"{prefix}-agent-{i}-{next(_names)}").pk
        for i in range(agents)
    ]
    resource_ids = [
        resource_create(name=f"{prefix}-counter-{i}-{next(_names)}", value=0, team=team).pk
        for i in range(counters)
    ]
    return {"agent_ids": agent_ids, "resource_ids": resource_ids}


def counter_worker(
    *,
    agent_id: int,
    resource_ids: list[int],
    cycles: int,
    seed: str,
    ttl: int,
    start: Any = None,
    wake_events: dict[int, Any] | None = None,
    release_with_write: bool = False,
) -> dict[str, Any]:
    """Increment randomly chosen counters ``cycles`` times under their exclusive locks.

    Each cycle: acquire (waiting for the grant if queued), read, write
    value+1 naming the version read and the lock's fencing token, release; with
    ``release_with_write`` the write releases the lock (``release=True``), in its own
    transaction. Returns what happened, counted per counter.
    """
    signal_wakeups(wake_events)
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    wake = (wake_events or {}).get(agent_id)
    rng = random.Random(seed)
    picked: Counter[int] = Counter()
    writes: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    queued = 0
    if start is not None:
        start.wait(timeout=BARRIER_TIMEOUT)
    for _ in range(cycles):
        resource_id = rng.choice(resource_ids)
        picked[resource_id] += 1
        lock_id, token, was_queued = acquire_exclusive(agent, resource_id, ttl=ttl, wake=wake)
        queued += was_queued
        state = resource_read(resource=resource_id)
        written = resource_write(
            agent=agent,
            resource=resource_id,
            value=state.resource.value + 1,
            expected_version=state.resource.version,
            fence=token,
            release=release_with_write,
        )
        outcomes[f"write_{written.status}"] += 1
        if written.status == "applied":
            writes[resource_id] += 1
        if release_with_write:
            outcomes[f"released_with_write_{written.released}"] += 1
        else:
            outcomes[f"release_{lock_release(lock_id=lock_id, agent=agent).status}"] += 1
    return {
        "agent_id": agent_id,
        "cycles": cycles,
        "queued": queued,
        "picked": dict(picked),
        "writes": dict(writes),
        "outcomes": dict(outcomes),
    }


def counter_history(*, resource_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per counter: value, version, version history and lock history, as plain data."""
    history = {}
    for resource_id in resource_ids:
        resource = Resource.objects.get(pk=resource_id)
        history[resource_id] = {
            "value": resource.value,
            "version": resource.version,
            "fence": resource.fence,
            "versions": list(
                ResourceVersion.objects.filter(resource_id=resource_id)
                .order_by("version")
                .values_list("version", "value", "fence")
            ),
            "locks": list(
                Lock.objects.filter(resource_id=resource_id)
                .order_by("acquired_at", "pk")
                .values("pk", "mode", "token", "acquired_at", "released_at", "end")
            ),
        }
    return history


def booking_worker(*, agent_id: int, slot_ids: list[int], ttl: int, barrier: Any) -> dict[int, str]:
    """For each slot, start with everyone at the barrier and try to book it.

    Books only with a granted lock (no waiting) on a slot still empty,
    writing the agent's name with the fencing token. Returns per slot:
    booked, busy, already_booked, or write_<status> for a refused write.
    """
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    outcomes = {}
    for slot_id in slot_ids:
        barrier.wait(timeout=BARRIER_TIMEOUT)
        acquired = lock_acquire(agent=agent, resource=slot_id, ttl=ttl, wait=False)
        if acquired.status == "busy":
            outcomes[slot_id] = "busy"
            continue
        if acquired.status != "granted":
            raise AssertionError(f"lock_acquire(wait=False) returned {acquired.status!r}")
        state = resource_read(resource=slot_id)
        if state.resource.value is not None:
            outcomes[slot_id] = "already_booked"
        else:
            written = resource_write(
                agent=agent,
                resource=slot_id,
                value=agent.name,
                expected_version=state.resource.version,
                fence=acquired.lock.token,
            )
            outcomes[slot_id] = (
                "booked" if written.status == "applied" else f"write_{written.status}"
            )
        lock_release(lock_id=acquired.lock.pk, agent=agent)
    return outcomes


def deadlock_requester(
    *, requests: list[tuple[int, int]], ttl: int, barrier: Any
) -> list[dict[str, Any]]:
    """For each (agent, resource), meet the other requester at the barrier, then acquire.

    Returns each acquire's status and the deadlock Conflict its inline check
    reported, if any.
    """
    agents = {
        a.pk: a
        for a in Agent.objects.select_related("team").filter(
            pk__in={agent_id for agent_id, _ in requests}
        )
    }
    results = []
    for agent_id, resource_id in requests:
        barrier.wait(timeout=BARRIER_TIMEOUT)
        acquired = lock_acquire(agent=agents[agent_id], resource=resource_id, ttl=ttl, wait=True)
        results.append(
            {
                "status": acquired.status,
                "request_id": acquired.request.pk if acquired.request else None,
                "deadlock_id": acquired.deadlock.pk if acquired.deadlock else None,
            }
        )
    return results


def event_writer(
    *, agent_id: int, resource_id: int, cycles: int, seed: str, ttl: int, start: Any
) -> int:
    """Run many small services on the agent's own resource; returns how many ran.

    Each cycle acquires (always granted: nobody else uses the resource),
    writes one, two or no times (seeded), and releases: every service emits
    events, and writers never wait for each other's row locks.
    """
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    rng = random.Random(seed)
    services = 0
    start.wait(timeout=BARRIER_TIMEOUT)
    for _ in range(cycles):
        acquired = lock_acquire(agent=agent, resource=resource_id, ttl=ttl, wait=False)
        if acquired.status != "granted":
            raise AssertionError(f"own resource not granted: {acquired.status!r}")
        services += 1
        for _ in range(rng.randint(0, 2)):
            resource_write(
                agent=agent, resource=resource_id, value=rng.random(), fence=acquired.lock.token
            )
            services += 1
        lock_release(lock_id=acquired.lock.pk, agent=agent)
        services += 1
    return services


def acquire_once(*, agent_id: int, resource_id: int, ttl: int) -> dict[str, Any]:
    """One lock_acquire(wait=False); the lock's times as the database recorded them."""
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    acquired = lock_acquire(agent=agent, resource=resource_id, ttl=ttl, wait=False)
    if acquired.status != "granted":
        return {"status": acquired.status}
    lock = Lock.objects.get(pk=acquired.lock.pk)
    return {"status": "granted", "acquired_at": lock.acquired_at, "expires_at": lock.expires_at}


def lock_set_worker(
    *,
    agent_id: int,
    resource_ids: list[int],
    cycles: int,
    seed: str,
    ttl: int,
    start: Any = None,
    wake_events: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """Increment a random two or three of the counters together, ``cycles`` times, under
    one lock set each time, naming them in a random order.

    Each cycle: lock_set_acquire (waiting for the whole set if queued: the set's row
    re-read after a wake-up or every POLL_INTERVAL, with a deadline), then for each
    counter read and write value+1 with the version read and its lock's fence, then
    release the set. Returns what happened, counted per counter, as counter_worker.
    """
    signal_wakeups(wake_events)
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    wake = (wake_events or {}).get(agent_id)
    rng = random.Random(seed)
    picked: Counter[int] = Counter()
    writes: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    queued = 0
    if start is not None:
        start.wait(timeout=BARRIER_TIMEOUT)
    for _ in range(cycles):
        chosen = rng.sample(resource_ids, rng.choice([2, 3]))  # in a random order
        picked.update(chosen)
        result = lock_set_acquire(agent=agent, resources=chosen, ttl=ttl, wait=True)
        if result.status == "waiting":
            queued += 1
            lock_set_id = result.lock_set.pk

            def granted(lock_set_id: int = lock_set_id) -> Any:
                status = LockSet.objects.values_list("status", flat=True).get(pk=lock_set_id)
                if status not in (RequestStatus.WAITING, RequestStatus.GRANTED):
                    raise AssertionError(f"lock set {lock_set_id} ended as {status}")
                if status == RequestStatus.WAITING:
                    return None
                return lock_set_advance(lock_set_id=lock_set_id, agent=agent)

            result = wait_until(
                granted,
                timeout=GRANT_TIMEOUT,
                interval=POLL_INTERVAL,
                wake=wake,
                what=f"grant of lock set {lock_set_id}",
            )
        assert result.status == "granted", result.status
        assert sorted(lock.resource_id for lock in result.locks) == sorted(chosen)
        for lock in result.locks:
            state = resource_read(resource=lock.resource_id)
            written = resource_write(
                agent=agent,
                resource=lock.resource_id,
                value=state.resource.value + 1,
                expected_version=state.resource.version,
                fence=lock.token,
            )
            outcomes[f"write_{written.status}"] += 1
            if written.status == "applied":
                writes[lock.resource_id] += 1
        released = lock_set_release(lock_set_id=result.lock_set.pk, agent=agent)
        outcomes[f"release_{released.status}"] += 1
    return {
        "agent_id": agent_id,
        "cycles": cycles,
        "queued": queued,
        "picked": dict(picked),
        "writes": dict(writes),
        "outcomes": dict(outcomes),
    }


def path_worker(
    *,
    agent_id: int,
    folder_id: int,
    file_ids: list[int],
    cycles: int,
    seed: str,
    ttl: int,
    start: Any = None,
    wake_events: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """Lock the folder (one time in four) or one of the files under it, exclusively,
    ``cycles`` times, waiting when queued; under the lock increment what was locked
    (with its version and fence), then release. Returns the writes per resource."""
    signal_wakeups(wake_events)
    agent = Agent.objects.select_related("team").get(pk=agent_id)
    wake = (wake_events or {}).get(agent_id)
    rng = random.Random(seed)
    writes: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    if start is not None:
        start.wait(timeout=BARRIER_TIMEOUT)
    for _ in range(cycles):
        resource_id = folder_id if rng.random() < 0.25 else rng.choice(file_ids)
        lock_id, token, _queued = acquire_exclusive(agent, resource_id, ttl=ttl, wake=wake)
        state = resource_read(resource=resource_id)
        written = resource_write(
            agent=agent,
            resource=resource_id,
            value=(state.resource.value or 0) + 1,
            expected_version=state.resource.version,
            fence=token,
        )
        outcomes[f"write_{written.status}"] += 1
        writes[resource_id] += written.status == "applied"
        outcomes[f"release_{lock_release(lock_id=lock_id, agent=agent).status}"] += 1
    return {"writes": dict(writes), "outcomes": dict(outcomes)}
