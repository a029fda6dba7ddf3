"""The lock cycle in two requests over HTTP: POST /locks (the grant says the value and
version), then PUT with ``release: true`` (the write and the release commit together).
Every door that hands out a grant says the value and version."""

from __future__ import annotations

import pytest

from orchestrator.core.models import Lock, LockRequest, RequestStatus, Resource
from tests.api.conftest import API
from tests.injected import Injected, failing_with

pytestmark = pytest.mark.django_db(transaction=True)


def live_locks(name: str) -> list[int]:
    return list(
        Lock.objects.filter(resource__name=name, released_at__isnull=True).values_list(
            "pk", flat=True
        )
    )


def test_a_cycle_in_two_requests_releases_with_the_write_and_grants_the_waiter(alice, bob) -> None:
    alice.create("doc", {"n": 1})
    held = alice.acquire("doc").json()
    assert (held["version"], held["value"]) == (0, {"n": 1})
    queued = bob.acquire("doc", wait=True).json()

    written = alice.write(
        "doc", value={"n": 2}, expected_version=held["version"], fence=held["fence"], release=True
    )

    assert written.status_code == 200, written.content
    assert written.json() == {"version": 1, "released": True, "lock_id": held["id"]}
    # Bob was granted in that commit; his grant says what Alice wrote, so he needs no read.
    polled = bob.get(f"/lock-requests/{queued['request_id']}").json()
    assert polled["status"] == "granted"
    assert (polled["lock"]["version"], polled["lock"]["value"]) == (1, {"n": 2})
    assert polled["lock"]["fence"] == held["fence"] + 1
    assert live_locks("doc") == [polled["lock"]["id"]]
    # Releasing it afterwards is harmless, as releasing twice always is.
    assert alice.delete(f"/locks/{held['id']}").status_code == 204


def test_a_refused_write_keeps_the_lock(alice, bob) -> None:
    alice.create("doc", 0)
    held = alice.acquire("doc").json()
    assert alice.write("doc", value=1, fence=held["fence"]).status_code == 200
    queued = bob.acquire("doc", wait=True).json()

    stale = alice.write("doc", value=2, expected_version=0, fence=held["fence"], release=True)

    assert stale.status_code == 409
    assert stale.json()["error"] == "version_conflict"
    assert "released" not in stale.json()  # a refusal never releases
    assert live_locks("doc") == [held["id"]]
    request = LockRequest.objects.get(pk=queued["request_id"])
    assert request.status == RequestStatus.WAITING
    # Still the holder: the write on the current version applies, and releases.
    again = alice.write("doc", value=2, expected_version=1, fence=held["fence"], release=True)
    assert again.json() == {"version": 2, "released": True, "lock_id": held["id"]}


def test_a_write_waiting_for_an_approval_keeps_the_lock(alice) -> None:
    alice.create("doc", 0, requires_approval=True)
    held = alice.acquire("doc").json()

    pending = alice.write("doc", value=1, expected_version=0, fence=held["fence"], release=True)

    assert pending.status_code == 202
    assert set(pending.json()) == {"approval_id"}
    assert live_locks("doc") == [held["id"]]


def test_release_without_a_fence_is_invalid_request_naming_the_field(alice) -> None:
    alice.create("doc", 0)

    refused = alice.write("doc", value=1, release=True)

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert refused.json()["detail"].startswith("release: ")
    assert Resource.objects.get(name="doc").version == 0


def test_a_transaction_failing_after_the_write_leaves_value_and_lock_unchanged(alice, bob) -> None:
    alice.create("doc", 0)
    held = alice.acquire("doc").json()
    queued = bob.acquire("doc", wait=True).json()

    with failing_with("resource.written"), pytest.raises(Injected):
        alice.write("doc", value=1, expected_version=0, fence=held["fence"], release=True)

    assert (Resource.objects.get(name="doc").value, Resource.objects.get(name="doc").version) == (
        0,
        0,
    )
    assert live_locks("doc") == [held["id"]]
    assert LockRequest.objects.get(pk=queued["request_id"]).status == RequestStatus.WAITING


def test_a_lock_set_grant_says_each_resources_value_and_version(alice) -> None:
    alice.create("a", 10)
    alice.create("b", 20)

    granted = alice.post("/lock-sets", {"resources": ["a", "b"]}).json()

    assert [(lock["resource"], lock["version"], lock["value"]) for lock in granted["locks"]] == [
        ("a", 0, 10),
        ("b", 0, 20),
    ]
    polled = alice.get(f"/lock-sets/{granted['id']}").json()
    assert [lock["value"] for lock in polled["locks"]] == [10, 20]
    # One lock of the set released with its write; the set releases the rest.
    a = granted["locks"][0]
    written = alice.write("a", value=11, expected_version=0, fence=a["fence"], release=True)
    assert written.json()["released"] is True
    assert live_locks("a") == []
    assert alice.delete(f"/lock-sets/{granted['id']}").status_code == 200
    assert live_locks("b") == []


def test_the_openapi_document_says_release_and_the_grants_value(alice) -> None:
    document = alice.client.get(f"{API}/openapi.json").json()
    schemas = document["components"]["schemas"]

    assert schemas["ResourceWriteIn"]["properties"]["release"]["type"] == "boolean"
    assert {"released", "lock_id", "version"} <= set(schemas["VersionOut"]["properties"])
    assert {"version", "value"} <= set(schemas["LockOut"]["properties"])
    put = document["paths"]["/api/v1/resources/{name}"]["put"]
    assert "release" in put["description"]
