"""/api/v1/conflicts and the selector behind it."""

from __future__ import annotations

import pytest
from django.utils.dateparse import parse_datetime

from orchestrator.core.models import Conflict, ConflictKind, ConflictStatus
from orchestrator.core.selectors import CONFLICTS_LIMIT, conflicts_recent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conflicts(alice, bob) -> dict[str, int]:
    """One resolved version conflict (rejected write) and one stale-fence conflict."""
    alice.create("doc", "v0")
    bob.write("doc", value="bob", expected_version=0)
    version = alice.write("doc", value="alice", expected_version=0).json()["conflict_id"]
    alice.create("other")
    fence = alice.write("other", value=1, fence=7).json()["conflict_id"]
    return {"version": version, "fence": fence}


def test_lists_conflicts_newest_first_with_names(alice, conflicts) -> None:
    response = alice.get("/conflicts")

    assert response.status_code == 200
    body = response.json()
    assert [c["id"] for c in body] == [conflicts["fence"], conflicts["version"]]
    first = body[0]
    assert set(first) == {
        "id",
        "kind",
        "status",
        "agents",
        "resources",
        "detail",
        "occurrences",
        "created_at",
    }
    assert (first["kind"], first["status"], first["occurrences"]) == ("stale_fence", "resolved", 1)
    assert (first["agents"], first["resources"]) == (["alice"], ["other"])
    assert "fencing token 7" in first["detail"]
    assert parse_datetime(first["created_at"]) is not None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?kind=write_conflict", ["version"]),
        ("?kind=stale_fence&status=resolved", ["fence"]),
        ("?status=open", []),
        ("?kind=deadlock", []),
        ("?kind=&status=", ["fence", "version"]),
    ],
)
def test_filters_by_kind_and_status(alice, conflicts, query, expected) -> None:
    response = alice.get("/conflicts" + query)

    assert response.status_code == 200
    assert [c["id"] for c in response.json()] == [conflicts[name] for name in expected]


@pytest.mark.parametrize(
    ("query", "field"), [("?kind=bogus", "kind"), ("?status=closed", "status")]
)
def test_unknown_kind_or_status_is_400(alice, query, field) -> None:
    response = alice.get("/conflicts" + query)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"].startswith(field)


def test_lists_at_most_the_newest_limit(alice, team) -> None:
    Conflict.objects.bulk_create(
        Conflict(kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN, detail=str(i), team=team)
        for i in range(CONFLICTS_LIMIT + 5)
    )
    newest = Conflict.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)

    body = alice.get("/conflicts").json()

    assert len(body) == CONFLICTS_LIMIT
    assert [c["id"] for c in body] == list(newest[:CONFLICTS_LIMIT])


def test_selector_limits_and_filters(conflicts) -> None:
    assert [c.pk for c in conflicts_recent(limit=1)] == [conflicts["fence"]]
    assert [c.pk for c in conflicts_recent(kind=ConflictKind.WRITE_CONFLICT)] == [
        conflicts["version"]
    ]
    assert list(conflicts_recent(status=ConflictStatus.OPEN)) == []


def test_a_repeated_refusal_is_one_conflict_with_its_count(alice) -> None:
    doc = "counted"
    alice.create(doc, 0)
    fence = alice.acquire(doc).json()["fence"]
    for _ in range(3):
        assert alice.write(doc, value="stale", fence=fence + 1).json()["error"] == "stale_fence"

    (conflict,) = alice.get("/conflicts").json()

    assert (conflict["kind"], conflict["occurrences"]) == ("stale_fence", 3)
