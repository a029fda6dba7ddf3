"""Every hand-written SQL statement of the app, and the helpers that build model
instances from their rows.

Everything else goes through the ORM. A statement is written by hand here only
where the ORM cannot say it (the row lock read together with the clock, two
statements pipelined in one round trip, advisory locks, an UPDATE ... RETURNING
feeding an INSERT, a window over the transcript, a transaction's isolation
level), or where it was measured to cost clearly less than the ORM's version
of the same reads (each function says by how much). Callers name the lock they
hold in their own docstrings (rowlocks.py and the services).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import Model
from django.utils import timezone
from psycopg.types.json import Jsonb

from orchestrator.core.models import Agent, Event, Lock, LockRequest, Resource, Run, Step, Team


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


# --- the clock, advisory locks, isolation ---------------------------------------------


def clock() -> datetime:
    """PostgreSQL's clock now (``clock_timestamp()``, not the transaction's start)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def advisory_xact_lock(*key: int) -> None:
    """Take PostgreSQL's transaction-level advisory lock ``key`` (one or two
    integers) exclusively, until commit."""
    placeholders = ", ".join(["%s"] * len(key))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory_xact_lock({placeholders})", list(key))


def settled_event_id(lock_key: int) -> tuple[int, datetime]:
    """The largest event id, read behind the event log's advisory lock ``lock_key``
    taken exclusively (``events.last_event_id`` says why that makes every id up to
    it settled), and the clock (``clock_timestamp()``) then.

    One round trip: the lock and the read are two statements of one simple query,
    which PostgreSQL runs in one implicit transaction (the lock is held until the
    read is done, and released at its end, outside an enclosing transaction), each
    statement with a snapshot of its own, so the read sees every writer the lock
    waited for. (One statement would read with a snapshot taken before the lock was
    granted, missing the events of the writers it waited for until the next read: a
    frame interval more on the push latency's tail, measured with bench/live.py.)
    The key is our own integer constant, written into the text: a simple query
    takes no parameters.
    """
    table = Event._meta.db_table
    lock = f"SELECT pg_advisory_xact_lock({int(lock_key)}); "
    statements = lock + f"SELECT max(id), clock_timestamp() FROM {table}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(statements)
        cursor.nextset()  # the read's result, after the lock's
        last_id, now = cursor.fetchone()
        return last_id or 0, now


def read_only_snapshot() -> None:
    """Make the transaction just begun read from one REPEATABLE READ snapshot."""
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")


def ping() -> None:
    """One round trip to the database (the health check)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


# --- the row locks written by hand (rowlocks.py says what they guarantee) ---------------

_LOCK_WITH_CLOCK = {
    # lookup keyword -> how the inner query finds the resource
    "pk": "id = %s",
    # (team id, name): an agent's own resource (names are unique within a team).
    "team_name": "team_id = %s AND name = %s",
    # (team name, name): another team's, named owner::name (core/tenancy.py).
    "owner_name": "team_id = (SELECT id FROM core_team WHERE name = %s) AND name = %s",
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


# The class id of the team path locks (core/paths.py): two-key form, the team's id as
# the second key (folded into int4; two teams sharing a key only wait for each other).
PATH_LOCK_CLASS = 0x50415448  # "PATH"
_PATH_LOCK = f"pg_advisory_xact_lock({PATH_LOCK_CLASS}, (team_id %% 2147483647)::integer)"


@functools.cache
def _path_lock_sql(key: str) -> str:
    # The lookup comes from _LOCK_WITH_CLOCK; only a name with a '/' takes the lock.
    return (
        f"SELECT {_PATH_LOCK} FROM core_resource "  # noqa: S608
        f"WHERE {_LOCK_WITH_CLOCK[key]} AND strpos(name, '/') > 0"
    )


def lock_team_paths(resource_ids: list[int]) -> None:
    """Take the path locks (core/paths.py) of the teams that have path resources among
    ``resource_ids``, in team id order, in one statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_PATH_LOCK} FROM ("  # noqa: S608
            "SELECT DISTINCT team_id FROM core_resource WHERE id = ANY(%s) "
            "AND strpos(name, '/') > 0 ORDER BY team_id) AS teams",
            [resource_ids],
        )


