"""The hand-written statements do what the ORM calls they replace do."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from orchestrator.core import hotpath
from orchestrator.core.models import Event, Lock, Resource, ResourceVersion
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def run_both(monkeypatch, make):
    """Run ``make(resource)`` with the SQL path and with the ORM path; return both rows."""
    results = []
    for sql in (True, False):
        monkeypatch.setattr(hotpath, "_postgresql", lambda sql=sql: sql)
        resource = factories.resource(value=0, fence=4)
        ResourceVersion.objects.create(resource=resource, version=0, value=0)
        with transaction.atomic():
            results.append((resource, make(resource)))
    return results


def lock_row(lock: Lock) -> tuple:
    stored = Lock.objects.get(pk=lock.pk)
    fields = ["agent_id", "mode", "token", "acquired_at", "expires_at", "released_at", "end"]
    assert [getattr(lock, f) for f in fields] == [getattr(stored, f) for f in fields]
    return tuple(getattr(stored, f) for f in fields)


@pytest.mark.parametrize("mode", ["exclusive", "shared"])
def test_grant_lock(monkeypatch, mode: str) -> None:
    agent = factories.agent()
    now = timezone.now()
    (r1, l1), (r2, l2) = run_both(
        monkeypatch,
        lambda res: hotpath.grant_lock(res, agent_id=agent.pk, mode=mode, ttl=30, now=now),
    )
    assert lock_row(l1) == lock_row(l2)
    expected = 5 if mode == "exclusive" else 4
    assert l1.token == l2.token == expected
    assert l1.expires_at == now + timedelta(seconds=30)
    assert r1.fence == r2.fence == Resource.objects.get(pk=r1.pk).fence == expected
    assert Resource.objects.get(pk=r2.pk).fence == expected


def test_end_lock(monkeypatch) -> None:
    agent = factories.agent()
    now = timezone.now()

    def grant_and_end(res):
        lock = hotpath.grant_lock(res, agent_id=agent.pk, mode="exclusive", ttl=30, now=now)
        hotpath.end_lock(lock, end="released", now=now + timedelta(seconds=1))
        return lock

    (_, l1), (_, l2) = run_both(monkeypatch, grant_and_end)
    assert lock_row(l1) == lock_row(l2)
    assert l1.end == "released"


def test_write_value(monkeypatch) -> None:
    agent = factories.agent()
    now = timezone.now()
    value = {"text": "héllo", "n": [1, 2.5, None, True]}
    (r1, v1), (r2, v2) = run_both(
        monkeypatch,
        lambda res: hotpath.write_value(
            res, value, agent_id=agent.pk, user_id=None, fence=5, now=now
        ),
    )
    assert v1 == v2 == 1
    for res in (r1, r2):
        stored = Resource.objects.get(pk=res.pk)
        assert (stored.value, stored.version, res.version) == (value, 1, 1)
        history = ResourceVersion.objects.get(resource=res, version=1)
        assert (history.value, history.agent_id, history.fence) == (value, agent.pk, 5)


def test_insert_events(monkeypatch) -> None:
    for sql in (True, False):
        monkeypatch.setattr(hotpath, "_postgresql", lambda sql=sql: sql)
        events = [
            Event(kind=f"k{i}", actor="system", subject_type="x", subject_id=i, payload={"i": i})
            for i in range(3)
        ]
        with transaction.atomic():
            hotpath.insert_events(events, timezone.now())
        stored = list(Event.objects.filter(pk__in=[e.pk for e in events]).order_by("pk"))
        assert [(e.kind, e.payload) for e in stored] == [(f"k{i}", {"i": i}) for i in range(3)]
        assert [e.pk for e in events] == [e.pk for e in stored]
