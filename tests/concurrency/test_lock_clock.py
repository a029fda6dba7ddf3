"""Leases are timed from the moment a transaction owns the resource, not from before.

A lock service first takes the Resource row lock, then reads the database
clock for every lease decision (grant time, expiry). If the clock were read
before the row lock was granted, a transaction that queued behind another
for the row would grant a lease stamped in the past: shortened by the wait
(a short lease could be born expired) and, in the history, starting before
the previous holder's transaction ended.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction

from orchestrator.core.models import Resource
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.processes import Workers, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def someone_waits_for_me() -> bool:
    """True once another backend is blocked on a lock this connection holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted"
            " AND pg_backend_pid() = ANY(pg_blocking_pids(pid)))"
        )
        return cursor.fetchone()[0]


def test_a_lease_granted_after_waiting_for_the_row_starts_after_the_wait() -> None:
    agent = factories.agent(team_=factories.team(default_lease_ttl=30))
    resource = resource_create(team=agent.team, name="contended")
    with Workers() as workers:
        with transaction.atomic():
            # Hold the row as a slow lock transaction would, without changing it.
            Resource.objects.select_for_update().get(pk=resource.pk)
            workers.start(
                "tests.concurrency.tasks:acquire_once",
                agent_id=agent.pk,
                resource_id=resource.pk,
                ttl=30,
            )
            wait_until(someone_waits_for_me, timeout=60, what="the acquire to wait for the row")
            with connection.cursor() as cursor:
                cursor.execute("SELECT clock_timestamp()")
                row_released_after = cursor.fetchone()[0]
        (result,) = workers.results(timeout=60)

    assert result["status"] == "granted"
    assert result["acquired_at"] >= row_released_after, (
        f"lease stamped {row_released_after - result['acquired_at']} before the row lock was "
        "granted"
    )
    assert result["expires_at"] - result["acquired_at"] == timedelta(seconds=30)