def lock_resource_then(then: str, **lookup: Any) -> tuple[Resource, datetime, list[tuple] | None]:
    """The statements of ``rowlocks.lock_resource_then``: the team's path lock if the
    resource is a path (core/paths.py), then the Resource row locked in a subquery and
    the clock read by the outer query, then ``then``, all pipelined in one round trip.

    ``then`` names the locked resource's id as ``{resource_id}`` (it becomes a
    parameter or a subquery by the same lookup) and takes no other parameter.
    Returns its rows, or None without ``then``. Raises Resource.DoesNotExist.
    """
    ((key, value),) = lookup.items()
    params = list(value) if isinstance(value, tuple) else [value]
    rows = None
    connection.ensure_connection()
    with connection.cursor() as paths, connection.cursor() as locking:
        with connection.wrap_database_errors, connection.connection.pipeline():
            paths.execute(_path_lock_sql(key), params)
            locking.execute(_lock_with_clock_sql(key), params)
            if then:
                where = _LOCK_WITH_CLOCK[key]  # constant SQL, keyed by the lookup
                resource_id = (
                    "%s" if key == "pk" else f"(SELECT id FROM core_resource WHERE {where})"  # noqa: S608
                )
                reading = connection.cursor()
                reading.execute(then.format(resource_id=resource_id),
                                params * then.count("{resource_id}"))  # fmt: skip
        row = locking.fetchone()
        if then:
            rows = reading.fetchall()
            reading.close()
    if row is None:
        raise Resource.DoesNotExist(f"no resource with {key}={value!r}")
    return instance(Resource, list(row[:-1])), row[-1], rows


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


def step_in_context(step_id: int) -> Step | None:
    """The statement of ``rowlocks.lock_step_in_context``. The same query through the
    ORM (select_related and two annotations) cost about 3.5 ms more in Python, twice
    per agent step."""
    found = one_row_as(_step_in_context_sql(), [step_id], Step, Agent, Team, Run)
    if found is None:
        return None
    (step, agent, team, run), values = found
    agent.team = team
    step.agent, step.run = agent, run
    step.run_team_paused, step.system_paused, step.agent_holds_locks = values
    return step


# --- a resource's queue -----------------------------------------------------------------

_LOCK_FIELDS = [
    "id", "resource_id", "agent_id", "mode", "token", "acquired_at", "expires_at",
    "released_at", "end", "lock_set_id",
]  # fmt: skip
_REQUEST_FIELDS = [
    "id", "resource_id", "agent_id", "mode", "ttl", "status", "step_id", "lock_id", "reason",
    "requested_at", "resolved_at", "lock_set_id",
]  # fmt: skip
# One statement, hence one snapshot, for both lists: live locks, then waiting requests,
# each with whether its agent also waits on another resource (the deadlock check's
# cheap exit, see locks._open_deadlock_check).
QUEUE = """
SELECT 0, l.id, l.agent_id, l.mode, l.token, l.acquired_at, l.expires_at,
       NULL::integer, NULL::bigint, NULL::timestamptz, a.name, a.team_id,
       EXISTS (SELECT 1 FROM core_lockrequest o WHERE o.agent_id = l.agent_id
                  AND o.status = 'waiting' AND o.resource_id <> {resource_id}),
       l.lock_set_id
  FROM core_lock l JOIN core_agent a ON a.id = l.agent_id
 WHERE l.resource_id = {resource_id} AND l.released_at IS NULL
UNION ALL
SELECT 1, r.id, r.agent_id, r.mode, NULL, NULL, NULL,
       r.ttl, r.step_id, r.requested_at, a.name, a.team_id,
       EXISTS (SELECT 1 FROM core_lockrequest o WHERE o.agent_id = r.agent_id
                  AND o.status = 'waiting' AND o.resource_id <> {resource_id}),
       r.lock_set_id
  FROM core_lockrequest r JOIN core_agent a ON a.id = r.agent_id
 WHERE r.resource_id = {resource_id} AND r.status = 'waiting'
 ORDER BY 1, 2
"""


