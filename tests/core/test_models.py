"""The database itself rejects states the protocol must never reach."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from orchestrator.core.models import (
    Conflict,
    Lock,
    LockRequest,
    Resource,
    Team,
)
from tests import factories

pytestmark = pytest.mark.django_db


def make_lock(resource: Resource, agent, *, mode: str = "exclusive", token: int = 1, **kw) -> Lock:
    now = timezone.now()
    return Lock.objects.create(
        resource=resource,
        agent=agent,
        mode=mode,
        token=token,
        acquired_at=kw.pop("acquired_at", now),
        expires_at=kw.pop("expires_at", now + timedelta(seconds=30)),
        **kw,
    )


def rejected(make) -> bool:
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


def test_two_live_exclusive_locks_on_one_resource_fail_at_the_database() -> None:
    res = factories.resource()
    team = factories.team()
    first, second = factories.agent(team_=team), factories.agent(team_=team)
    make_lock(res, first, token=1)
    assert rejected(lambda: make_lock(res, second, token=2))
    # Released history does not count: a new holder is fine once the old lock is released.
    Lock.objects.filter(resource=res).update(released_at=F("acquired_at"), end="released")
    make_lock(res, second, token=2)
    assert Lock.objects.filter(resource=res, released_at__isnull=True).count() == 1


def test_shared_locks_coexist_but_not_twice_for_one_agent() -> None:
    res = factories.resource()
    team = factories.team()
    a, b = factories.agent(team_=team), factories.agent(team_=team)
    make_lock(res, a, mode="shared", token=1)
    make_lock(res, b, mode="shared", token=1)
    assert rejected(lambda: make_lock(res, a, mode="shared", token=1))


def test_exclusive_fencing_tokens_are_unique_per_resource() -> None:
    res = factories.resource()
    a = factories.agent()
    now = timezone.now()
    make_lock(res, a, token=7, acquired_at=now, released_at=now, end="released")
    assert rejected(lambda: make_lock(res, a, token=7))


def test_lock_checks() -> None:
    res = factories.resource()
    a = factories.agent()
    now = timezone.now()
    assert rejected(lambda: make_lock(res, a, token=0))
    assert rejected(lambda: make_lock(res, a, acquired_at=now, expires_at=now))
    assert rejected(lambda: make_lock(res, a, acquired_at=now, released_at=now))  # no end given
    assert rejected(lambda: make_lock(res, a, end="released"))  # an end but never released


def test_resource_version_and_fence_cannot_go_negative() -> None:
    res = factories.resource()
    assert rejected(lambda: Resource.objects.filter(pk=res.pk).update(version=-1))
    assert rejected(lambda: Resource.objects.filter(pk=res.pk).update(fence=-1))


def test_names_are_unique() -> None:
    team, other = factories.team(), factories.team()
    factories.resource(name="doc", team=team)
    assert rejected(lambda: factories.resource(name="doc", team=team))
    factories.resource(name="doc", team=other)  # unique within a team, not across teams
    factories.team(name="blue")
    assert rejected(lambda: factories.team(name="blue"))
    factories.agent(name="ann")
    assert rejected(lambda: factories.agent(name="ann"))


def test_one_waiting_request_per_agent_and_resource() -> None:
    res = factories.resource()
    a = factories.agent()
    now = timezone.now()

    def request(**kw):
        return LockRequest.objects.create(
            resource=res, agent=a, mode="exclusive", ttl=30, requested_at=now, **kw
        )

    request()
    assert rejected(request)
    assert rejected(lambda: request(status="cancelled"))  # resolved without resolved_at
    request(status="cancelled", resolved_at=now)
    assert rejected(lambda: request(status="granted", resolved_at=now))  # granted needs a lock


def test_one_open_conflict_per_key_and_resolution_consistency() -> None:
    Conflict.objects.create(kind="deadlock", key="1>2>1")
    assert rejected(lambda: Conflict.objects.create(kind="deadlock", key="1>2>1"))
    Conflict.objects.create(kind="stale_fence")  # no key: any number may be open
    Conflict.objects.create(kind="stale_fence")
    assert rejected(lambda: Conflict.objects.create(kind="deadlock", status="resolved"))


def test_team_lease_ttl_range() -> None:
    assert rejected(lambda: Team.objects.create(name="zero", default_lease_ttl=0))
