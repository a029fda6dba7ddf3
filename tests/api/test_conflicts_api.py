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
        "created_at",
    }
    assert (first["kind"], first["status"]) == ("stale_fence", "resolved")
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
