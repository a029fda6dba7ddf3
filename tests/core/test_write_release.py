"""A write with ``release``: the fenced, versioned write and the release of its lock
commit in one transaction (core/resources.py ``resource_write``), so the lock is
released exactly when the write is applied. Real commits on PostgreSQL."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import Invalid
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    ApprovalStatus,
    ConflictPolicy,
    Event,
    Lock,
    LockEnd,
    LockRequest,
    RequestStatus,
    Resource,
)
from orchestrator.core.resources import resource_create, resource_write
from orchestrator.core.selectors import lock_request_with_lock
from tests import factories
from tests.injected import Injected, failing_with

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    return factories.team(default_lease_ttl=30)


@pytest.fixture
def alice(team):
    return factories.agent(team_=team, name="alice")


@pytest.fixture
def bob(team):
    return factories.agent(team_=team, name="bob")


def _live(resource: str):
    return list(Lock.objects.filter(resource__name=resource, released_at__isnull=True))


def test_the_write_and_the_release_commit_together_and_the_waiter_gets_the_new_value(
    team, alice, bob, woken
) -> None:
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock
    queued = lock_acquire(agent=bob, resource="doc")
    assert queued.status == "waiting"

    written = resource_write(
        agent=alice, resource="doc", value=2, expected_version=0, fence=held.token, release=True
    )

    assert (written.status, written.version, written.released) == ("applied", 1, True)
    assert written.lock.pk == held.pk
    held.refresh_from_db()
    assert held.end == LockEnd.RELEASED
    # Bob was granted in the same commit, and his grant reads the value just written.
    request = lock_request_with_lock(queued.request.pk)
    assert request.status == RequestStatus.GRANTED
    assert request.lock.token == held.token + 1
    assert (request.resource.value, request.resource.version) == (2, 1)
    assert {"agent_id": bob.pk, "step_id": None, "reason": "lock"} in woken
    kinds = list(
        Event.objects.filter(kind__in=["resource.written", "lock.released", "lock.granted"])
        .order_by("pk")
        .values_list("kind", flat=True)
    )
    assert kinds[-3:] == ["resource.written", "lock.released", "lock.granted"]
    # Releasing it again is harmless, as after any release.
    assert lock_release(lock_id=held.pk, agent=alice).status == "released"


def test_a_transaction_that_fails_after_the_write_leaves_value_and_lock_unchanged(
    team, alice, bob
) -> None:
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock
    queued = lock_acquire(agent=bob, resource="doc")

    with failing_with("resource.written"), pytest.raises(Injected):
        resource_write(
            agent=alice, resource="doc", value=2, expected_version=0, fence=held.token,
            release=True,
        )  # fmt: skip

    res = Resource.objects.get(name="doc")
    assert (res.value, res.version) == (1, 0)
    assert [lock.pk for lock in _live("doc")] == [held.pk]  # still alice's, still live
    assert LockRequest.objects.get(pk=queued.request.pk).status == RequestStatus.WAITING


def test_a_write_refused_for_a_stale_version_releases_nothing(team, alice, bob) -> None:
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock
    resource_write(agent=alice, resource="doc", value=2, fence=held.token)  # now version 1
    queued = lock_acquire(agent=bob, resource="doc")

    refused = resource_write(
        agent=alice, resource="doc", value=3, expected_version=0, fence=held.token, release=True
    )

    assert (refused.status, refused.released, refused.lock) == ("version_conflict", False, None)
    assert [lock.pk for lock in _live("doc")] == [held.pk]
    assert LockRequest.objects.get(pk=queued.request.pk).status == RequestStatus.WAITING
    # The lock is still the writer's: re-read, and the retry applies and releases.
    again = resource_write(
        agent=alice, resource="doc", value=3, expected_version=1, fence=held.token, release=True
    )
    assert (again.status, again.released) == ("applied", True)
    assert LockRequest.objects.get(pk=queued.request.pk).status == RequestStatus.GRANTED


def test_a_stale_fence_releases_nothing(team, alice, bob) -> None:
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock

    refused = resource_write(
        agent=alice, resource="doc", value=2, fence=held.token + 1, release=True
    )

    assert (refused.status, refused.released) == ("stale_fence", False)
    assert [lock.pk for lock in _live("doc")] == [held.pk]


def test_a_write_that_waits_for_an_approval_keeps_its_lock(team, alice) -> None:
    """The approval re-checks the fence when it is decided: the lock must stay."""
    resource_create(team=team, name="doc", value=1, requires_approval=True)
    held = lock_acquire(agent=alice, resource="doc").lock

    pending = resource_write(
        agent=alice, resource="doc", value=2, expected_version=0, fence=held.token, release=True
    )

    assert (pending.status, pending.released) == ("approval_pending", False)
    assert pending.approval.status == ApprovalStatus.PENDING
    assert [lock.pk for lock in _live("doc")] == [held.pk]


def test_a_version_conflict_for_an_operator_keeps_the_lock(team, alice) -> None:
    team.conflict_policy = ConflictPolicy.ASK_OPERATOR
    team.save(update_fields=["conflict_policy"])
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock
    resource_write(agent=alice, resource="doc", value=2, fence=held.token)

    pending = resource_write(
        agent=alice, resource="doc", value=3, expected_version=0, fence=held.token, release=True
    )

    assert (pending.status, pending.released) == ("approval_pending", False)
    assert [lock.pk for lock in _live("doc")] == [held.pk]


def test_release_without_a_fence_is_refused_naming_the_field(team, alice) -> None:
    resource_create(team=team, name="doc", value=1)

    with pytest.raises(Invalid) as refused:
        resource_write(agent=alice, resource="doc", value=2, release=True)

    assert refused.value.code == "invalid_request"
    assert refused.value.detail.startswith("release: ")
    assert Resource.objects.get(name="doc").version == 0
    with pytest.raises(Invalid) as typed:
        resource_write(agent=alice, resource="doc", value=2, fence=1, release="yes")
    assert typed.value.detail.startswith("release: Input should be a valid boolean")


def test_without_release_the_lock_stays_held(team, alice) -> None:
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock

    written = resource_write(agent=alice, resource="doc", value=2, fence=held.token)

    assert (written.status, written.released) == ("applied", False)
    assert [lock.pk for lock in _live("doc")] == [held.pk]


def test_a_retried_write_found_applied_says_its_lock_was_released(team, alice) -> None:
    """A step retried after its worker died: the first attempt committed the write and
    the release; the retry (same key) finds it and says so, releasing nothing more."""
    resource_create(team=team, name="doc", value=1)
    held = lock_acquire(agent=alice, resource="doc").lock
    first = resource_write(
        agent=alice, resource="doc", value=2, fence=held.token, release=True,
        idempotency_key="step:call",
    )  # fmt: skip

    retried = resource_write(
        agent=alice, resource="doc", value=2, fence=held.token, release=True,
        idempotency_key="step:call",
    )  # fmt: skip

    assert (first.released, retried.status, retried.version) == (True, "applied", 1)
    assert (retried.released, retried.lock.pk) == (True, held.pk)
    assert Event.objects.filter(kind="lock.released", subject_id=held.pk).count() == 1


def test_a_path_lock_released_with_a_write_lets_the_folder_waiter_go(team, alice, bob) -> None:
    """A file's lock covers its folder: a folder waiter goes once the file's lock ends,
    after the commit (core/paths.py), as after lock_release."""
    resource_create(team=team, name="src/app.py", value="v0")
    resource_create(team=team, name="src/", value=None)
    held = lock_acquire(agent=alice, resource="src/app.py").lock
    folder = lock_acquire(agent=bob, resource="src/")
    assert folder.status == "waiting"

    written = resource_write(
        agent=alice, resource="src/app.py", value="v1", fence=held.token, release=True
    )

    assert written.released
    assert LockRequest.objects.get(pk=folder.request.pk).status == RequestStatus.GRANTED
