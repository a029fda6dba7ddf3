"""The one home for row locks.

Every ``select_for_update`` in the project goes through these helpers, which
lock rows in primary-key order within a kind, and callers that lock several
kinds do so in the global order Team -> Agent -> Run -> Step -> Resource -> Lock ->
LockRequest -> Approval -> Conflict. Two transactions that follow this order
can wait for each other but never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model, QuerySet
from django.utils import timezone

from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    Resource,
    Run,
    Step,
    Switchboard,
    Team,
)


def _locked(model: type[Model], ids: Iterable[int]) -> QuerySet:
    return model.objects.select_for_update().filter(pk__in=sorted(set(ids))).order_by("pk")


def lock_switchboard() -> Switchboard:
    """Lock the system-wide switchboard row (created on first use). Locked first of all."""
    Switchboard.objects.get_or_create(pk=1)
    return Switchboard.objects.select_for_update().get(pk=1)


def lock_teams(ids: Iterable[int]) -> list[Team]:
    """Lock and return the Team rows with these ids, in pk order."""
    return list(_locked(Team, ids))


def lock_agents(ids: Iterable[int]) -> list[Agent]:
    """Lock and return the Agent rows with these ids, in pk order."""
    return list(_locked(Agent, ids))


def lock_runs(ids: Iterable[int]) -> list[Run]:
    """Lock and return the Run rows with these ids, in pk order."""
    return list(_locked(Run, ids))


def lock_steps(ids: Iterable[int]) -> list[Step]:
    """Lock and return Step rows (after any Run rows), in pk order."""
    return list(_locked(Step, ids))


def lock_resources(ids: Iterable[int]) -> list[Resource]:
    """Lock and return the Resource rows with these ids, in pk order."""
    return list(_locked(Resource, ids))


def lock_resource(resource_id: int) -> Resource:
    """Lock one Resource row. Raises Resource.DoesNotExist."""
    return Resource.objects.select_for_update().get(pk=resource_id)


_LOCK_WITH_CLOCK = {
    # lookup keyword -> how the inner query finds the resource
    "pk": "id = %s",
    "name": "name = %s",
    "locks__id": "id = (SELECT resource_id FROM core_lock WHERE id = %s)",
    "requests__id": "id = (SELECT resource_id FROM core_lockrequest WHERE id = %s)",
    "approvals__id": "id = (SELECT resource_id FROM core_approval WHERE id = %s)",
}


def lock_resource_with_clock(**lookup: Any) -> tuple[Resource, datetime]:
    """Lock one Resource row and read the database clock, in one round trip.

    ``lookup`` is one of ``pk=``, ``name=``, ``locks__id=``, ``requests__id=``,
    ``approvals__id=``. The clock is read *after* the row lock is granted, so
    lease decisions use the time at which this transaction owns the resource
    (and the same clock on every host): the row is locked in a subquery and the
    clock is computed by the outer query, on the row the subquery returns.
    (In a plain ``SELECT clock_timestamp() ... FOR UPDATE`` PostgreSQL would
    evaluate the clock before waiting for the row lock, dating a lease granted
    after a wait in the past: tests/concurrency/test_lock_clock.py.) Only the
    Resource row is locked. Raises Resource.DoesNotExist.
    """
    ((key, value),) = lookup.items()
    where = _LOCK_WITH_CLOCK[key]
    if connection.vendor != "postgresql":
        # SQLite serializes writers with BEGIN IMMEDIATE; it has no row locks.
        return Resource.objects.get(**lookup), timezone.now()
    table = Resource._meta.db_table
    rows = list(
        Resource.objects.raw(
            f"SELECT locked.*, clock_timestamp() AS db_clock "  # noqa: S608 (constant SQL)
            f"FROM (SELECT * FROM {table} WHERE {where} FOR UPDATE) AS locked",
            [value],
        )
    )
    if not rows:
        raise Resource.DoesNotExist(f"no resource with {key}={value!r}")
    return rows[0], rows[0].db_clock


def lock_approval(approval_id: int) -> Approval:
    """Lock one Approval row. Caller holds its Resource row lock. Raises DoesNotExist."""
    return Approval.objects.select_for_update().get(pk=approval_id)


def lock_conflicts(ids: Iterable[int]) -> list[Conflict]:
    """Lock and return Conflict rows, after any Resource/Lock rows the caller needs."""
    return list(_locked(Conflict, ids))
