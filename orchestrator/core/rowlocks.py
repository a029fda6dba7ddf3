"""The one home for row locks.

Every ``select_for_update`` in the project goes through these helpers, which
lock rows in primary-key order within a kind, and callers that lock several
kinds do so in the global order Team -> Agent -> Run -> Resource -> Lock ->
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
    Lock,
    LockRequest,
    Resource,
    Run,
    Team,
)


def _locked(model: type[Model], ids: Iterable[int]) -> QuerySet:
    return model.objects.select_for_update().filter(pk__in=sorted(set(ids))).order_by("pk")


def lock_teams(ids: Iterable[int]) -> list[Team]:
    """Lock and return the Team rows with these ids, in pk order."""
    return list(_locked(Team, ids))


def lock_agents(ids: Iterable[int]) -> list[Agent]:
    """Lock and return the Agent rows with these ids, in pk order."""
    return list(_locked(Agent, ids))


def lock_runs(ids: Iterable[int]) -> list[Run]:
    """Lock and return the Run rows with these ids, in pk order."""
    return list(_locked(Run, ids))


def lock_resources(ids: Iterable[int]) -> list[Resource]:
    """Lock and return the Resource rows with these ids, in pk order."""
    return list(_locked(Resource, ids))


def lock_resource(resource_id: int) -> Resource:
    """Lock one Resource row. Raises Resource.DoesNotExist."""
    return Resource.objects.select_for_update().get(pk=resource_id)


def lock_resource_by_name(name: str) -> Resource:
    """Lock one Resource row by name. Raises Resource.DoesNotExist."""
    return Resource.objects.select_for_update().get(name=name)


def lock_resource_with_clock(**lookup: Any) -> tuple[Resource, datetime]:
    """Lock one Resource row (``lookup`` as for ``get``) and read the database clock.

    The clock is read after the row lock was granted, so lease decisions use
    the time at which this transaction owns the resource (and the same clock
    on every host). It takes a statement of its own: PostgreSQL evaluates a
    clock in the locking SELECT before it waits for the row lock, which would
    date a lease granted after a wait in the past (see
    tests/concurrency/test_lock_clock.py). Lookups may go through a lock or
    request (``locks__id=...``): only the Resource row is locked. Raises
    Resource.DoesNotExist.
    """
    queryset = Resource.objects.all()
    if connection.vendor == "postgresql":
        resource = queryset.select_for_update(of=("self",)).get(**lookup)
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            return resource, cursor.fetchone()[0]
    # SQLite serializes writers with BEGIN IMMEDIATE; it has no row locks.
    return queryset.get(**lookup), timezone.now()


def lock_locks(ids: Iterable[int]) -> list[Lock]:
    """Lock and return Lock rows. Caller already holds their Resource row locks."""
    return list(_locked(Lock, ids))


def lock_requests(ids: Iterable[int]) -> list[LockRequest]:
    """Lock and return LockRequest rows. Caller holds their Resource row locks."""
    return list(_locked(LockRequest, ids))


def lock_approval(approval_id: int) -> Approval:
    """Lock one Approval row. Caller holds its Resource row lock. Raises DoesNotExist."""
    return Approval.objects.select_for_update().get(pk=approval_id)


def lock_conflicts(ids: Iterable[int]) -> list[Conflict]:
    """Lock and return Conflict rows, after any Resource/Lock rows the caller needs."""
    return list(_locked(Conflict, ids))
