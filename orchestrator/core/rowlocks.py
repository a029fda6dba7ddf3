"""The one home for row locks.

Every ``select_for_update`` in the project goes through these helpers, which
lock rows in primary-key order within a kind, and callers that lock several
kinds do so in the global order Team -> Agent -> Run -> Step -> Resource -> Lock ->
LockRequest -> Approval -> Conflict. Two transactions that follow this order
can wait for each other but never deadlock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Exists, Model, OuterRef, QuerySet
from django.utils import timezone

from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    Lock,
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
    advisory_xact_lock(RUN_ENDING_LOCK_CLASS, run_id)


def advisory_xact_lock(*key: int) -> None:
    """Take PostgreSQL's transaction-level advisory lock ``key`` (one or two
    integers) exclusively, until commit. Nothing on SQLite, where BEGIN IMMEDIATE
    serializes writers already."""
    if connection.vendor != "postgresql":
        return
    placeholders = ", ".join(["%s"] * len(key))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory_xact_lock({placeholders})", list(key))


def lock_steps(ids: Iterable[int]) -> list[Step]:
    """Lock and return Step rows (after any Run rows), in pk order."""
    return list(_locked(Step, ids))


def columns(model: type[Model], alias: str) -> str:
    """The select list of every column of ``model`` under table alias ``alias``."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


def instance(model: type[Model], values: list[Any]) -> Model:
    """A model instance from raw column values, converted as the ORM would."""
    fields = model._meta.concrete_fields
    converted = [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(fields, values, strict=True)
    ]
    return model.from_db(connection.alias, [field.attname for field in fields], converted)


def one_row_as(
    sql: str, params: list[Any], *models: type[Model]
) -> tuple[list[Model], list[Any]] | None:
    """Run ``sql``, whose select list is the :func:`columns` of each of ``models`` in
    turn, then any other values; return the models' instances built from its one
    row, and the other values. None if there is no row."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    instances = []
    for model in models:
        width = len(model._meta.concrete_fields)
        instances.append(instance(model, values[:width]))
        values = values[width:]
    return instances, values


@functools.cache
def _step_in_context_sql() -> str:
    # Column names come from the models' metadata; the one value is a parameter.
    return (
        f"SELECT {columns(Step, 's')}, {columns(Agent, 'a')}, {columns(Team, 't')}, "  # noqa: S608
        f"{columns(Run, 'r')}, rt.paused, "
        "EXISTS (SELECT 1 FROM core_switchboard WHERE id = 1 AND paused), "
        "EXISTS (SELECT 1 FROM core_lock l WHERE l.agent_id = s.agent_id "
        "AND l.released_at IS NULL) "
        "FROM core_step s JOIN core_agent a ON a.id = s.agent_id "
        "JOIN core_team t ON t.id = a.team_id JOIN core_run r ON r.id = s.run_id "
        "JOIN core_team rt ON rt.id = r.team_id WHERE s.id = %s FOR UPDATE OF s"
    )


def lock_step_in_context(step_id: int) -> Step | None:
    """Lock one Step row (only it) and load, in the same statement, what a step needs
    to know about its world: its agent and the agent's team, its run, whether the
    run's team is paused (``run_team_paused``), and two more flags:
    ``system_paused`` (the switchboard) and ``agent_holds_locks`` (the agent has a
    live lock). None if there is no such step.

    One hand-written statement: the same query through the ORM (select_related and
    two annotations) cost about 3.5 ms more in Python, twice per agent step.
    """
    if connection.vendor != "postgresql":
        step = (
            Step.objects.select_related("agent__team", "run__team")
            .annotate(
                system_paused=Exists(Switchboard.objects.filter(pk=1, paused=True)),
                agent_holds_locks=Exists(
                    Lock.objects.filter(agent_id=OuterRef("agent_id"), released_at__isnull=True)
                ),
            )
            .filter(pk=step_id)
            .order_by()
            .first()
        )
        if step is not None:
            step.run_team_paused = step.run.team.paused
        return step
    found = one_row_as(_step_in_context_sql(), [step_id], Step, Agent, Team, Run)
    if found is None:
        return None
    (step, agent, team, run), values = found
    agent.team = team
    step.agent, step.run = agent, run
    step.run_team_paused, step.system_paused, step.agent_holds_locks = values
    return step


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


@functools.cache
def _lock_with_clock_sql(key: str) -> str:
    # Column names come from the model's metadata, the lookup from the table above.
    return (
        f"SELECT {columns(Resource, 'locked')}, clock_timestamp() "  # noqa: S608
        f"FROM (SELECT * FROM {Resource._meta.db_table} WHERE {_LOCK_WITH_CLOCK[key]} "
        "FOR UPDATE) AS locked"
    )


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
    res, now, _rows = lock_resource_then("", **lookup)
    return res, now


def lock_resource_then(then: str, **lookup: Any) -> tuple[Resource, datetime, list[tuple] | None]:
    """:func:`lock_resource_with_clock`, then the query ``then`` in the same round trip.

    ``then`` names the locked resource's id as ``{resource_id}`` (it becomes a
    parameter or a subquery by the same lookup) and takes no other parameter.
    On PostgreSQL both statements go out together (psycopg's pipeline mode) and
    the server runs them one after the other: ``then`` starts once the row lock
    is granted and, under READ COMMITTED, with a snapshot of its own taken then,
    so it sees everything the previous holder of the row committed. (One
    statement with a subquery would not: its snapshot predates the wait.)
    Returns its rows, or None where the caller must query itself (no ``then``,
    or SQLite). Raises Resource.DoesNotExist.
    """
    ((key, value),) = lookup.items()
    if connection.vendor != "postgresql":
        # SQLite serializes writers with BEGIN IMMEDIATE; it has no row locks.
        return Resource.objects.get(**lookup), timezone.now(), None
    rows = None
    if not then:
        with connection.cursor() as cursor:
            cursor.execute(_lock_with_clock_sql(key), [value])
            row = cursor.fetchone()
    else:
        where = _LOCK_WITH_CLOCK[key]  # constant SQL, keyed by the lookup
        resource_id = "%s" if key == "pk" else f"(SELECT id FROM core_resource WHERE {where})"  # noqa: S608
        sql = then.format(resource_id=resource_id)
        connection.ensure_connection()
        with connection.cursor() as locking, connection.cursor() as reading:
            with connection.wrap_database_errors, connection.connection.pipeline():
                locking.execute(_lock_with_clock_sql(key), [value])
                reading.execute(sql, [value] * then.count("{resource_id}"))
            row = locking.fetchone()
            rows = reading.fetchall()
    if row is None:
        raise Resource.DoesNotExist(f"no resource with {key}={value!r}")
    return instance(Resource, list(row[:-1])), row[-1], rows


def lock_approval(approval_id: int) -> Approval:
    """Lock one Approval row. Caller holds its Resource row lock. Raises DoesNotExist."""
    return Approval.objects.select_for_update().get(pk=approval_id)


def lock_conflicts(ids: Iterable[int]) -> list[Conflict]:
    """Lock and return Conflict rows, after any Resource/Lock rows the caller needs."""
    return list(_locked(Conflict, ids))
