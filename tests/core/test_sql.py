"""The hand-written writes store what the models say, and the model instances
they hand back match the rows (orchestrator/core/sql.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Event, Lock, Resource, ResourceVersion
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_exclusive_grant_bumps_the_fence_and_takes_it_as_its_token() -> None:
    agent = factories.agent()
    resource = factories.resource(value=0, fence=4)
    now = timezone.now()
    with transaction.atomic():
        lock = sql.grant_exclusive(resource, agent_id=agent.pk, ttl=30, now=now)
    stored = Lock.objects.get(pk=lock.pk)
    fields = [f.attname for f in Lock._meta.concrete_fields]
    assert [getattr(lock, f) for f in fields] == [getattr(stored, f) for f in fields]
    assert (stored.mode, stored.token, stored.end, stored.released_at) == ("exclusive", 5, "", None)
    assert stored.expires_at == now + timedelta(seconds=30)
    assert resource.fence == Resource.objects.get(pk=resource.pk).fence == 5
    assert lock._state.adding is False


def test_a_write_bumps_the_version_and_keeps_the_history() -> None:
    agent = factories.agent()
    resource = factories.resource(value=0)
    value = {"text": "héllo", "n": [1, 2.5, None, True]}
    with transaction.atomic():
        version = sql.write_value(
            resource, value, agent_id=agent.pk, user_id=None, fence=5, now=timezone.now()
        )
    stored = Resource.objects.get(pk=resource.pk)
    assert version == resource.version == stored.version == 1
    assert stored.value == resource.value == value
    history = ResourceVersion.objects.get(resource=resource, version=1)
    assert (history.value, history.agent_id, history.fence) == (value, agent.pk, 5)


def test_ending_a_lock_stores_its_end_and_release_time() -> None:
    agent = factories.agent()
    resource = factories.resource(value=0)
    now = timezone.now()
    with transaction.atomic():
        lock = sql.grant_exclusive(resource, agent_id=agent.pk, ttl=30, now=now)
        other = sql.grant_exclusive(factories.resource(value=0), agent_id=agent.pk, ttl=30, now=now)
        sql.end_lock(lock, end="revoked", now=now + timedelta(seconds=2))
    stored = Lock.objects.get(pk=lock.pk)
    assert (stored.end, stored.released_at) == ("revoked", now + timedelta(seconds=2))
    assert (lock.end, lock.released_at) == (stored.end, stored.released_at)
    assert Lock.objects.get(pk=other.pk).released_at is None  # only the one named


@service
def _emit_three() -> list[Event]:
    return [
        event_emit("step.failed", actor="system", payload={"error": f"{i} é"}) for i in range(3)
    ]


def test_a_services_events_get_increasing_ids_in_the_order_emitted() -> None:
    events = _emit_three()
    ids = [event.pk for event in events]
    assert ids == sorted(ids) and len(set(ids)) == 3
    stored = list(Event.objects.filter(pk__in=ids).order_by("pk"))
    assert [(e.kind, e.payload) for e in stored] == [
        ("step.failed", {"error": f"{i} é"}) for i in range(3)
    ]
    assert all(event.created_at is not None for event in events)