class QueueRows(NamedTuple):
    locks: list[Lock]  # live, possibly expired
    waiting: list[LockRequest]
    waiting_elsewhere: frozenset[int]  # agents among them that also wait on another resource


def load_queue(resource: Resource, rows: list[tuple] | None = None) -> QueueRows:
    """Live (possibly expired) locks and waiting requests of a resource, in id order.

    The :data:`QUEUE` statement, whose ``rows`` the caller may have read already
    (``locks.lock_queue``); this is the hot path of every lock operation, and the
    ORM's two queries with select_related cost about three times as much.
    """
    if rows is None:
        with connection.cursor() as cursor:
            cursor.execute(QUEUE.format(resource_id="%s"), [resource.pk] * 4)
            rows = cursor.fetchall()
    agents: dict[int, Agent] = {}
    locks, waiting, elsewhere = [], [], set()
    for (kind, pk, agent_id, mode, token, acquired, expires, ttl, step, since, name, team,
         waits_elsewhere, lock_set) in rows:  # fmt: skip
        agent = agents.get(agent_id)
        if agent is None:
            # from_db takes values in the model's field order (id, team, name).
            agent = Agent.from_db("default", ["id", "team_id", "name"], [agent_id, team, name])
            agents[agent_id] = agent
        if waits_elsewhere:
            elsewhere.add(agent_id)
        if kind == 0:
            values = [pk, resource.pk, agent_id, mode, token, acquired, expires, None, "",
                      lock_set]  # fmt: skip
            lock = Lock.from_db("default", _LOCK_FIELDS, values)
            lock.agent, lock.resource = agent, resource
            locks.append(lock)
        else:
            values = [pk, resource.pk, agent_id, mode, ttl, "waiting", step, None, "", since, None,
                      lock_set]  # fmt: skip
            request = LockRequest.from_db("default", _REQUEST_FIELDS, values)
            request.agent, request.resource = agent, resource
            waiting.append(request)
    return QueueRows(locks, waiting, frozenset(elsewhere))


# --- writes: UPDATE ... RETURNING feeding an INSERT ------------------------------------

_GRANT_EXCLUSIVE = """
WITH bumped AS (
    UPDATE core_resource SET fence = fence + 1 WHERE id = %s RETURNING fence
)
INSERT INTO core_lock
       (resource_id, agent_id, mode, token, acquired_at, expires_at, "end", lock_set_id)
SELECT %s, %s, 'exclusive', bumped.fence, %s, %s, '', %s FROM bumped
RETURNING id, token
"""


def grant_exclusive(
    resource: Resource, *, agent_id: int, ttl: int, now: datetime, lock_set_id: int | None = None
) -> Lock:
    """Bump the resource's fence and insert a live exclusive lock holding it as its
    token, in one statement. Updates ``resource.fence`` in memory to match the row.
    Caller holds the Resource row lock."""
    expires = now + timedelta(seconds=ttl)
    params = [resource.pk, resource.pk, agent_id, now, expires, lock_set_id]
    with connection.cursor() as cursor:
        cursor.execute(_GRANT_EXCLUSIVE, params)
        lock_id, token = cursor.fetchone()
    resource.fence = token
    values = [lock_id, resource.pk, agent_id, "exclusive", token, now, expires, None, "",
              lock_set_id]  # fmt: skip
    return Lock.from_db("default", _LOCK_FIELDS, values)


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
    """Store ``value`` as the resource's next version, with its history row, in one
    statement; returns the new version. Caller holds the Resource row lock."""
    params = [Jsonb(value), now, resource.pk, resource.pk, Jsonb(value), agent_id, user_id,
              fence, idempotency_key, now]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_WRITE, params)
        (version,) = cursor.fetchone()
    resource.value, resource.version, resource.updated_at = value, version, now
    return version


