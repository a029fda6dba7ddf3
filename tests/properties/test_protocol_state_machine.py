"""The coordination protocol as a Hypothesis state machine, on the real PostgreSQL database.

A ``RuleBasedStateMachine`` drives four agents of one team and three resources
through the services (lock_acquire, lock_release, lock_renew,
lock_request_cancel, lock_force_release, resource_write, approval_decide,
deadlock_break, agents_set_paused and the monitor's sweep), and keeps a
reference model (:class:`World`) of what the protocol should do: who holds
what with which token, the FIFO queues, fences, versions and values, the
approvals and the open conflicts. Each service's answer is compared with the
model's prediction.

Rules: acquire (exclusive or shared, waiting or fail-fast; a second rule for
the exclusive waiting request that forms lock-order cycles); end a lock
(release, renew, force-release by an operator, or another agent trying to
release it; the lock may have ended already); cancel a request (waiting or
resolved, by its agent or an operator); a lease runs out (with or without an
immediate sweep; mostly a holder that others wait behind) or runs low; the
monitor's sweep; pause or resume an agent; write (with the fence of the
agent's lock, its latest token though the lock ended (a zombie writer), the
current, an old or a future one, or none; the current, an old or a future
version, or none; sometimes asking for approval); approve (perhaps edited),
reject, or decide again an approval; break a deadlock (the operator chooses
the victim among the cycle and the action). The team's policies are drawn per
example: deadlocks broken by an operator or automatically (youngest, least
progress), version conflicts rejected or sent for approval, paused agents'
leases renewed or not, and a resource that requires approval or not.

After every step the invariants below are checked against the database:

* at most one live exclusive holder per resource, never beside a shared one;
* fencing tokens of exclusive grants strictly increase per resource, the
  fences of accepted writes never go back, and the resource's fence is the
  highest token issued (plus the bumps of revocations since);
* no waiter is starved: a waiting request with no incompatible live lock and
  no earlier incompatible waiter on its resource has been granted (for any
  resource that no lapsed, not-yet-marked lease still sits on; after a sweep
  there is none);
* the wait-for graph is the model's, and after a sweep it has a cycle exactly
  when a deadlock Conflict is open (one per strongly connected component);
* the database's locks, queues, values, versions, approvals and open
  conflicts are the model's.

Time: leases are long (TTL); a lease "runs out" when a rule moves its
``expires_at`` to just after its ``acquired_at`` (so it is in the past by the
database clock and the lease check constraint still holds), and "runs low"
when it is moved to LOW_LEASE seconds from now (the sweep then renews the
leases of paused agents if the team says so).

Clean state per example: Hypothesis builds a new machine for each example,
and its ``__init__`` empties every table of the core app with one round trip
of DELETEs, children first (a few milliseconds on these tiny tables;
TRUNCATE, which makes new files for each table and index, cost a quarter of a
second per example here). The test runs with real commits
(``django_db(transaction=True)``): each service owns a durable transaction,
as in production, and its after-commit work (automatic deadlock breaks,
wake-ups) runs; the test's connection does not wait for the WAL flush at
commit. The operator user is created once per test; auth tables are kept.

Determinism: ``derandomize=True`` and no example database; a bounded number
of examples and steps (SETTINGS) keeps the two test cases (deadlocks broken by
an operator; broken automatically) to about half a minute together on two
busy cores. Hypothesis derives the seed from the source of ProtocolMachine:
every run of a given version draws the same examples, and editing the class
draws new ones.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator.core.approvals import approval_decide
from orchestrator.core.control import agents_set_paused
from orchestrator.core.deadlocks import BreakAction, deadlock_break, wait_for_graph
from orchestrator.core.errors import ProtocolError
from orchestrator.core.locks import (
    lock_acquire,
    lock_force_release,
    lock_release,
    lock_renew,
    lock_request_cancel,
)
from orchestrator.core.models import (
    Agent,
    Conflict,
    ConflictKind,
    ConflictPolicy,
    ConflictStatus,
    DeadlockPolicy,
    LockMode,
    LockRequest,
    RequestStatus,
    Team,
)
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create, resource_write

pytestmark = pytest.mark.django_db(transaction=True)

AGENTS = 4
RESOURCES = 3
TTL = 3600  # seconds: no lease runs out by itself during an example
LOW_LEASE = 60  # seconds left on a lease that "runs low" (under TTL / 2: paused renewal)
X, S = LockMode.EXCLUSIVE.value, LockMode.SHARED.value
AUTOMATIC = (DeadlockPolicy.ABORT_YOUNGEST, DeadlockPolicy.ABORT_LEAST_PROGRESS)

SETTINGS = settings(
    max_examples=14,  # per deadlock-policy family (two test cases)
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,  # PostgreSQL latency varies on a shared machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)


# --- the reference model ---------------------------------------------------------------


class Refused(Exception):
    """The model predicts that the service refuses (and rolls everything back)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(eq=False)
class MRequest:
    resource: int
    agent: int
    mode: str
    seq: int  # creation order (requested_at and id grow with it)
    pk: int | None = None
    status: str = RequestStatus.WAITING.value


@dataclass(eq=False)
class MLock:
    resource: int
    agent: int
    mode: str
    token: int
    request: MRequest | None = None  # set when granted from the queue
    pk: int | None = None
    # live | lapsed (the lease ran out; the row is not marked yet) | ended
    state: str = "live"
    end: str = ""
    low: bool = False  # the lease was made to run low


@dataclass(eq=False)
class MResource:
    value: Any = 0
    version: int = 0
    fence: int = 0
    requires_approval: bool = False
    queue: list[MRequest] = field(default_factory=list)
    bumps_since_grant: int = 0  # fence bumps (revoke, force-release) since the last grant
    accepted: list[int | None] = field(default_factory=list)  # fence of each applied write


