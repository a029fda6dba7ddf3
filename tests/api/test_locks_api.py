"""/api/v1/locks and /api/v1/lock-requests over HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from orchestrator.core.locks import lock_request_cancel
from orchestrator.core.models import Lock, LockEnd, LockRequest
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

LOCK_KEYS = {"id", "resource", "mode", "fence", "expires_at", "version", "value"}


def expire(lock_id: int) -> None:
    """Move a lease into the past, as if its holder had stalled past its TTL."""
    past = timezone.now() - timedelta(hours=1)
    Lock.objects.filter(pk=lock_id).update(
        acquired_at=past - timedelta(seconds=30), expires_at=past
    )


@pytest.fixture
def doc(alice) -> str:
    assert alice.create("doc", "v0").status_code == 201
    return "doc"


def test_acquire_grants_a_lock_with_its_fencing_token(alice, doc) -> None:
    before = timezone.now()

    response = alice.acquire(doc, mode="exclusive", ttl=60, wait=False)

    assert response.status_code == 201
    body = response.json()
    assert set(body) == LOCK_KEYS
    assert (body["resource"], body["mode"], body["fence"]) == ("doc", "exclusive", 1)
    expires_at = parse_datetime(body["expires_at"])
    assert before + timedelta(seconds=55) < expires_at < timezone.now() + timedelta(seconds=65)
    assert Lock.objects.get(pk=body["id"]).agent == alice.agent


def test_acquire_uses_the_team_lease_by_default(alice, doc) -> None:
    body = alice.acquire(doc).json()

    lock = Lock.objects.get(pk=body["id"])
    assert lock.expires_at - lock.acquired_at == timedelta(seconds=30)
    assert body["mode"] == "exclusive"


def test_acquire_is_idempotent_for_the_holder(alice, doc) -> None:
    first = alice.acquire(doc, ttl=60)

    again = alice.acquire(doc, ttl=60)

    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["fence"] == 1


def test_shared_locks_are_granted_together(alice, bob, doc) -> None:
    assert alice.acquire(doc, mode="shared").status_code == 201
    assert bob.acquire(doc, mode="shared").status_code == 201

    holders = alice.read(doc).json()["holders"]

    assert sorted(h["agent"] for h in holders) == ["alice", "bob"]


def test_busy_without_waiting_is_409_with_the_holders(alice, bob, doc) -> None:
    held = alice.acquire(doc, ttl=60).json()

    response = bob.acquire(doc, wait=False)

    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "busy"
    assert "alice" in body["detail"]
    assert body["holders"] == [
        {
            "agent": "alice",
            "mode": "exclusive",
            "fence": 1,
            "expires_at": held["expires_at"],
            "resource": doc,
        }
    ]
    assert not Lock.objects.filter(agent=bob.agent).exists()


def test_a_queued_request_is_granted_when_the_holder_releases(alice, bob, doc) -> None:
    held = alice.acquire(doc).json()

    queued = bob.acquire(doc, wait=True, ttl=45)

    assert queued.status_code == 202
    assert set(queued.json()) == {"request_id", "status"}
    assert queued.json()["status"] == "waiting"
    poll = f"/lock-requests/{queued.json()['request_id']}"
    assert bob.get(poll).json() == {"status": "waiting", "lock": None, "reason": ""}
    # Asking again while queued does not queue twice.
    assert bob.acquire(doc, wait=True).json() == queued.json()

    assert alice.delete(f"/locks/{held['id']}").status_code == 204

    granted = bob.get(poll)
    assert granted.status_code == 200
    body = granted.json()
    assert body["status"] == "granted"
    assert set(body["lock"]) == LOCK_KEYS
    assert (body["lock"]["resource"], body["lock"]["fence"]) == ("doc", 2)
    lock = Lock.objects.get(pk=body["lock"]["id"])
    assert (lock.agent, lock.expires_at - lock.acquired_at) == (bob.agent, timedelta(seconds=45))
    write = bob.write(doc, value="bob", fence=2)
    assert write.json() == {"version": 1, "released": False, "lock_id": None}


def test_a_cancelled_request_reads_as_cancelled(alice, bob, doc) -> None:
    alice.acquire(doc)
    request_id = bob.acquire(doc, wait=True).json()["request_id"]
    lock_request_cancel(request_id=request_id, agent=bob.agent)

    body = bob.get(f"/lock-requests/{request_id}").json()

    assert body == {"status": "cancelled", "lock": None, "reason": "cancelled by its agent"}


def test_only_the_requesting_agent_may_read_its_request(alice, bob, doc) -> None:
    alice.acquire(doc)
    request_id = bob.acquire(doc, wait=True).json()["request_id"]

    response = alice.get(f"/lock-requests/{request_id}")

    assert response.status_code == 403
    assert response.json()["error"] == "not_your_request"


@pytest.mark.parametrize(
    ("request_id", "status"),
    [("999999", 404), ("0", 400), ("-1", 400), ("abc", 400), ("9" * 30, 400)],
)
def test_reading_an_unknown_or_malformed_request_id(alice, request_id, status) -> None:
    response = alice.get(f"/lock-requests/{request_id}")

    assert response.status_code == status
    assert response.json()["error"] == ("request_not_found" if status == 404 else "invalid_request")


def test_acquire_of_an_unknown_resource_is_404(alice) -> None:
    response = alice.acquire("nothing-here")

    assert response.status_code == 404
    assert response.json()["error"] == "resource_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "resource"),
        ({"resource": 5}, "resource"),
        ({"resource": "doc", "mode": "upgradable"}, "mode"),
        ({"resource": "doc", "ttl": "5"}, "ttl"),
        ({"resource": "doc", "ttl": 1.5}, "ttl"),
        ({"resource": "doc", "ttl": 0}, "ttl"),
        ({"resource": "doc", "ttl": 86401}, "ttl"),
        ({"resource": "doc", "ttl": True}, "ttl"),
        ({"resource": "doc", "wait": "yes"}, "wait"),
        ({"resource": "doc", "wait": 1}, "wait"),
        ({"resource": "doc", "lease": 5}, "lease"),
    ],
)
def test_acquire_refuses_malformed_bodies_naming_the_field(alice, doc, body, field) -> None:
    response = alice.post("/locks", body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["detail"]
    assert not Lock.objects.exists()


def test_upgrading_a_shared_lock_is_refused(alice, doc) -> None:
    alice.acquire(doc, mode="shared")

    response = alice.acquire(doc, mode="exclusive")

    assert response.status_code == 400
    assert response.json()["error"] == "upgrade_not_supported"


def test_a_paused_agent_may_still_use_the_api(make_client, doc) -> None:
    paused = make_client("sleepy")
    paused.agent.paused = True
    paused.agent.save(update_fields=["paused"])

    assert paused.acquire(doc).status_code == 201


def test_renew_extends_the_lease(alice, doc) -> None:
    held = alice.acquire(doc, ttl=10).json()

    response = alice.post(f"/locks/{held['id']}/renew", {"ttl": 600})

    assert response.status_code == 200
    assert set(response.json()) == {"expires_at"}
    assert parse_datetime(response.json()["expires_at"]) > timezone.now() + timedelta(seconds=590)
    assert alice.read(doc).json()["holders"][0]["expires_at"] == response.json()["expires_at"]


def test_renew_without_a_body_uses_the_team_lease(alice, doc) -> None:
    held = alice.acquire(doc, ttl=5).json()

    response = alice.post(f"/locks/{held['id']}/renew")

    assert response.status_code == 200
    assert parse_datetime(response.json()["expires_at"]) > timezone.now() + timedelta(seconds=25)


def test_renew_after_the_lease_expired_is_410_lease_lost(alice, doc) -> None:
    held = alice.acquire(doc).json()
    expire(held["id"])

    response = alice.post(f"/locks/{held['id']}/renew", {"ttl": 30})

    assert response.status_code == 410
    assert response.json()["error"] == "lease_lost"
    assert response.json()["conflict_id"] is not None


def test_renew_of_another_agents_lock_is_403(alice, bob, doc) -> None:
    held = alice.acquire(doc, ttl=10).json()

    response = bob.post(f"/locks/{held['id']}/renew", {"ttl": 600})

    assert response.status_code == 403
    assert response.json()["error"] == "not_your_lock"
    assert alice.read(doc).json()["holders"][0]["expires_at"] == held["expires_at"]


@pytest.mark.parametrize(
    ("body", "status"),
    [({"ttl": "30"}, 400), ({"ttl": 0}, 400), ({"ttl": None, "x": 1}, 400), ("[]", 400)],
)
def test_renew_refuses_malformed_bodies(alice, doc, body, status) -> None:
    held = alice.acquire(doc, ttl=10).json()

    response = alice.post(f"/locks/{held['id']}/renew", body)

    assert response.status_code == status
    assert response.json()["error"] == "invalid_request"


def test_renew_of_an_unknown_lock_is_404(alice) -> None:
    response = alice.post("/locks/424242/renew", {"ttl": 30})

    assert response.status_code == 404
    assert response.json()["error"] == "lock_not_found"


def test_release_is_204_and_repeating_it_is_harmless(alice, doc) -> None:
    held = alice.acquire(doc).json()

    first = alice.delete(f"/locks/{held['id']}")
    again = alice.delete(f"/locks/{held['id']}")

    assert (first.status_code, first.content) == (204, b"")
    assert again.status_code == 204
    assert Lock.objects.get(pk=held["id"]).end == LockEnd.RELEASED
    assert alice.read(doc).json()["holders"] == []


def test_release_after_the_lease_expired_is_410(alice, doc) -> None:
    held = alice.acquire(doc).json()
    expire(held["id"])

    response = alice.delete(f"/locks/{held['id']}")

    assert response.status_code == 410
    assert response.json()["error"] == "lease_lost"


def test_release_of_another_agents_lock_is_403_and_keeps_it(alice, bob, doc) -> None:
    held = alice.acquire(doc).json()

    response = bob.delete(f"/locks/{held['id']}")

    assert response.status_code == 403
    assert response.json()["error"] == "not_your_lock"
    assert Lock.objects.get(pk=held["id"]).released_at is None


@pytest.mark.parametrize(("lock_id", "status"), [("424242", 404), ("x", 400), ("0", 400)])
def test_release_of_an_unknown_lock(alice, lock_id, status) -> None:
    response = alice.delete(f"/locks/{lock_id}")

    assert response.status_code == status
    assert "error" in response.json()


def test_an_agent_of_another_team_cannot_find_the_resource(make_client, alice, doc) -> None:
    """Teams are tenants (core/tenancy.py): another team's resource, not shared, is not
    found, exactly as one that does not exist, and the refusal queues nothing."""
    stranger = make_client("stranger", factories.team())
    alice.acquire(doc)

    response = stranger.acquire(doc, wait=True)

    assert response.status_code == 404
    assert response.json()["error"] == "resource_not_found"
    assert not LockRequest.objects.exists()


def test_a_long_poll_answers_as_soon_as_the_request_is_granted(alice, bob, doc) -> None:
    """GET /lock-requests/{id}?wait= blocks while the request waits and answers when
    the grant commits (woken through Redis), not when its wait runs out."""
    import threading
    import time

    from django.db import connection

    held = alice.acquire(doc).json()
    request_id = bob.acquire(doc, wait=True).json()["request_id"]
    answers: list = []

    def poll() -> None:
        try:
            began = time.monotonic()
            response = bob.get(f"/lock-requests/{request_id}?wait=20")
            answers.append((response.status_code, response.json(), time.monotonic() - began))
        finally:
            connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        # The poll is blocked: nothing answered while the lock is still held.
        poller.join(0.3)
        assert answers == []
        assert alice.delete(f"/locks/{held['id']}").status_code == 204
    finally:
        poller.join(25)
    ((status, body, took),) = answers
    assert (status, body["status"], body["lock"]["fence"]) == (200, "granted", 2)
    assert took < 10  # liveness: woken by the grant, far before its 20 s ran out


def test_a_long_poll_that_runs_out_answers_still_waiting(alice, bob, doc) -> None:
    alice.acquire(doc)
    request_id = bob.acquire(doc, wait=True).json()["request_id"]

    response = bob.get(f"/lock-requests/{request_id}?wait=0.2")

    assert response.status_code == 200
    assert response.json() == {"status": "waiting", "lock": None, "reason": ""}


def test_a_long_poll_on_a_decided_request_answers_at_once(alice, bob, doc) -> None:
    alice.acquire(doc)
    request_id = bob.acquire(doc, wait=True).json()["request_id"]
    lock_request_cancel(request_id=request_id, agent=bob.agent)

    response = bob.get(f"/lock-requests/{request_id}?wait=30")

    assert response.json()["status"] == "cancelled"


@pytest.mark.parametrize("wait", ["-1", "31", "abc", "nan", "1e9"])
def test_a_long_poll_with_a_bad_wait_is_400(alice, bob, doc, wait) -> None:
    alice.acquire(doc)
    request_id = bob.acquire(doc, wait=True).json()["request_id"]

    response = bob.get(f"/lock-requests/{request_id}?wait={wait}")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_a_grant_to_an_http_agent_pushes_its_wake_up(alice, bob, doc) -> None:
    """What the long poll blocks on: the grant's commit pushes to bob's wake-up list."""
    from orchestrator.core import wakeups

    held = alice.acquire(doc).json()
    bob.acquire(doc, wait=True)
    while wakeups.wait_for_wake(bob.agent.pk, 0.01):  # nothing left over from before
        pass

    assert alice.delete(f"/locks/{held['id']}").status_code == 204

    assert wakeups.wait_for_wake(bob.agent.pk, 0.01) is True
    assert wakeups.wait_for_wake(bob.agent.pk, 0.01) is False  # one grant, one wake-up


def test_a_cancelled_request_leaves_the_queue(make_client, alice, bob, doc) -> None:
    carol = make_client("carol")
    held = alice.acquire(doc).json()
    bobs = bob.acquire(doc, wait=True).json()["request_id"]
    carols = carol.acquire(doc, wait=True).json()["request_id"]

    assert carol.delete(f"/lock-requests/{bobs}").json()["error"] == "not_your_request"
    cancelled = bob.delete(f"/lock-requests/{bobs}")
    again = bob.delete(f"/lock-requests/{bobs}")
    alice.delete(f"/locks/{held['id']}")

    assert cancelled.status_code == again.status_code == 200
    assert cancelled.json() == {
        "status": "cancelled",
        "lock": None,
        "reason": "cancelled by its agent",
    }
    assert again.json() == cancelled.json()  # idempotent
    assert carol.get(f"/lock-requests/{carols}").json()["status"] == "granted"
    assert bob.delete("/lock-requests/999999").status_code == 404


def test_busy_under_a_folder_names_the_folder_and_its_holder(alice, bob) -> None:
    for name in ("src/", "src/app.py"):
        assert alice.create(name).status_code == 201
    assert alice.acquire("src/").status_code == 201

    response = bob.acquire("src/app.py", wait=False)

    assert response.status_code == 409
    body = response.json()
    assert [(h["agent"], h["resource"]) for h in body["holders"]] == [("alice", "src/")]
    assert "alice (src/)" in body["detail"]