_END_LOCK = 'UPDATE core_lock SET released_at = %s, "end" = %s WHERE id = %s'


def end_lock(lock: Lock, *, end: str, now: datetime) -> None:
    """Mark a live lock released, revoked or expired at ``now``. The ORM's
    ``filter(pk=...).update(...)`` sends the same statement but costs about 140 us
    more to build, and every lock cycle ends a lock (docs/benchmarks.md, issue 13)."""
    lock.released_at, lock.end = now, end
    with connection.cursor() as cursor:
        cursor.execute(_END_LOCK, [now, end, lock.pk])


_EVENT_COLUMNS = [
    "kind", "actor", "team_id", "agent_id", "user_id", "subject_type", "subject_id", "payload",
    "created_at",
]  # fmt: skip


def insert_events(events: list[Any], now: datetime) -> None:
    """Insert a service's events (its last statement) and set their ids and
    ``created_at``. ``bulk_create`` sends the same INSERT for one event but costs
    about 110 us more per call, and a lock cycle makes three (docs/benchmarks.md).
    A trigger draws the ids under the event log's lock, in the order of the rows."""
    rows = ", ".join([f"({', '.join(['%s'] * len(_EVENT_COLUMNS))})"] * len(events))
    params: list[Any] = []
    for event in events:
        event.created_at = now
        params += [event.kind, event.actor, event.team_id, event.agent_id, event.user_id,
                   event.subject_type, event.subject_id, Jsonb(event.payload), now]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO core_event ({', '.join(_EVENT_COLUMNS)}) VALUES {rows} RETURNING id",  # noqa: S608
            params,
        )
        ids = sorted(pk for (pk,) in cursor.fetchall())
    for event, pk in zip(events, ids, strict=True):
        event.pk = pk
        event._state.adding = False


_JOURNAL = """
UPDATE core_step AS s SET tool_calls = %s, heartbeat_at = %s
  FROM core_run AS r, core_agent AS a, core_team AS t
 WHERE s.id = %s AND r.id = s.run_id AND a.id = s.agent_id AND t.id = r.team_id
RETURNING r.status, r.paused, a.paused, t.paused,
          EXISTS (SELECT 1 FROM core_switchboard WHERE id = 1 AND paused)
"""


def journal_step(
    step_id: int, tool_calls: list[dict[str, Any]], now: datetime
) -> tuple[str, bool, bool, bool, bool]:
    """Save a step's tool-call journal (and heartbeat) and read, in the same
    statement, what decides whether it may go on: its run's status and whether its
    run, agent, team or the system is paused (agents.stops.StopState)."""
    with connection.cursor() as cursor:
        cursor.execute(_JOURNAL, [Jsonb(tool_calls), now, step_id])
        return cursor.fetchone()


# --- reads measured faster than the ORM's ------------------------------------------------


@functools.cache
def _agent_by_hash_sql() -> str:
    # Column names come from the models' metadata; the one value is a parameter.
    return (
        f"SELECT {columns(Agent, 'a')}, {columns(Team, 't')} "  # noqa: S608
        "FROM core_agent a JOIN core_team t ON t.id = a.team_id WHERE a.token_hash = %s"
    )


def agent_with_team(digest: str) -> Agent | None:
    """The agent whose token hashes to ``digest``, with its team loaded.

    Every API request makes this lookup: with the ORM's select_related version an
    authenticated GET of a resource took 4.7-5.2 ms of daphne CPU, with this one
    3.6 ms (sequential client, CPU from /proc).
    """
    found = one_row_as(_agent_by_hash_sql(), [digest], Agent, Team)
    if found is None:
        return None
    (agent, team), _ = found
    agent.team = team
    return agent