@dataclass(eq=False)
class MApproval:
    resource: int
    agent: int
    current_version: int
    proposed: Any
    fence: int | None
    has_conflict: bool
    pk: int | None = None
    conflict_pk: int | None = None
    status: str = "pending"
    applied_version: int | None = None


@dataclass(eq=False)
class MDeadlock:
    members: frozenset[int]
    resources: frozenset[int]
    pk: int | None = None


@dataclass
class World:
    """What the protocol should have done: the state the database must show."""

    conflict_policy: str
    deadlock_policy: str
    renew_paused: bool
    resources: list[MResource]
    paused: list[bool]
    locks: list[MLock] = field(default_factory=list)
    requests: list[MRequest] = field(default_factory=list)
    approvals: list[MApproval] = field(default_factory=list)
    deadlocks: dict[frozenset[int], MDeadlock] = field(default_factory=dict)  # open ones
    seq: int = 0

    def copy(self) -> World:
        return copy.deepcopy(self)

    # locks and queues

    def live(self, r: int) -> list[MLock]:
        return [lock for lock in self.locks if lock.resource == r and lock.state == "live"]

    def unmarked(self, r: int) -> list[MLock]:
        return [lock for lock in self.locks if lock.resource == r and lock.state != "ended"]

    def compatible(self, r: int, mode: str) -> bool:
        live = self.live(r)
        return not live if mode == X else all(lock.mode == S for lock in live)

    def grant(self, r: int, agent: int, mode: str, request: MRequest | None = None) -> MLock:
        res = self.resources[r]
        if mode == X:
            res.fence += 1
            res.bumps_since_grant = 0
        lock = MLock(resource=r, agent=agent, mode=mode, token=res.fence, request=request)
        self.locks.append(lock)
        return lock

    def grant_waiters(self, r: int) -> None:
        queue = self.resources[r].queue
        while queue and self.compatible(r, queue[0].mode):
            request = queue.pop(0)
            request.status = RequestStatus.GRANTED.value
            self.grant(r, request.agent, request.mode, request)

    def mark_lapsed(self, r: int) -> None:
        for lock in self.unmarked(r):
            if lock.state == "lapsed":
                lock.state, lock.end = "ended", "expired"

    def touch(self, r: int) -> None:
        """A transaction looked at the resource: lapsed leases end, freed waiters go."""
        self.mark_lapsed(r)
        self.grant_waiters(r)

    def end(self, lock: MLock, end: str) -> None:
        lock.state, lock.end = "ended", end

    def bump(self, r: int) -> None:
        self.resources[r].fence += 1
        self.resources[r].bumps_since_grant += 1

    def fence_ok(self, r: int, agent: int, fence: int) -> bool:
        return fence == self.resources[r].fence and any(
            lock.agent == agent and lock.mode == X and lock.token == fence for lock in self.live(r)
        )

    def apply(self, r: int, value: Any, fence: int | None) -> int:
        res = self.resources[r]
        res.value = value
        res.version += 1
        res.accepted.append(fence)
        return res.version

    # services

    def acquire(self, agent: int, r: int, mode: str, wait: bool) -> tuple[str, Any]:
        self.touch(r)
        mine = next((lock for lock in self.live(r) if lock.agent == agent), None)
        if mine is not None:
            if mine.mode == mode or mine.mode == X:
                return "granted", mine
            raise Refused("upgrade_not_supported")
        queue = self.resources[r].queue
        queued = next((req for req in queue if req.agent == agent), None)
        if queued is not None:
            return "waiting", queued
        if self.compatible(r, mode) and not queue:
            return "granted", self.grant(r, agent, mode)
        if not wait:
            return "busy", None
        self.seq += 1
        request = MRequest(resource=r, agent=agent, mode=mode, seq=self.seq)
        self.requests.append(request)
        queue.append(request)
        return "new_wait", request

    def release(self, lock: MLock, agent: int) -> str:
        self.mark_lapsed(lock.resource)
        if lock.agent != agent:
            raise Refused("not_your_lock")
        if lock.state == "ended":
            self.grant_waiters(lock.resource)
            return "released" if lock.end == "released" else "lost"
        self.end(lock, "released")
        self.grant_waiters(lock.resource)
        return "released"

    def renew(self, lock: MLock, agent: int) -> str:
        self.mark_lapsed(lock.resource)
        if lock.agent != agent:
            raise Refused("not_your_lock")
        self.grant_waiters(lock.resource)
        if lock.state == "ended":
            return "lost"
        lock.low = False
        return "renewed"

    def cancel(self, request: MRequest, agent: int | None) -> str:
        # Looking at the resource ends lapsed leases, which grants the freed waiters
        # in the same transaction (DESIGN.md, protocol step 2), whatever else happens.
        self.mark_lapsed(request.resource)
        if agent is not None and request.agent != agent:
            raise Refused("not_your_request")
        if request.status == RequestStatus.WAITING:
            self.resources[request.resource].queue.remove(request)
            request.status = RequestStatus.CANCELLED.value
        self.grant_waiters(request.resource)
        return request.status

    def force_release(self, lock: MLock) -> str:
        self.mark_lapsed(lock.resource)
        if lock.state == "ended":
            raise Refused("lock_not_live")
        self.end(lock, "force_released")
        self.bump(lock.resource)
        self.grant_waiters(lock.resource)
        return "released"

    def write(
        self,
        agent: int,
        r: int,
        value: Any,
        expected_version: int | None,
        fence: int | None,
        force_approval: bool,
    ) -> tuple[str, MApproval | None]:
        self.touch(r)
        res = self.resources[r]
        if fence is not None:
            if not self.fence_ok(r, agent, fence):
                return "stale_fence", None
        elif any(lock.agent != agent for lock in self.live(r)):
            return "not_holder", None
        if expected_version is not None and expected_version != res.version:
            if self.conflict_policy == ConflictPolicy.ASK_OPERATOR:
                return "approval_pending", self._approval(agent, r, value, fence, conflict=True)
            return "version_conflict", None
        if res.requires_approval or force_approval:
            return "approval_pending", self._approval(agent, r, value, fence, conflict=False)
        self.apply(r, value, fence)
        return "applied", None

    def _approval(
        self, agent: int, r: int, value: Any, fence: int | None, conflict: bool
    ) -> MApproval:
        approval = MApproval(
            resource=r,
            agent=agent,
            current_version=self.resources[r].version,
            proposed=value,
            fence=fence,
            has_conflict=conflict,
        )
        self.approvals.append(approval)
        return approval

    def decide(self, approval: MApproval, approve: bool, edited: Any) -> str:
        if approval.status != "pending":
            raise Refused("already_decided")
        r = approval.resource
        self.touch(r)
        if not approve:
            approval.status = "rejected"
        elif self.resources[r].version != approval.current_version or (
            approval.fence is not None and not self.fence_ok(r, approval.agent, approval.fence)
        ):
            approval.status = "failed"  # moved since shown, or the writer's lock is gone
        else:
            value = approval.proposed if edited is None else edited
            approval.applied_version = self.apply(r, value, approval.fence)
            approval.status = "approved"
        return approval.status

    def deadlock_break(self, deadlock: MDeadlock, victim: int, action: str) -> None:
        if self.deadlocks.get(deadlock.members) is not deadlock:
            raise Refused("already_resolved")
        waits = {
            req.resource
            for req in self.requests
            if req.agent == victim and req.status == RequestStatus.WAITING
        }
        held = {
            lock.resource
            for lock in self.locks
            if lock.agent == victim
            and lock.state != "ended"
            and lock.resource in deadlock.resources
        }
        for r in sorted(waits | held):
            self.mark_lapsed(r)
            queue = self.resources[r].queue
            if action in (BreakAction.ABORT, BreakAction.CANCEL_WAIT):
                for request in [req for req in queue if req.agent == victim]:
                    queue.remove(request)
                    request.status = RequestStatus.ABORTED.value
            if action in (BreakAction.ABORT, BreakAction.REVOKE) and r in deadlock.resources:
                for lock in [lock for lock in self.live(r) if lock.agent == victim]:
                    self.end(lock, "revoked")
                    self.bump(r)
            self.grant_waiters(r)
        del self.deadlocks[deadlock.members]

    def sweep_locks(self) -> None:
        """The monitor's sweep before deadlock detection: paused renewals, then expiries."""
        renewed = []
        for lock in self.locks:
            if lock.state == "live" and lock.low and self.renew_paused and self.paused[lock.agent]:
                lock.low = False
                renewed.append(lock.resource)
        for r in renewed:
            self.touch(r)
        stale = [
            r
            for r in range(len(self.resources))
            if any(lock.state == "lapsed" for lock in self.unmarked(r))
            or (self.resources[r].queue and not self.unmarked(r))
        ]
        for r in stale:
            self.touch(r)

    # the wait-for graph

    def edges(self) -> set[tuple[int, int, int, str]]:
        """(waiter, blocker, resource, kind) as deadlocks.wait_for_graph defines them."""
        found: dict[tuple[int, int, int], str] = {}
        for r, res in enumerate(self.resources):
            ahead: list[MRequest] = []
            for request in res.queue:
                exclusive = request.mode == X
                for lock in self.live(r):
                    if lock.agent != request.agent and (exclusive or lock.mode == X):
                        found.setdefault((request.agent, lock.agent, r), "hold")
                for other in ahead:
                    if other.agent != request.agent and (exclusive or other.mode == X):
                        found.setdefault((request.agent, other.agent, r), "queue")
                ahead.append(request)
        return {(w, b, r, kind) for (w, b, r), kind in found.items()}

    def graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(
            req.agent for res in self.resources for req in res.queue
        )  # every waiting agent is a node
        graph.add_edges_from((w, b) for w, b, _, _ in self.edges())
        return graph

    def components(self) -> list[frozenset[int]]:
        return [frozenset(c) for c in nx.strongly_connected_components(self.graph()) if len(c) > 1]

    def cycle_resources(self, members: frozenset[int]) -> frozenset[int]:
        return frozenset(r for w, b, r, _ in self.edges() if w in members and b in members)

    def youngest(self, members: frozenset[int]) -> int:
        """The agent whose waiting request is the newest (deadlocks.choose_victim)."""
        waiting = [
            req
            for req in self.requests
            if req.agent in members and req.status == RequestStatus.WAITING
        ]
        return max(waiting, key=lambda req: req.seq).agent if waiting else max(members)


