"""The client's lock cycle in two requests, against daphne: the grant says the value
and version (``lock.value``, ``lock.version``), and ``lock.write(..., release=True)``
releases the lock with the write, on the server and here (its renewals stop, a later
release is a no-op); a refused write keeps the lock, renewed as before."""

from __future__ import annotations

import asyncio
import threading

import pytest
from orchestrator_client import AsyncClient, Client, LeaseLost, VersionConflict
from orchestrator_client.errors import ApprovalPending

from orchestrator.core.models import Conflict, ConflictKind, Lock, LockEnd, Resource
from orchestrator.core.resources import resource_create
from tests.client.conftest import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def lease_lost_conflicts() -> int:
    """Renewing a lock that has ended records one: no renewal may follow a release."""
    return Conflict.objects.filter(kind=ConflictKind.LEASE_LOST).count()


def test_a_write_with_release_ends_the_lock_and_the_waiter_is_granted_the_new_value(live, agents):
    resource_create(team=agents.team, name="counter", value=41)
    _, holder_token = agents.make("holder")
    _, waiter_token = agents.make("waiter")
    with Client(live, holder_token) as holder, Client(live, waiter_token) as waiter:
        lock = holder.lock("counter", ttl=3).acquire()
        assert (lock.value, lock.version) == (41, 0)  # no read needed
        got: dict = {}
        queued = threading.Thread(
            target=lambda: got.setdefault("lock", waiter.lock("counter", timeout=30).acquire())
        )
        queued.start()
        eventually(lambda: waiter.whoami()["waits"], "the waiter to queue")

        assert lock.write(lock.value + 1, expected_version=lock.version, release=True) == 1

        assert (lock.released, lock.held) == (True, False)
        eventually(lambda: not lock._thread.is_alive(), "the renewal thread to stop")
        lock.release()  # a no-op: nothing is sent
        with pytest.raises(LeaseLost):
            lock.write(99)
        queued.join(timeout=30)
        granted = got["lock"]
        assert (granted.value, granted.version) == (42, 1)
        assert granted.fence == lock.fence + 1
        granted.release()
    assert Lock.objects.get(pk=lock.id).end == LockEnd.RELEASED
    assert lease_lost_conflicts() == 0


def test_a_refused_write_keeps_the_lock_and_its_renewals(live, agents):
    resource_create(team=agents.team, name="doc", value=0)
    resource_create(team=agents.team, name="budget", value=100, requires_approval=True)
    _, token = agents.make("writer")
    with Client(live, token) as client:
        with client.lock("doc", ttl=3) as lock:
            assert lock.write(1, expected_version=0) == 1
            with pytest.raises(VersionConflict):
                lock.write(2, expected_version=0, release=True)
            assert lock.held and lock._thread.is_alive()
            assert lock.write(2, expected_version=1) == 2  # still the holder
        with client.lock("budget") as lock:
            with pytest.raises(ApprovalPending):
                lock.write(90, expected_version=0, release=True)
            assert lock.held  # the approval re-checks the fence: the lock stays
    assert Resource.objects.get(team=agents.team, name="doc").version == 2
    assert not Lock.objects.filter(agent__team=agents.team, released_at__isnull=True).exists()
    assert lease_lost_conflicts() == 0


def test_a_lock_of_a_set_released_with_its_write_is_no_longer_renewed(live, agents):
    for name in ("a", "b"):
        resource_create(team=agents.team, name=name, value=0)
    _, token = agents.make("mover")
    with Client(live, token) as client, client.lock_set(["a", "b"], ttl=1) as held:
        assert [(lock.value, lock.version) for lock in held.locks] == [(0, 0), (0, 0)]
        assert held["a"].write(1, expected_version=0, release=True) == 1
        assert held.held
        # Renewals of the rest go on (the set renews every ~0.33 s) without "a".
        b = Lock.objects.get(pk=held["b"].id)
        eventually(lambda: Lock.objects.get(pk=b.pk).expires_at > b.expires_at, "b's renewal")
        assert lease_lost_conflicts() == 0
        with pytest.raises(LeaseLost):
            held["a"].write(2)  # released: nothing is sent
        assert held["b"].write(1, expected_version=0, release=True) == 1
        assert held.released  # every lock of it ended with a write
    assert not Lock.objects.filter(agent__team=agents.team, released_at__isnull=True).exists()
    assert lease_lost_conflicts() == 0


def test_the_async_twin_releases_with_the_write(live, agents):
    resource_create(team=agents.team, name="doc", value=5)
    _, token = agents.make("async")

    async def scenario() -> None:
        async with AsyncClient(live, token) as client:
            lock = await client.lock("doc", ttl=1).acquire()
            assert (lock.value, lock.version) == (5, 0)
            written = await lock.write(lock.value + 1, expected_version=lock.version, release=True)
            assert written == 1 and lock.released
            assert lock._task.done()
            await lock.release()  # a no-op
            assert (await client.whoami())["locks"] == []

    asyncio.run(scenario())
    assert lease_lost_conflicts() == 0