@functools.cache
def _lock_request_sql() -> str:
    # Column names come from the models' metadata; the one value is a parameter.
    return (
        f"SELECT {columns(LockRequest, 'q')}, {columns(Resource, 'r')}, "  # noqa: S608
        f"{columns(Lock, 'l')} FROM core_lockrequest q "
        "JOIN core_resource r ON r.id = q.resource_id "
        "LEFT JOIN core_lock l ON l.id = q.lock_id WHERE q.id = %s"
    )


def lock_request_with_lock(request_id: int) -> LockRequest | None:
    """The lock request ``request_id`` with its resource and its lock (if granted)
    loaded, the lock's resource being the request's; None if there is none.

    Every poll of a queued request reads this (the API's long polls, the runtime's
    waiting calls): the ORM's select_related version cost about as much CPU as the
    rest of a poll (profiled under bench/locks.py).
    """
    found = one_row_as(_lock_request_sql(), [request_id], LockRequest, Resource, Lock)
    if found is None:
        return None
    (request, resource, lock), _ = found
    request.resource = resource
    if lock.pk is None:  # no lock (LEFT JOIN): the request is not granted
        request.lock = None
    else:
        lock.resource = resource
        request.lock = lock
    return request


# The newest turns whose messages fit in the window (and always the newest one),
# chosen by the database so that only those are sent and decoded.
_TRANSCRIPT = """
SELECT transcript FROM (
    SELECT number, transcript,
           SUM(jsonb_array_length(transcript)) OVER (ORDER BY number DESC) AS upto,
           ROW_NUMBER() OVER (ORDER BY number DESC) AS nth
      FROM core_step
     WHERE run_id = %s AND agent_id = %s AND number < %s AND transcript <> '[]'::jsonb
) AS turns
WHERE upto <= %s OR nth = 1
ORDER BY number
"""


def transcript_turns(run_id: int, agent_id: int, before: int, window: int) -> list[list[Any]]:
    """The agent's turns in this run before step ``before``, oldest first: the most
    recent ones holding at most ``window`` messages, and at least the last one."""
    with connection.cursor() as cursor:
        cursor.execute(_TRANSCRIPT, [run_id, agent_id, before, window])
        return [json.loads(t) if isinstance(t, str) else t for (t,) in cursor.fetchall()]


# --- notifications ------------------------------------------------------------------

_INCIDENT_COLUMNS = [
    "team_id", "kind", "key", "event_kind", "subject_type", "subject_id", "title", "detail",
    "data", "created_at",
]  # fmt: skip


def insert_incident(incident: Any) -> int | None:
    """Insert an incident (core/notifications.py ``NewIncident``) unless one with its
    kind and key exists; return its id, or None if it existed. ``ON CONFLICT DO
    NOTHING``: two transactions inserting the same key at once (two monitors' sweeps)
    give one row, the second waiting for the first to commit, and neither fails, as a
    ``get_or_create`` would without a savepoint of its own."""
    placeholders = ", ".join(["%s"] * len(_INCIDENT_COLUMNS))
    params = [incident.team_id, incident.kind, incident.key, incident.event_kind,
              incident.subject_type, incident.subject_id, incident.title[:300],
              incident.detail, Jsonb(incident.data), timezone.now()]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO core_incident ({', '.join(_INCIDENT_COLUMNS)}) VALUES ({placeholders}) "  # noqa: S608
            "ON CONFLICT (kind, key) DO NOTHING RETURNING id",
            params,
        )
        row = cursor.fetchone()
    return row[0] if row is not None else None


# --- the wait-for graph from one agent (core/deadlocks.py) ------------------------------