# --- the machine ------------------------------------------------------------------------


@functools.cache
def core_tables_in_delete_order() -> list[str]:
    """The core app's tables, each after every table that references it, where the
    references allow (Approval and StandingRule refer to each other: a cycle is cut
    anywhere, since Django's foreign keys are deferred constraints on PostgreSQL and
    every DELETE runs in the one implicit transaction of :func:`reset_tables`)."""
    left = set(apps.get_app_config("core").get_models(include_auto_created=True))
    order = []
    while left:
        free = [
            model
            for model in left
            if not any(
                field.is_relation and field.related_model is model
                for other in left - {model}
                for field in other._meta.concrete_fields
            )
        ]
        free = min(free or left, key=lambda model: model._meta.db_table)
        order.append(free._meta.db_table)
        left.remove(free)
    return order


def reset_tables() -> None:
    """Empty every table of the core app, in one round trip.

    DELETE rather than TRUNCATE: on a few dozen rows it is far cheaper (TRUNCATE
    creates new files for every table and index: about 0.25 s per example on this
    busy machine). Ids are not restarted; nothing depends on their values.
    """
    statements = "; ".join(f"DELETE FROM {table}" for table in core_tables_in_delete_order())
    with connection.cursor() as cursor:
        cursor.execute(statements)


def attempt(call: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """(result, None) or (None, error code) of a service call."""
    try:
        return call(**kwargs), None
    except ProtocolError as exc:
        return None, exc.code


def predict(operation: Any, *args: Any) -> tuple[Any, str | None]:
    """(outcome, None) or (None, refusal code) of a model operation."""
    try:
        return operation(*args), None
    except Refused as refusal:
        return None, refusal.code


agent_indexes = st.integers(min_value=0, max_value=AGENTS - 1)
resource_indexes = st.integers(min_value=0, max_value=RESOURCES - 1)


class ProtocolMachine(RuleBasedStateMachine):
    # Set by the test: the user of operator actions, and the teams' deadlock policies.
    operator: Any = None
    deadlock_policies: tuple[str, ...] = (DeadlockPolicy.ASK_OPERATOR,)

    def __init__(self) -> None:
        super().__init__()
        reset_tables()
        self.begin()
        self.last_deadlock_pk = 0
        self.values = 0

    @initialize(
        data=st.data(),
        conflict_policy=st.sampled_from([ConflictPolicy.REJECT, ConflictPolicy.ASK_OPERATOR]),
        renew_paused=st.booleans(),
        last_requires_approval=st.booleans(),
    )
    def setup(
        self,
        data: st.DataObject,
        conflict_policy: str,
        renew_paused: bool,
        last_requires_approval: bool,
    ) -> None:
        deadlock_policy = data.draw(st.sampled_from(self.deadlock_policies), label="policy")
        team = Team.objects.create(
            name="team",
            deadlock_policy=deadlock_policy,
            conflict_policy=conflict_policy,
            default_lease_ttl=TTL,
            renew_leases_while_paused=renew_paused,
        )
        self.agents = [Agent.objects.create(team=team, name=f"a{i}") for i in range(AGENTS)]
        for agent in self.agents:
            agent.team = team
        approval = [False] * (RESOURCES - 1) + [last_requires_approval]
        self.resource_pks = [
            resource_create(name=f"r{i}", value=0, requires_approval=approval[i], team=team).pk
            for i in range(RESOURCES)
        ]
        self.agent_index = {agent.pk: i for i, agent in enumerate(self.agents)}
        self.resource_index = {pk: i for i, pk in enumerate(self.resource_pks)}
        self.world = World(
            conflict_policy=conflict_policy,
            deadlock_policy=deadlock_policy,
            renew_paused=renew_paused,
            resources=[MResource(requires_approval=flag) for flag in approval],
            paused=[False] * AGENTS,
        )

    # helpers

    def commit(self, trial: World) -> None:
        """Adopt the model's new state and learn the ids of locks granted from queues."""
        pending = {lock.request.pk: lock for lock in trial.locks if lock.pk is None}
        if pending:
            for request_pk, lock_pk in LockRequest.objects.filter(pk__in=pending).values_list(
                "pk", "lock_id"
            ):
                pending[request_pk].pk = lock_pk
        assert all(lock.pk is not None for lock in trial.locks), "a predicted grant is missing"
        self.world = trial

    def observe_deadlocks(
        self,
        trial: World,
        *,
        expected: list[frozenset[int]] | None = None,
        allowed: set[frozenset[int]] = frozenset(),
    ) -> None:
        """Match the deadlock Conflicts an operation opened with the model's.

        ``expected``: exactly these cycles are reported (None: at most one of
        ``allowed``). The model registers them with the resources of their
        cycle, then replays the automatic breaks the team's policy made after
        commit, checking that each chose the youngest waiter as its victim.
        """
        rows = list(
            Conflict.objects.filter(kind=ConflictKind.DEADLOCK, pk__gt=self.last_deadlock_pk)
            .order_by("pk")
            .values("pk", "status", "data")
        )
        created = [
            frozenset(self.agent_index[pk] for pk in row["data"]["agent_ids"]) for row in rows
        ]
        if expected is not None:
            assert sorted(map(sorted, created)) == sorted(map(sorted, expected)), (
                f"reported {created}, expected {expected}"
            )
        else:
            assert len(created) <= 1 and set(created) <= set(allowed), (created, allowed)
        for row, members in zip(rows, created, strict=True):
            event(f"deadlock reported: {len(members)} agents, policy {trial.deadlock_policy}")
            deadlock = MDeadlock(members, trial.cycle_resources(members), row["pk"])
            reported = {self.resource_index[pk] for pk in row["data"]["resource_ids"]}
            assert reported == deadlock.resources
            assert members not in trial.deadlocks
            trial.deadlocks[members] = deadlock
            self.last_deadlock_pk = row["pk"]
        if trial.deadlock_policy in AUTOMATIC:
            # No agent has finished a step here, so least progress also picks the youngest.
            for row, members in zip(rows, created, strict=True):
                victim = trial.youngest(members)
                assert row["status"] == ConflictStatus.RESOLVED
                assert row["data"]["victim"] == self.agents[victim].name
                assert row["data"]["action"] == BreakAction.ABORT
                trial.deadlock_break(trial.deadlocks[members], victim, BreakAction.ABORT)

    def next_value(self) -> int:
        self.values += 1
        return self.values

    # rules: locks

    @rule(
        agent=agent_indexes,
        r=resource_indexes,
        mode=st.sampled_from([X, X, S]),
        wait=st.sampled_from([True, True, True, False]),
    )
    def acquire(self, agent: int, r: int, mode: str, wait: bool) -> None:
        self.begin()
        trial = self.world.copy()
        outcome, refusal = predict(trial.acquire, agent, r, mode, wait)
        result, error = attempt(
            lock_acquire,
            agent=self.agents[agent],
            resource=self.resource_pks[r],
            mode=mode,
            wait=wait,
            ttl=TTL,
        )
        assert error == refusal
        event(f"acquire: {refusal or outcome[0]}")
        if refusal:
            self.observe_deadlocks(self.world.copy(), expected=[])
            return
        status, thing = outcome
        assert result.status == ("waiting" if status == "new_wait" else status)
        if status == "granted":
            assert (result.lock.mode, result.lock.token) == (thing.mode, thing.token)
            assert thing.pk in (None, result.lock.pk)
            thing.pk = result.lock.pk
        elif status == "waiting":
            assert result.request.pk == thing.pk
        if status == "new_wait":
            thing.pk = result.request.pk
            graph = trial.graph()
            mine = next(c for c in nx.strongly_connected_components(graph) if agent in c)
            if len(mine) > 1:
                # The cycle the new request closed is reported by this very transaction.
                mine = frozenset(mine)
                self.observe_deadlocks(trial, expected=[] if mine in trial.deadlocks else [mine])
            else:
                # Waiting behind a cycle that is not reported yet: it may be.
                downstream = nx.descendants(graph, agent)
                unreported = {
                    c for c in trial.components() if c & downstream and c not in trial.deadlocks
                }
                self.observe_deadlocks(trial, allowed=unreported)
        else:
            self.observe_deadlocks(trial, expected=[])
        self.commit(trial)

    @rule(data=st.data())
    def acquire_exclusive(self, data: st.DataObject) -> None:
        """An agent that neither holds nor waits for a resource asks for it exclusively,
        waiting: the usual request of an agent about to write, and how lock-order
        cycles form.

        Its arguments are drawn inside: Hypothesis orders rules by their number of
        arguments and draws the first ones most often, and this one should lead."""
        r = data.draw(resource_indexes, label="resource")
        busy = {lock.agent for lock in self.world.unmarked(r)}
        busy |= {req.agent for req in self.world.resources[r].queue}
        agents = [agent for agent in range(AGENTS) if agent not in busy] or list(range(AGENTS))
        self.acquire(data.draw(st.sampled_from(agents), label="agent"), r, X, True)

    def _pick_lock(self, data: st.DataObject, *, ended_too: bool) -> int:
        """The index of a lock of the model: one not yet ended, or any (ended_too)."""
        pool = [i for i, lock in enumerate(self.world.locks) if ended_too or lock.state != "ended"]
        return data.draw(st.sampled_from(pool), label="lock")

    @precondition(lambda self: any(lock.state != "ended" for lock in self.world.locks))
    @rule(
        data=st.data(),
        how=st.sampled_from(["release", "release", "renew", "wrong_agent"]),
        ended_too=st.sampled_from([False, False, True]),
    )
    def end_lock(self, data: st.DataObject, how: str, ended_too: bool) -> None:
        """The holder releases or renews a lock, another agent tries to release it, or
        an operator force-releases it. The lock may have ended already (lapsed, revoked...)."""
        self.begin()
        index = self._pick_lock(data, ended_too=ended_too)
        trial = self.world.copy()
        lock = trial.locks[index]
        agent = (lock.agent + 1) % AGENTS if how == "wrong_agent" else lock.agent
        if how == "force_release":
            expected, refusal = predict(trial.force_release, lock)
            result, error = attempt(lock_force_release, lock_id=lock.pk, user=self.operator)
        elif how == "renew":
            expected, refusal = predict(trial.renew, lock, agent)
            result, error = attempt(lock_renew, lock_id=lock.pk, agent=self.agents[agent], ttl=TTL)
        else:
            expected, refusal = predict(trial.release, lock, agent)
            result, error = attempt(lock_release, lock_id=lock.pk, agent=self.agents[agent])
        event(f"{how}: {refusal or expected}")
        assert error == refusal
        if not refusal:
            assert result.status == expected
            self.commit(trial)

    @precondition(lambda self: self.world.requests)
    @rule(data=st.data(), by_operator=st.booleans())
    def cancel_request(self, data: st.DataObject, by_operator: bool) -> None:
        """An agent (or an operator) withdraws a request, waiting or already resolved."""
        self.begin()
        index = data.draw(st.integers(0, len(self.world.requests) - 1), label="request")
        trial = self.world.copy()
        request = trial.requests[index]
        agent = None if by_operator else request.agent
        event(f"cancel: {request.status} request")
        expected = trial.cancel(request, agent)
        result = lock_request_cancel(
            request_id=request.pk,
            agent=None if agent is None else self.agents[agent],
            user=self.operator if by_operator else None,
        )
        assert result.status == expected
        self.commit(trial)

    @precondition(lambda self: any(lock.state == "live" for lock in self.world.locks))
    @rule(data=st.data(), how=st.sampled_from(["expire", "expire_and_sweep", "run_low"]))
    def lease(self, data: st.DataObject, how: str) -> None:
        """Time passes for one lease: it runs out (its holder stalled; the monitor sweeps at
        once or later), or it runs low (the sweep renews it if its agent is paused and the
        team keeps paused agents' leases)."""
        self.begin()
        live = [lock for lock in self.world.locks if lock.state == "live"]
        # Mostly a holder that others queue behind: the case the protocol is for.
        blocking = [lock for lock in live if self.world.resources[lock.resource].queue]
        if blocking and data.draw(st.sampled_from([True, True, False]), label="blocking"):
            live = blocking
        lock = data.draw(st.sampled_from(live), label="live lock")
        event(f"lease: {how}")
        if how == "run_low":
            sql = "expires_at = clock_timestamp() + %s * interval '1 second'"
            lock.low = True
        else:
            # Just after its grant: in the past, and still after acquired_at (a constraint).
            sql = "expires_at = acquired_at + %s * interval '1 microsecond'"
            lock.state = "lapsed"
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE core_lock SET {sql} WHERE id = %s",
                [LOW_LEASE if how == "run_low" else 1, lock.pk],
            )
        if how == "expire_and_sweep":
            self.sweep()

    @rule(again=st.sampled_from([False, False, False, True]))
    def sweep(self, again: bool = False) -> None:
        """The monitor's sweep: renewals, expiries, grants, deadlock reports and breaks;
        a second sweep right after it has nothing left to do."""
        self.begin()
        trial = self.world.copy()
        trial.sweep_locks()
        components = trial.components()
        for members in [m for m in trial.deadlocks if m not in components]:
            del trial.deadlocks[members]  # dissolved: the cycle is gone
        monitor_sweep()
        self.observe_deadlocks(trial, expected=[c for c in components if c not in trial.deadlocks])
        self.commit(trial)
        self.swept = True
        if again:
            report = monitor_sweep()
            assert not report and not report.auto_broken and not report.renewed, report

    # rules: the operator

    @rule(data=st.data())
    def operator_acts(self, data: st.DataObject) -> None:
        """An operator acts on what the dashboard shows: breaks an open deadlock, decides
        an approval, force-releases a lock, or pauses or resumes an agent.

        One rule for all of them (Hypothesis's swarm testing switches whole rules off
        per example; an open deadlock should rarely go without an operator)."""
        actions = [
            action
            for action, possible in [
                ("break_deadlock", bool(self.world.deadlocks)),
                ("decide", any(a.status == "pending" for a in self.world.approvals)),
                ("force_release", any(lock.state != "ended" for lock in self.world.locks)),
                ("pause", True),
            ]
            if possible
        ]
        action = data.draw(st.sampled_from(actions), label="operator action")
        if action == "break_deadlock":
            self.break_deadlock(data)
        elif action == "decide":
            self.decide(data)
        elif action == "force_release":
            ended_too = data.draw(st.sampled_from([False, False, True]), label="ended too")
            self.end_lock(data, "force_release", ended_too)
        else:
            agent = data.draw(agent_indexes, label="agent")
            self.pause(agent, data.draw(st.booleans(), label="paused"))

    @precondition(lambda self: self.world.deadlocks)
    @rule(data=st.data())
    def operator_breaks_deadlock(self, data: st.DataObject) -> None:
        """An operator breaks an open deadlock (also among operator_acts, but cycles form
        late in an example and deserve a rule of their own while they are open)."""
        self.break_deadlock(data)

    def pause(self, agent: int, paused: bool) -> None:
        """Pause or resume an agent (a stalled holder: its leases run low or out while it
        is paused, and it may write with its old token afterwards)."""
        self.begin()
        changed = agents_set_paused(agents=[self.agents[agent]], paused=paused, user=self.operator)
        assert changed == (self.world.paused[agent] != paused)
        self.world.paused[agent] = paused

    # rules: writes

    @rule(
        data=st.data(),
        agent=agent_indexes,
        r=resource_indexes,
        fence_kind=st.sampled_from(["mine", "mine", "my_last", "none", "current", "old", "future"]),
        version_kind=st.sampled_from(["none", "current", "current", "old", "future"]),
        force_approval=st.sampled_from([False, False, False, True]),
    )
    def write(
        self,
        data: st.DataObject,
        agent: int,
        r: int,
        fence_kind: str,
        version_kind: str,
        force_approval: bool,
    ) -> None:
        self.begin()
        res = self.world.resources[r]
        mine = [
            lock.token
            for lock in self.world.locks
            if (lock.agent, lock.resource) == (agent, r) and lock.state != "ended"
        ]
        tokens = sorted({lock.token for lock in self.world.locks if lock.resource == r})
        # The zombie: the writer's latest exclusive token here, though its lock may be gone.
        my_last = max(
            (
                lock.token
                for lock in self.world.locks
                if (lock.agent, lock.resource, lock.mode) == (agent, r, X)
            ),
            default=None,
        )
        fence = {
            "none": None,
            "mine": mine[0] if mine else None,
            "my_last": my_last,
            "current": res.fence,
            "old": data.draw(st.sampled_from(tokens), label="old fence") if tokens else 0,
            "future": res.fence + 1,
        }[fence_kind]
        version = {
            "none": None,
            "current": res.version,
            "old": data.draw(st.integers(0, res.version - 1), label="old version")
            if res.version
            else None,
            "future": res.version + 1,
        }[version_kind]
        value = self.next_value()
        trial = self.world.copy()
        status, approval = trial.write(agent, r, value, version, fence, force_approval)
        result = resource_write(
            agent=self.agents[agent],
            resource=self.resource_pks[r],
            value=value,
            expected_version=version,
            fence=fence,
            force_approval=force_approval,
        )
        assert result.status == status, (result.status, result.detail)
        event(f"write: fence {fence_kind}, version {version_kind}: {status}")
        if status == "applied":
            assert result.version == trial.resources[r].version
        if approval is not None:
            approval.pk = result.approval.pk
            approval.conflict_pk = result.conflict.pk if approval.has_conflict else None
            assert result.approval.current_version == approval.current_version
        self.commit(trial)

    def decide(self, data: st.DataObject) -> None:
        """Approve (perhaps with an edited value) or reject a pending approval; or, as a
        second operator, decide one that is already decided."""
        self.begin()
        approve = data.draw(st.booleans(), label="approve")
        edit = data.draw(st.sampled_from([False, False, True]), label="edit")
        decided_one = data.draw(st.sampled_from([False, False, False, True]), label="again")
        decided = [i for i, a in enumerate(self.world.approvals) if a.status != "pending"]
        pending = [i for i, a in enumerate(self.world.approvals) if a.status == "pending"]
        pool = decided if decided_one and decided else pending
        trial = self.world.copy()
        approval = trial.approvals[data.draw(st.sampled_from(pool), label="approval")]
        edited = -self.next_value() if approve and edit else None
        expected, refusal = predict(trial.decide, approval, approve, edited)
        event(f"decide: {refusal or expected}")
        kwargs: dict[str, Any] = {} if edited is None else {"value": edited}
        result, error = attempt(
            approval_decide,
            approval_id=approval.pk,
            decision="approve" if approve else "reject",
            user=self.operator,
            **kwargs,
        )
        assert error == refusal
        if not refusal:
            assert result.approval.status == expected, result.detail
            assert result.approval.applied_version == approval.applied_version
            self.commit(trial)

    def break_deadlock(self, data: st.DataObject) -> None:
        """Break an open deadlock, choosing the victim among its agents, and the action."""
        self.begin()
        keys = sorted(self.world.deadlocks, key=sorted)
        members = data.draw(st.sampled_from(keys), label="deadlock")
        victim = data.draw(st.sampled_from(sorted(members)), label="victim")
        actions = [BreakAction.ABORT, BreakAction.CANCEL_WAIT, BreakAction.REVOKE]
        action = data.draw(st.sampled_from(actions), label="action")
        trial = self.world.copy()
        deadlock = trial.deadlocks[members]
        trial.deadlock_break(deadlock, victim, action)
        event(f"operator breaks a {len(members)}-agent deadlock: {action}")
        deadlock_break(
            conflict_id=deadlock.pk,
            victim_id=self.agents[victim].pk,
            action=action,
            user=self.operator,
        )
        self.commit(trial)
        # Breaking it again is refused, and changes nothing.
        _result, error = attempt(
            deadlock_break,
            conflict_id=deadlock.pk,
            victim_id=self.agents[victim].pk,
            user=self.operator,
        )
        assert error == "already_resolved"

    # invariants, over one snapshot of the database per step

    def begin(self) -> None:
        """A new step: the last snapshot and sweep are out of date."""
        self.swept = False
        self._snapshot: Snapshot | None = None

    @property
    def db(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = Snapshot.take()
        return self._snapshot

    @invariant()
    def one_exclusive_holder_never_beside_a_shared(self) -> None:
        for pk in self.resource_pks:
            live = [lock for lock in self.db.live() if lock["resource_id"] == pk]
            exclusive = [lock for lock in live if lock["mode"] == X]
            assert len(exclusive) <= 1, live
            assert not exclusive or len(live) == 1, live

    @invariant()
    def fences_only_grow(self) -> None:
        for r, pk in enumerate(self.resource_pks):
            model = self.world.resources[r]
            issued = [
                (lock["token"], lock["agent_id"])
                for lock in self.db.locks
                if lock["resource_id"] == pk and lock["mode"] == X
            ]
            tokens = [token for token, _ in issued]
            assert tokens == sorted(set(tokens)), f"exclusive tokens not increasing: {tokens}"
            fence = self.db.resources[pk]["fence"]
            assert fence == max(tokens, default=0) + model.bumps_since_grant
            assert fence == model.fence
            accepted = [(fence, agent) for res, fence, agent in self.db.writes if res == pk]
            fenced = [fence for fence, _ in accepted if fence is not None]
            assert fenced == sorted(fenced), f"accepted fences went back: {fenced}"
            # Every accepted fence was the writer's own exclusive token.
            assert all(fence is None or (fence, agent) in issued for fence, agent in accepted)
            assert [fence for fence, _ in accepted] == model.accepted

    @invariant()
    def no_waiter_starved(self) -> None:
        live = self.db.live()
        for pk in self.resource_pks:
            if any(lock["resource_id"] == pk for lock in self.db.lapsed()):
                assert not self.swept, "a lapsed lease survived the sweep"
                continue  # the next transaction on this resource, or the sweep, ends it
            holders = [lock for lock in live if lock["resource_id"] == pk]
            queue = [
                (req["agent_id"], req["mode"])
                for req in self.db.requests
                if req["resource_id"] == pk and req["status"] == RequestStatus.WAITING
            ]
            for i, (agent, mode) in enumerate(queue):
                blocked = any(
                    lock["agent_id"] != agent and X in (mode, lock["mode"]) for lock in holders
                ) or any(X in (mode, earlier) for _, earlier in queue[:i])
                assert blocked, f"request of agent {agent} on {pk} starves: {holders}, {queue}"

    @invariant()
    def wait_for_graph_and_deadlocks(self) -> None:
        graph = self.db.graph
        found = {
            (self.agent_index[w], self.agent_index[b], self.resource_index[rid], kind)
            for w, b, edge in graph.edges(data=True)
            for rid, kind in edge["resources"].items()
        }
        assert found == self.world.edges()
        open_keys = {
            key for kind, _, key in self.db.open_conflicts if kind == ConflictKind.DEADLOCK
        }
        model_keys = {
            "agents:" + ",".join(str(self.agents[i].pk) for i in sorted(m))
            for m in self.world.deadlocks
        }
        assert open_keys == model_keys
        if self.swept:
            cycles = {
                "agents:" + ",".join(str(pk) for pk in sorted(component))
                for component in nx.strongly_connected_components(graph)
                if len(component) > 1
            }
            assert cycles == open_keys, "after a sweep: one open deadlock per cycle, no other"

    @invariant()
    def database_matches_model(self) -> None:
        world, db = self.world, self.db
        for r, res in enumerate(world.resources):
            row = db.resources[self.resource_pks[r]]
            assert (row["value"], row["version"]) == (res.value, res.version)
        db_locks = {
            lock["pk"]: (
                self.resource_index[lock["resource_id"]],
                self.agent_index[lock["agent_id"]],
                lock["mode"],
                lock["token"],
                "lapsed" if lock["lapsed"] else "live",
                lock["seconds_left"] < TTL / 2,
            )
            for lock in db.locks
            if not lock["released"]
        }
        model_locks = {
            lock.pk: (
                lock.resource,
                lock.agent,
                lock.mode,
                lock.token,
                lock.state,
                lock.low or lock.state == "lapsed",
            )
            for lock in world.locks
            if lock.state != "ended"
        }
        assert db_locks == model_locks
        ended = {lock["pk"]: lock["end"] for lock in db.locks if lock["released"]}
        assert ended == {lock.pk: lock.end for lock in world.locks if lock.state == "ended"}
        queued = [
            req["pk"]
            for pk in self.resource_pks
            for req in db.requests
            if req["resource_id"] == pk and req["status"] == RequestStatus.WAITING
        ]
        assert queued == [req.pk for res in world.resources for req in res.queue]
        statuses = {req["pk"]: req["status"] for req in db.requests}
        assert statuses == {req.pk: req.status for req in world.requests}
        assert db.approvals == {a.pk: (a.status, a.applied_version) for a in world.approvals}
        assert {
            (kind, pk) for kind, pk, _ in db.open_conflicts if kind != ConflictKind.DEADLOCK
        } == {
            (ConflictKind.WRITE_CONFLICT.value, a.conflict_pk)
            for a in world.approvals
            if a.has_conflict and a.status == "pending"
        }
        assert [db.paused[agent.pk] for agent in self.agents] == world.paused


# Everything the invariants read, as of one moment: one statement, one snapshot of all
# the tables, and one reading of the database clock (round trips are what a step costs
# on a busy machine).
SNAPSHOT_SQL = """
WITH clock AS (SELECT clock_timestamp() AS now)
SELECT json_build_object(
  'resources', (SELECT coalesce(json_agg(json_build_object(
      'pk', id, 'value', value, 'version', version, 'fence', fence)), '[]') FROM core_resource),
  'locks', (SELECT coalesce(json_agg(json_build_object(
      'pk', l.id, 'resource_id', l.resource_id, 'agent_id', l.agent_id, 'mode', l.mode,
      'token', l.token, 'end', l."end", 'released', l.released_at IS NOT NULL,
      'lapsed', l.released_at IS NULL AND l.expires_at <= clock.now,
      'seconds_left', extract(epoch FROM l.expires_at - clock.now)) ORDER BY l.id), '[]')
      FROM core_lock l, clock),
  'requests', (SELECT coalesce(json_agg(json_build_object(
      'pk', id, 'resource_id', resource_id, 'agent_id', agent_id, 'mode', mode,
      'status', status) ORDER BY id), '[]') FROM core_lockrequest),
  'writes', (SELECT coalesce(json_agg(json_build_array(resource_id, fence, agent_id)
      ORDER BY resource_id, version), '[]') FROM core_resourceversion WHERE version > 0),
  'approvals', (SELECT coalesce(json_agg(json_build_array(id, status, applied_version)), '[]')
      FROM core_approval),
  'open_conflicts', (SELECT coalesce(json_agg(json_build_array(kind, id, key)), '[]')
      FROM core_conflict WHERE status = 'open'),
  'paused', (SELECT coalesce(json_agg(json_build_array(id, paused)), '[]') FROM core_agent)
)
"""


@dataclass
class Snapshot:
    """What the invariants read (after the step committed)."""

    resources: dict[int, dict[str, Any]]
    locks: list[dict[str, Any]]  # with released, lapsed and seconds_left as of the snapshot
    requests: list[dict[str, Any]]
    writes: list[tuple[int, int | None, int | None]]
    approvals: dict[int, tuple[str, int | None]]
    open_conflicts: set[tuple[str, int, str]]
    paused: dict[int, bool]
    graph: nx.DiGraph

    @classmethod
    def take(cls) -> Snapshot:
        with connection.cursor() as cursor:
            cursor.execute(SNAPSHOT_SQL)
            (rows,) = cursor.fetchone()
        return cls(
            resources={row["pk"]: row for row in rows["resources"]},
            locks=rows["locks"],
            requests=rows["requests"],
            writes=[tuple(row) for row in rows["writes"]],
            approvals={pk: (status, version) for pk, status, version in rows["approvals"]},
            open_conflicts={tuple(row) for row in rows["open_conflicts"]},
            paused=dict(rows["paused"]),
            graph=wait_for_graph(),  # the function under test reads for itself
        )

    def live(self) -> list[dict[str, Any]]:
        return [lock for lock in self.locks if not lock["released"] and not lock["lapsed"]]

    def lapsed(self) -> list[dict[str, Any]]:
        return [lock for lock in self.locks if lock["lapsed"]]


@pytest.mark.parametrize(
    "deadlock_policies",
    [(DeadlockPolicy.ASK_OPERATOR,), AUTOMATIC],
    ids=["operator_breaks_deadlocks", "automatic_deadlock_breaks"],
)
def test_protocol_state_machine(deadlock_policies: tuple[str, ...]) -> None:
    ProtocolMachine.operator = get_user_model().objects.create(username="operator")
    ProtocolMachine.deadlock_policies = deadlock_policies
    with connection.cursor() as cursor:
        # This connection's commits do not wait for the WAL flush (each step commits
        # several times; a crash would only lose the test database).
        cursor.execute("SET synchronous_commit TO off")
    try:
        run_state_machine_as_test(ProtocolMachine, settings=SETTINGS)
    finally:
        ProtocolMachine.operator = None
