"""The lock manager on PostgreSQL, with real commits (single process; see test_concurrency)."""

from __future__ import annotations

import time

import pytest
from django.db.models import F
from django.utils import timezone

from orchestrator.core.errors import Forbidden, Invalid
from orchestrator.core.locks import (
    lock_acquire,
    lock_force_release,
    lock_release,
    lock_renew,
    lock_request_cancel,
)
from orchestrator.core.models import (
    Conflict,
    Event,
    Lock,
    LockEnd,
    LockRequest,
    RequestStatus,
)
from orchestrator.core.resources import resource_create, resource_read, resource_write
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    return factories.team(default_lease_ttl=30)


@pytest.fixture
def agents(team):
    return [factories.agent(team_=team, name=f"a{i}") for i in range(5)]


def test_exclusive_acquire_write_release_bumps_fence_and_version(agents) -> None:
    a = agents[0]
    resource_create(team=agents[0].team, name="doc", value={"text": ""})
    first = lock_acquire(agent=a, resource="doc")
    assert first.status == "granted"
    assert first.lock.token == 1
    written = resource_write(
        agent=a, resource="doc", value={"text": "hi"}, expected_version=0, fence=1
    )
    assert (written.status, written.version) == ("applied", 1)
    assert lock_release(lock_id=first.lock.pk, agent=a).status == "released"
    second = lock_acquire(agent=a, resource="doc")
    assert second.lock.token == 2
    kinds = list(Event.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == [
        "resource.created",
        "lock.granted",
        "resource.written",
        "lock.released",
        "lock.granted",
    ]


def test_acquire_is_idempotent_for_the_holder_and_the_waiter(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r")
    held = lock_acquire(agent=a, resource="r")
    again = lock_acquire(agent=a, resource="r")
    assert again.lock.pk == held.lock.pk
    queued = lock_acquire(agent=b, resource="r")
    assert lock_acquire(agent=b, resource="r").request.pk == queued.request.pk
    assert LockRequest.objects.filter(status="waiting").count() == 1


def test_fifo_grants_on_release_and_wakeups_after_commit(agents, woken) -> None:
    a, b, c = agents[:3]
    resource_create(team=agents[0].team, name="r")
    held = lock_acquire(agent=a, resource="r")
    rb = lock_acquire(agent=b, resource="r")
    rc = lock_acquire(agent=c, resource="r")
    assert (rb.status, rc.status) == ("waiting", "waiting")
    assert (
        lock_acquire(agent=factories.agent(team_=a.team), resource="r", wait=False).status == "busy"
    )
    lock_release(lock_id=held.lock.pk, agent=a)
    rb.request.refresh_from_db()
    rc.request.refresh_from_db()
    assert rb.request.status == RequestStatus.GRANTED
    assert rc.request.status == RequestStatus.WAITING
    assert rb.request.lock.token == 2
    assert [w["agent_id"] for w in woken] == [b.pk]


def test_shared_locks_and_writer_priority(agents) -> None:
    r1, r2, writer, late = agents[:4]
    resource_create(team=agents[0].team, name="r")
    s1 = lock_acquire(agent=r1, resource="r", mode="shared")
    s2 = lock_acquire(agent=r2, resource="r", mode="shared")
    assert (s1.status, s2.status) == ("granted", "granted")
    w = lock_acquire(agent=writer, resource="r", mode="exclusive")
    assert w.status == "waiting"
    # A reader arriving after the queued writer waits behind it (no writer starvation).
    later = lock_acquire(agent=late, resource="r", mode="shared")
    assert later.status == "waiting"
    lock_release(lock_id=s1.lock.pk, agent=r1)
    w.request.refresh_from_db()
    assert w.request.status == RequestStatus.WAITING
    lock_release(lock_id=s2.lock.pk, agent=r2)
    w.request.refresh_from_db()
    later.request.refresh_from_db()
    assert w.request.status == RequestStatus.GRANTED
    assert later.request.status == RequestStatus.WAITING
    lock_release(lock_id=w.request.lock_id, agent=writer)
    later.request.refresh_from_db()
    assert later.request.status == RequestStatus.GRANTED


def test_expired_lease_is_free_and_the_stale_writer_is_fenced_off(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="slot", value=None)
    old = lock_acquire(agent=a, resource="slot", ttl=1)
    Lock.objects.filter(pk=old.lock.pk).update(
        acquired_at=timezone.now() - timezone.timedelta(seconds=5),
        expires_at=timezone.now() - timezone.timedelta(seconds=1),
    )
    new = lock_acquire(agent=b, resource="slot")
    assert new.status == "granted"
    assert new.lock.token == old.lock.token + 1
    assert resource_write(agent=b, resource="slot", value="b", fence=new.lock.token).version == 1
    stale = resource_write(agent=a, resource="slot", value="a", fence=old.lock.token)
    assert stale.status == "stale_fence"
    assert stale.conflict.kind == "stale_fence"
    assert resource_read(resource="slot").resource.value == "b"
    old.lock.refresh_from_db()
    assert old.lock.end == LockEnd.EXPIRED
    assert lock_renew(lock_id=old.lock.pk, agent=a).status == "lost"
    assert lock_release(lock_id=old.lock.pk, agent=a).status == "lost"
    assert Conflict.objects.get(kind="lease_lost").occurrences == 2  # one conflict, counted


def test_unfenced_write_under_someone_elses_lock_is_refused(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r", value=1)
    lock_acquire(agent=a, resource="r")
    result = resource_write(agent=b, resource="r", value=2)
    assert result.status == "not_holder"
    assert resource_read(resource="r").resource.value == 1


def test_release_of_another_agents_lock_is_forbidden(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r")
    held = lock_acquire(agent=a, resource="r")
    with pytest.raises(Forbidden):
        lock_release(lock_id=held.lock.pk, agent=b)
    with pytest.raises(Forbidden):
        lock_renew(lock_id=held.lock.pk, agent=b)


def test_renew_extends_the_lease(agents) -> None:
    a = agents[0]
    resource_create(team=agents[0].team, name="r")
    held = lock_acquire(agent=a, resource="r", ttl=5)
    renewed = lock_renew(lock_id=held.lock.pk, agent=a, ttl=600)
    assert renewed.status == "renewed"
    assert renewed.lock.expires_at > held.lock.expires_at


def test_force_release_bumps_the_fence_and_grants_the_next(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r")
    held = lock_acquire(agent=a, resource="r")
    waiting = lock_acquire(agent=b, resource="r")
    user = factories.superuser("ops")
    lock_force_release(lock_id=held.lock.pk, user=user)
    waiting.request.refresh_from_db()
    assert waiting.request.status == RequestStatus.GRANTED
    assert waiting.request.lock.token == 3  # 1 (a), 2 (bump), 3 (b)
    event = Event.objects.get(kind="lock.force_released")
    assert event.actor == "user:ops"
    assert resource_write(agent=a, resource="r", value=1, fence=1).status == "stale_fence"


def test_cancel_a_waiting_request(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r")
    lock_acquire(agent=a, resource="r")
    waiting = lock_acquire(agent=b, resource="r")
    with pytest.raises(Forbidden):
        lock_request_cancel(request_id=waiting.request.pk, agent=a)
    cancelled = lock_request_cancel(request_id=waiting.request.pk, agent=b)
    assert cancelled.status == RequestStatus.CANCELLED


def test_cancelling_a_resolved_request_still_grants_behind_a_lapsed_lease(agents) -> None:
    # Found by tests/properties: cancelling a request that was already granted marked
    # the lapsed lease on its resource expired but left the waiter behind it queued
    # until the next sweep (a lease running out grants in the same transaction).
    a, b, c = agents[:3]
    resource_create(team=agents[0].team, name="r")
    first = lock_acquire(agent=a, resource="r")
    queued = lock_acquire(agent=b, resource="r")
    lock_release(lock_id=first.lock.pk, agent=a)
    queued.request.refresh_from_db()
    assert queued.request.status == RequestStatus.GRANTED
    waiting = lock_acquire(agent=c, resource="r")
    Lock.objects.filter(pk=queued.request.lock_id).update(
        expires_at=F("acquired_at") + timezone.timedelta(microseconds=1)
    )
    assert lock_request_cancel(request_id=queued.request.pk, agent=b).status == "granted"
    assert Lock.objects.get(pk=queued.request.lock_id).end == LockEnd.EXPIRED
    waiting.request.refresh_from_db()
    assert waiting.request.status == RequestStatus.GRANTED


def test_bad_input_is_refused_before_anything_is_written(agents) -> None:
    a = agents[0]
    resource_create(team=agents[0].team, name="r")
    before = Event.objects.count()
    for kwargs in ({"mode": "weird"}, {"ttl": 0}, {"ttl": "5"}, {"ttl": 10**9}):
        with pytest.raises(Invalid):
            lock_acquire(agent=a, resource="r", **kwargs)
    assert Event.objects.count() == before
    assert not Lock.objects.exists()


def test_lease_really_expires_with_time(agents) -> None:
    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r")
    lock_acquire(agent=a, resource="r", ttl=1)
    deadline = time.monotonic() + 5
    while lock_acquire(agent=b, resource="r", wait=False).status != "granted":
        assert time.monotonic() < deadline, "lease did not expire"
        time.sleep(0.05)


def test_the_hand_written_queue_read_matches_the_orm(agents) -> None:
    from orchestrator.core.models import Resource
    from orchestrator.core.sql import load_queue

    a, b, c, d = agents[:4]
    resource_create(team=agents[0].team, name="r")
    lock_acquire(agent=a, resource="r", mode="shared")
    lock_acquire(agent=b, resource="r", mode="shared")
    lock_acquire(agent=c, resource="r", mode="exclusive")
    lock_acquire(agent=d, resource="r", mode="shared")
    # b also waits on another resource, held by a; d waits only here.
    resource_create(team=agents[0].team, name="s")
    lock_acquire(agent=a, resource="s")
    lock_acquire(agent=b, resource="s")
    res = Resource.objects.get(name="r")
    locks, waiting, waiting_elsewhere = load_queue(res)
    assert waiting_elsewhere == {b.pk}
    orm_locks = list(Lock.objects.filter(resource=res, released_at__isnull=True).order_by("pk"))
    orm_waiting = list(LockRequest.objects.filter(resource=res, status="waiting").order_by("pk"))
    fields = [f.attname for f in Lock._meta.concrete_fields]
    assert [[getattr(x, f) for f in fields] for x in locks] == [
        [getattr(x, f) for f in fields] for x in orm_locks
    ]
    fields = [f.attname for f in LockRequest._meta.concrete_fields]
    assert [[getattr(x, f) for f in fields] for x in waiting] == [
        [getattr(x, f) for f in fields] for x in orm_waiting
    ]
    assert [x.agent.name for x in locks] == [a.name, b.name]
    assert [(x.agent.name, x.agent.team_id) for x in waiting] == [
        (c.name, c.team_id),
        (d.name, d.team_id),
    ]


def test_the_hand_written_request_read_matches_the_orm(agents, django_assert_num_queries) -> None:
    from orchestrator.core.models import Resource
    from orchestrator.core.selectors import lock_request_with_lock

    a, b = agents[:2]
    resource_create(team=agents[0].team, name="r", value={"n": 1})
    held = lock_acquire(agent=a, resource="r").lock
    waiting = lock_acquire(agent=b, resource="r").request

    def same(got, want, model) -> None:
        for field in model._meta.concrete_fields:
            assert getattr(got, field.attname) == getattr(want, field.attname), field.name

    with django_assert_num_queries(1):
        queued = lock_request_with_lock(waiting.pk)
        assert queued.lock is None and queued.resource.value == {"n": 1}
    same(queued, LockRequest.objects.get(pk=waiting.pk), LockRequest)

    lock_release(lock_id=held.pk, agent=a)
    with django_assert_num_queries(1):  # resource and lock come with it
        granted = lock_request_with_lock(waiting.pk)
        assert granted.lock.resource is granted.resource
    expected = LockRequest.objects.select_related("lock", "resource").get(pk=waiting.pk)
    same(granted, expected, LockRequest)
    same(granted.lock, expected.lock, Lock)
    same(granted.resource, expected.resource, Resource)
    assert lock_request_with_lock(10**9) is None


def test_reads_do_not_wait_for_the_row_lock(agents) -> None:
    import threading

    from django.db import connections, transaction

    from orchestrator.core.rowlocks import lock_resource

    res = resource_create(team=agents[0].team, name="r", value=1)
    locked, release, ended = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            lock_resource(res.pk)
            locked.set()
            release.wait(10)
        ended.set()
        connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        state = resource_read(resource="r")
        assert not ended.is_set(), "the read waited for the row lock"
        assert (state.resource.value, state.resource.version) == (1, 0)
    finally:
        release.set()
        holder.join(10)


def test_a_write_with_an_idempotency_key_is_applied_once(agents) -> None:
    from orchestrator.core.models import ResourceVersion

    a = agents[0]
    resource_create(team=agents[0].team, name="r", value=0)
    first = resource_write(agent=a, resource="r", value=1, expected_version=0, idempotency_key="k")
    again = resource_write(agent=a, resource="r", value=1, expected_version=0, idempotency_key="k")
    assert (first.status, first.version) == ("applied", 1)
    assert (again.status, again.version, again.detail) == ("applied", 1, "already applied")
    assert ResourceVersion.objects.filter(resource__name="r").count() == 2
    other = resource_write(agent=a, resource="r", value=2, expected_version=1, idempotency_key="j")
    assert other.version == 2