# The agents reachable from the seeds over wait-for edges (a waiting request's holders and
# the requests queued ahead of it on its resource, in whatever mode: a superset of the
# real edges, which the caller draws exactly), then the whole queue and the live locks of
# every resource a reached agent waits for, and the reached agents. Each step is an index
# lookup (LATERAL) from what the step before found (OFFSET 0 keeps the planner from
# flattening the subquery into a scan of the whole table), so the cost is what is
# reached, not the board. bench/scale.py, the pre-check alone for a chain of six agents
# (1,000 agents, 500 waits): 1.5 ms with the clock's read (100 agents: 1.4), against
# 12-14 ms for the ORM read level by level (two queries a level) and 6-14 ms for the
# whole graph, which grows with the waits (4.5 ms at 100 agents).
_WAITS_REACHED = """
WITH RECURSIVE reach(agent_id) AS (
    SELECT unnest(%(seeds)s::bigint[])
  UNION
    SELECT x.agent_id
      FROM reach r
      CROSS JOIN LATERAL (
          SELECT w.id, w.resource_id FROM core_lockrequest w
           WHERE w.agent_id = r.agent_id AND w.status = 'waiting' OFFSET 0
      ) w
      CROSS JOIN LATERAL (
          SELECT l.agent_id FROM core_lock l
           WHERE l.resource_id = w.resource_id AND l.released_at IS NULL
             AND l.expires_at > %(now)s
          UNION ALL
          SELECT q.agent_id FROM core_lockrequest q
           WHERE q.resource_id = w.resource_id AND q.status = 'waiting' AND q.id < w.id
      ) x
), waited AS (
    SELECT DISTINCT w.resource_id
      FROM reach r
      CROSS JOIN LATERAL (
          SELECT w.resource_id FROM core_lockrequest w
           WHERE w.agent_id = r.agent_id AND w.status = 'waiting' OFFSET 0
      ) w
)
SELECT 1, q.id, q.agent_id, q.resource_id, q.mode, q.name, q.team_id
  FROM waited
  CROSS JOIN LATERAL (
      SELECT q.id, q.agent_id, q.resource_id, q.mode, res.name, res.team_id
        FROM core_lockrequest q JOIN core_resource res ON res.id = q.resource_id
       WHERE q.resource_id = waited.resource_id AND q.status = 'waiting' OFFSET 0
  ) q
UNION ALL
SELECT 0, l.id, l.agent_id, l.resource_id, l.mode, NULL, NULL
  FROM waited
  CROSS JOIN LATERAL (
      SELECT l.id, l.agent_id, l.resource_id, l.mode FROM core_lock l
       WHERE l.resource_id = waited.resource_id AND l.released_at IS NULL
         AND l.expires_at > %(now)s OFFSET 0
  ) l
UNION ALL
SELECT 2, NULL, agent_id, NULL, NULL, NULL, NULL FROM reach
"""


class WaitsReached(NamedTuple):
    waiting: list[dict[str, Any]]  # pk, agent_id, resource_id, mode, resource__name, ...team_id
    holders: dict[int, list[tuple[int, str]]]  # resource id -> [(agent id, mode)]
    agents: set[int]  # the agents reached, whose every wait is in ``waiting``


def waits_reached(seeds: list[int], now: datetime) -> WaitsReached:
    """The waits and live locks that the wait-for edges out of ``seeds`` reach (through
    the holders and the earlier waiters of what each reached agent waits for), in one
    round trip. ``waiting`` is in queue (id) order."""
    with connection.cursor() as cursor:
        cursor.execute(_WAITS_REACHED, {"seeds": list(seeds), "now": now})
        rows = cursor.fetchall()
    fields = ("pk", "agent_id", "resource_id", "mode", "resource__name", "resource__team_id")
    waiting = sorted(
        (dict(zip(fields, row[1:], strict=True)) for row in rows if row[0] == 1),
        key=lambda request: request["pk"],
    )
    holders: dict[int, list[tuple[int, str]]] = {}
    for _, _, agent_id, resource_id, mode, _, _ in (row for row in rows if row[0] == 0):
        holders.setdefault(resource_id, []).append((agent_id, mode))
    return WaitsReached(waiting, holders, {row[2] for row in rows if row[0] == 2})
