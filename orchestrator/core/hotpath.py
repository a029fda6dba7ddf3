"""Hand-written statements for the writes every lock cycle makes.

A lock cycle (acquire, write, release) is three short transactions; on
PostgreSQL the ORM's per-statement cost (compiling, model instances) was
about as large as the database work itself, and two of its writes are pairs
of statements that PostgreSQL can do as one. These functions do exactly what
the ORM calls they replace (kept below as the SQLite path, and compared with
it by tests/core/test_hotpath.py); callers hold the Resource row lock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection
from psycopg.types.json import Jsonb

from orchestrator.core.models import Event, Lock, Resource, ResourceVersion

_GRANT_EXCLUSIVE = """
WITH bumped AS (
    UPDATE core_resource SET fence = fence + 1 WHERE id = %s RETURNING fence
)
INSERT INTO core_lock (resource_id, agent_id, mode, token, acquired_at, expires_at, "end")
SELECT %s, %s, 'exclusive', bumped.fence, %s, %s, '' FROM bumped
RETURNING id, token
"""

_GRANT_SHARED = """
INSERT INTO core_lock (resource_id, agent_id, mode, token, acquired_at, expires_at, "end")
VALUES (%s, %s, 'shared', %s, %s, %s, '')
RETURNING id, token
"""

_WRITE = """
WITH written AS (
    UPDATE core_resource SET value = %s, version = version + 1, updated_at = %s
     WHERE id = %s RETURNING version
)
INSERT INTO core_resourceversion
       (resource_id, version, value, agent_id, user_id, fence, idempotency_key, created_at)
SELECT %s, written.version, %s, %s, %s, %s, %s, %s FROM written
RETURNING version
"""

_EVENT_COLUMNS = (
    "kind, actor, team_id, agent_id, user_id, subject_type, subject_id, payload, created_at"
)


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


def grant_lock(resource: Resource, *, agent_id: int, mode: str, ttl: int, now: datetime) -> Lock:
    """Insert a live lock; an exclusive one bumps the fence and takes it as its token.

    Updates ``resource.fence`` in memory to match the row.
    """
    expires = now + timedelta(seconds=ttl)
    exclusive = mode == "exclusive"
    if _postgresql():
        with connection.cursor() as cursor:
            if exclusive:
                cursor.execute(_GRANT_EXCLUSIVE, [resource.pk, resource.pk, agent_id, now, expires])
            else:
                cursor.execute(_GRANT_SHARED, [resource.pk, agent_id, resource.fence, now, expires])
            lock_id, token = cursor.fetchone()
        resource.fence = token if exclusive else resource.fence
        values = [lock_id, resource.pk, agent_id, mode, token, now, expires, None, ""]
        return Lock.from_db("default", [f.attname for f in Lock._meta.concrete_fields], values)
    if exclusive:
        resource.fence += 1
        Resource.objects.filter(pk=resource.pk).update(fence=resource.fence)
    return Lock.objects.create(
        resource=resource,
        agent_id=agent_id,
        mode=mode,
        token=resource.fence,
        acquired_at=now,
        expires_at=expires,
    )


def end_lock(lock: Lock, *, end: str, now: datetime) -> None:
    """Mark a live lock released/revoked/expired at ``now``."""
    lock.released_at = now
    lock.end = end
    if _postgresql():
        with connection.cursor() as cursor:
            cursor.execute(
                'UPDATE core_lock SET released_at = %s, "end" = %s WHERE id = %s',
                [now, end, lock.pk],
            )
        return
    Lock.objects.filter(pk=lock.pk).update(released_at=now, end=end)


def write_value(
    resource: Resource,
    value: Any,
    *,
    agent_id: int | None,
    user_id: int | None,
    fence: int | None,
    now: datetime,
    idempotency_key: str = "",
) -> int:
    """Store ``value`` as the resource's next version, with its history row."""
    if _postgresql():
        with connection.cursor() as cursor:
            cursor.execute(
                _WRITE,
                [Jsonb(value), now, resource.pk, resource.pk, Jsonb(value), agent_id, user_id,
                 fence, idempotency_key, now],
            )  # fmt: skip
            (version,) = cursor.fetchone()
    else:
        version = resource.version + 1
        Resource.objects.filter(pk=resource.pk).update(value=value, version=version, updated_at=now)
        ResourceVersion.objects.create(
            resource=resource,
            version=version,
            value=value,
            agent_id=agent_id,
            user_id=user_id,
            fence=fence,
            idempotency_key=idempotency_key,
        )
    resource.value, resource.version, resource.updated_at = value, version, now
    return version


def insert_events(events: list[Event], now: datetime) -> None:
    """Insert events (the last statement of every service) and set their ids."""
    for event in events:
        event.created_at = now
    if not _postgresql():
        Event.objects.bulk_create(events)
        return
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(events))
    params: list[Any] = []
    for e in events:
        params += [e.kind, e.actor, e.team_id, e.agent_id, e.user_id, e.subject_type,
                   e.subject_id, Jsonb(e.payload), e.created_at]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO core_event ({_EVENT_COLUMNS}) VALUES {rows} RETURNING id",  # noqa: S608
            params,
        )
        ids = [pk for (pk,) in cursor.fetchall()]
    # PostgreSQL returns the rows of one INSERT ... VALUES in the order given; and
    # the trigger draws their ids in that order under the event log lock.
    for event, pk in zip(events, sorted(ids), strict=True):
        event.pk = pk
        event._state.adding = False


class StopState(NamedTuple):
    """What decides whether a step may go on: see agents.runtime.stop_reason."""

    run_status: str
    run_paused: bool
    agent_paused: bool
    team_paused: bool
    system_paused: bool

    def reason(self) -> str:
        """'' (go on), 'paused' or 'cancelled'."""
        if self.run_status == "cancelled":
            return "cancelled"
        paused = self.run_paused or self.agent_paused or self.team_paused or self.system_paused
        return "paused" if paused else ""


_JOURNAL = """
UPDATE core_step AS s SET tool_calls = %s, heartbeat_at = %s
  FROM core_run AS r, core_agent AS a, core_team AS t
 WHERE s.id = %s AND r.id = s.run_id AND a.id = s.agent_id AND t.id = r.team_id
RETURNING r.status, r.paused, a.paused, t.paused,
          EXISTS (SELECT 1 FROM core_switchboard WHERE id = 1 AND paused)
"""


def journal_step(step_id: int, tool_calls: list[dict[str, Any]], now: datetime) -> StopState:
    """Save a step's tool-call journal (and heartbeat) and read, in the same
    statement, whether its run, agent, team or the system is paused or cancelled."""
    from orchestrator.core.models import Agent, Step, Switchboard, Team

    if _postgresql():
        with connection.cursor() as cursor:
            cursor.execute(_JOURNAL, [Jsonb(tool_calls), now, step_id])
            return StopState(*cursor.fetchone())
    Step.objects.filter(pk=step_id).update(tool_calls=tool_calls, heartbeat_at=now)
    step = Step.objects.select_related("run").get(pk=step_id)
    return StopState(
        step.run.status,
        step.run.paused,
        Agent.objects.filter(pk=step.agent_id, paused=True).exists(),
        Team.objects.filter(pk=step.run.team_id, paused=True).exists(),
        Switchboard.objects.filter(pk=1, paused=True).exists(),
    )
