"""The one home for row locks.

Every ``select_for_update`` in the project goes through these helpers, which
lock rows in primary-key order within a kind, and callers that lock several
kinds do so in the global order Team -> Agent -> Run -> Step -> Resource -> Lock ->
LockRequest -> LockSet -> Approval -> Conflict. Two transactions that follow this order
can wait for each other but never deadlock. Three of them lock with a statement
written by hand (in sql.py, with every other one): a Resource row with the
clock, that plus the resource's queue in one round trip, and a Step row with
its context.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Model, QuerySet

from orchestrator.core import sql
from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    LockSet,
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


# The class id of the advisory locks taken by lock_run_ending (two-key form: it
# cannot collide with the event log's one-key lock).
RUN_ENDING_LOCK_CLASS = 0x52554E  # "RUN"


def lock_run_ending(run_id: int) -> None:
    """Serialize the transactions that may end run ``run_id`` (the last agent done).

    Each checks whether steps of the run are still open after closing its own;
    two such transactions running side by side would each see the other's step
    as open (it is not committed yet) and neither would end the run, which then
    stayed "running" for ever (seen with two workers). Taken after the caller's
    step is closed, and held until commit: whoever comes second sees the first
    one's step closed. An advisory lock, not the Run row: a transaction that
    holds the Run row (run_cancel) waits for resources that this caller may hold.
    """
    sql.advisory_xact_lock(RUN_ENDING_LOCK_CLASS, run_id)


def lock_steps(ids: Iterable[int]) -> list[Step]:
    """Lock and return Step rows (after any Run rows), in pk order."""
    return list(_locked(Step, ids))


def lock_step_in_context(step_id: int) -> Step | None:
    """Lock one Step row (only it) and load, in the same statement, what a step needs
    to know about its world: its agent and the agent's team, its run, whether the
    run's team is paused (``run_team_paused``), and two more flags:
    ``system_paused`` (the switchboard) and ``agent_holds_locks`` (the agent has a
    live lock). None if there is no such step.

    One hand-written statement (sql.step_in_context).
    """
    return sql.step_in_context(step_id)


def lock_resources(ids: Iterable[int]) -> list[Resource]:
    """Lock and return the Resource rows with these ids, in pk order."""
    return list(_locked(Resource, ids))


def lock_resource(resource_id: int) -> Resource:
    """Lock one Resource row. Raises Resource.DoesNotExist."""
    return Resource.objects.select_for_update().get(pk=resource_id)


def lock_resource_with_clock(**lookup: Any) -> tuple[Resource, datetime]:
    """Lock one Resource row and read the database clock, in one round trip.

    ``lookup`` is one of ``pk=``, ``team_name=(team id, name)``,
    ``owner_name=(team name, name)``, ``locks__id=``, ``requests__id=``,
    ``approvals__id=``. The clock is read *after* the row lock is granted, so
    lease decisions use the time at which this transaction owns the resource
    (and the same clock on every host): the row is locked in a subquery and the
    clock is computed by the outer query, on the row the subquery returns.
    (In a plain ``SELECT clock_timestamp() ... FOR UPDATE`` PostgreSQL would
    evaluate the clock before waiting for the row lock, dating a lease granted
    after a wait in the past: tests/concurrency/test_lock_clock.py.) Only the
    Resource row is locked. Raises Resource.DoesNotExist.
    """
    res, now, _rows = lock_resource_then("", **lookup)
    return res, now


def lock_resource_then(then: str, **lookup: Any) -> tuple[Resource, datetime, list[tuple] | None]:
    """:func:`lock_resource_with_clock`, then the query ``then`` in the same round trip.

    ``then`` names the locked resource's id as ``{resource_id}`` (it becomes a
    parameter or a subquery by the same lookup) and takes no other parameter.
    Both statements go out together (psycopg's pipeline mode) and
    the server runs them one after the other: ``then`` starts once the row lock
    is granted and, under READ COMMITTED, with a snapshot of its own taken then,
    so it sees everything the previous holder of the row committed. (One
    statement with a subquery would not: its snapshot predates the wait.)
    Returns its rows (None without ``then``). Raises Resource.DoesNotExist.
    """
    return sql.lock_resource_then(then, **lookup)


def lock_approval(approval_id: int) -> Approval:
    """Lock one Approval row. Caller holds its Resource row lock. Raises DoesNotExist."""
    return Approval.objects.select_for_update().get(pk=approval_id)


def lock_conflicts(ids: Iterable[int]) -> list[Conflict]:
    """Lock and return Conflict rows, after any Resource/Lock rows the caller needs."""
    return list(_locked(Conflict, ids))


def lock_set_status(lock_set_id: int) -> tuple[str, str]:
    """Lock a LockSet row and return its status and reason. FOR NO KEY UPDATE: the
    inserts of its locks and requests (which reference it) do not wait for it. Taken
    after the set's Resource rows (core/lock_sets.py)."""
    return (
        LockSet.objects.select_for_update(no_key=True)
        .filter(pk=lock_set_id)
        .values_list("status", "reason")
        .get()
    )
