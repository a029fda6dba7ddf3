"""Every kind of event, declared once: its payload's fields, typed, and the
dashboard entities it touches.

``events.event_emit`` refuses a kind that is not declared here, and a payload
whose fields are missing, unknown or of another type: that is a programming
error, raised before anything is written (tests/core/test_kinds.py emits every
kind the code emits). The dashboard's change tracking
(``dashboard.selectors.board.Touched``) reads the entities from here: which
payload fields hold the id of a resource or a run, and whether the kind changes
the wait-for graph. The events page's filter lists :data:`FILTERS`.

An event also names its agent, its team and its subject (a row), outside the
payload; ``subject`` says which model that is, for a reader of the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NoneType = type(None)

# The dashboard entities an event can touch. Its agent and its subject always count
# (a lock's or a step's subject names its agent and resource or run; a team's, its
# agents); payload fields declared with an entity name more. In ``touches``: GRAPH
# marks the kinds that change the deadlocks the Graph page shows, COUNTS those that
# change how many approvals or conflicts are open (the navigation bar's numbers),
# SYSTEM those that pause or resume everything.
RUNS, RESOURCES, GRAPH, COUNTS, SYSTEM = "runs", "resources", "graph", "counts", "system"


@dataclass(frozen=True)
class Field:
    """A payload field: the JSON types it may have, and, for an id, the entity it names."""

    types: tuple[type, ...]
    optional: bool = False
    entity: str | None = None


TEXT = Field((str,))
NUMBER = Field((int,))
MAYBE_NUMBER = Field((int, NoneType))
MAYBE_TEXT = Field((str, NoneType))
FLAG = Field((bool,))
NAMES = Field((list,))
RESOURCE_ID = Field((int,), entity=RESOURCES)
RUN_ID = Field((int,), entity=RUNS)


class EventPayloadError(ValueError):
    """An event whose kind is not declared, or whose payload does not match its kind."""


@dataclass(frozen=True)
class EventKind:
    name: str
    subject: str  # the model of the event's subject ("" for none)
    fields: Mapping[str, Field] = field(default_factory=dict)
    touches: frozenset[str] = frozenset()  # of GRAPH, COUNTS, SYSTEM

    def check(self, payload: Mapping[str, Any]) -> None:
        """Raise EventPayloadError unless ``payload`` has exactly this kind's fields."""
        unknown = sorted(set(payload) - set(self.fields))
        if unknown:
            raise EventPayloadError(f"{self.name}: unknown payload field(s) {', '.join(unknown)}")
        for name, spec in self.fields.items():
            if name not in payload:
                if not spec.optional:
                    raise EventPayloadError(f"{self.name}: payload field {name!r} is missing")
                continue
            value = payload[name]
            # bool is an int in Python; a field of numbers takes no booleans.
            wrong = not isinstance(value, spec.types) or (
                isinstance(value, bool) and bool not in spec.types
            )
            if wrong:
                allowed = " or ".join(t.__name__ for t in spec.types)
                raise EventPayloadError(
                    f"{self.name}: payload field {name!r} must be {allowed}, "
                    f"not {type(value).__name__}"
                )

    def entity_ids(self, payload: Mapping[str, Any]) -> dict[str, set[int]]:
        """The ids of dashboard entities that this payload names, by entity."""
        found: dict[str, set[int]] = {}
        for name, spec in self.fields.items():
            value = payload.get(name)
            if spec.entity and isinstance(value, int) and not isinstance(value, bool):
                found.setdefault(spec.entity, set()).add(value)
        return found


def _kinds(*kinds: EventKind) -> dict[str, EventKind]:
    return {kind.name: kind for kind in kinds}


_LOCK = {
    "resource": TEXT,
    "resource_id": RESOURCE_ID,
    "mode": TEXT,
    "fence": NUMBER,
    "holder": TEXT,
}
_REQUEST_END = {"resource": TEXT, "agent": TEXT, "reason": TEXT}
_STEP = {"run": RUN_ID, "number": NUMBER}
_DECIDED = {
    "approval": NUMBER,
    "resource": TEXT,
    "agent": TEXT,
    "edited": FLAG,
    "detail": TEXT,
    "version": MAYBE_NUMBER,
    # Decided by a standing rule (core/policies.py): its id; by a deadline: "deadline".
    "rule": Field((int,), optional=True),
    "by_policy": Field((str,), optional=True),
}

KINDS: dict[str, EventKind] = _kinds(
    # Teams, agents and the switchboard (core/agents.py, core/control.py, core/tokens.py).
    EventKind("team.created", "team"),
    EventKind("team.paused", "team"),
    EventKind("team.resumed", "team"),
    EventKind("agent.created", "agent"),
    # By an operator; or by the team's policy (actor "policy", core/control.py), saying why.
    EventKind("agent.paused", "agent", {"reason": Field((str,), optional=True)}),
    EventKind("agent.resumed", "agent"),
    EventKind("agent.token_reset", "agent"),
    EventKind("agent.finished", "agent", {"run": RUN_ID, "why": TEXT}),
    EventKind("agent.failed", "agent", {"run": RUN_ID, "why": TEXT}),
    EventKind("system.paused", "switchboard", touches=frozenset({SYSTEM})),
    EventKind("system.resumed", "switchboard", touches=frozenset({SYSTEM})),
    # Locks and lock requests (core/queue.py, core/locks.py).
    EventKind(
        "lock.granted",
        "lock",
        # waited: seconds from the request's queueing to the grant (a queued request only).
        {**_LOCK, "expires_at": TEXT, "waited": Field((int, float), optional=True)},
    ),
    EventKind("lock.released", "lock", _LOCK),
    EventKind("lock.expired", "lock", _LOCK),
    EventKind("lock.revoked", "lock", _LOCK),
    EventKind("lock.force_released", "lock", _LOCK),
    EventKind(
        "lock.renewed",
        "lock",
        {"resource": TEXT, "resource_id": RESOURCE_ID, "expires_at": TEXT},
    ),
    EventKind(
        "lock.waiting",
        "lockrequest",
        {
            "resource": TEXT,
            "resource_id": RESOURCE_ID,
            "mode": TEXT,
            "holders": NAMES,
            "ahead": NUMBER,
            # The lock set this request is of (core/lock_sets.py), if any.
            "lock_set": Field((int,), optional=True),
        },
    ),
    # Lock sets (core/lock_sets.py): granted as a whole, or ended while waiting.
    EventKind("lockset.granted", "lockset", {"resources": NAMES, "mode": TEXT, "expires_at": TEXT}),
    EventKind("lockset.ended", "lockset", {"resources": NAMES, "status": TEXT, "reason": TEXT}),
    EventKind("request.cancelled", "lockrequest", _REQUEST_END),
    EventKind("request.aborted", "lockrequest", _REQUEST_END),
    # Resources and writes (core/resources.py, core/writes.py).
    EventKind("resource.created", "resource", {"resource": TEXT, "requires_approval": FLAG}),
    EventKind(
        "resource.written",
        "resource",
        {
            "resource": TEXT,
            "version": NUMBER,
            "fence": MAYBE_NUMBER,
            "approval": MAYBE_NUMBER,
            "by": MAYBE_TEXT,
            # An unguarded write (the scenarios' no-protocol baseline) says so.
            "unguarded": Field((bool,), optional=True),
            "base_version": Field((int, NoneType), optional=True),
        },
    ),
    EventKind(
        "write.rejected",
        "resource",
        {
            "resource": TEXT,
            "error": TEXT,
            "fence": Field((int,), optional=True),
            "expected_version": Field((int, NoneType), optional=True),
            "current_version": Field((int,), optional=True),
        },
    ),
    # Conflicts and deadlocks (core/conflicts.py, core/deadlocks.py, core/approvals.py).
    EventKind(
        "conflict.opened",
        "conflict",
        {"kind": TEXT, "resource": TEXT, "detail": TEXT, "status": TEXT},
        frozenset({GRAPH, COUNTS}),
    ),
    # A refusal that repeats a recent one (same kind, agent and resource): counted on
    # that conflict, whose row is not added again.
    EventKind(
        "conflict.repeated",
        "conflict",
        {"kind": TEXT, "resource": TEXT, "detail": TEXT, "occurrences": NUMBER},
    ),
    EventKind(
        "conflict.resolved",
        "conflict",
        {"kind": TEXT, "resolution": TEXT},
        frozenset({GRAPH, COUNTS}),
    ),
    EventKind(
        "deadlock.detected",
        "conflict",
        {
            "conflict": NUMBER,
            "agents": NAMES,
            "resources": NAMES,
            "detail": TEXT,
            "policy": TEXT,
        },
        frozenset({GRAPH, COUNTS}),
    ),
    EventKind(
        "deadlock.broken",
        "conflict",
        {"conflict": NUMBER, "victim": TEXT, "action": TEXT, "resolution": TEXT},
        frozenset({GRAPH, COUNTS}),
    ),
    # Approvals (core/approvals.py).
    EventKind(
        "approval.requested",
        "approval",
        {
            "approval": NUMBER,
            "resource": TEXT,
            "reason": TEXT,
            "base_version": MAYBE_NUMBER,
            "current_version": NUMBER,
        },
        frozenset({COUNTS}),
    ),
    # An operator's approval or rejection of an approval that needs several (core/policies.py).
    EventKind(
        "approval.voted",
        "approval",
        {
            "approval": NUMBER,
            "resource": TEXT,
            "agent": TEXT,
            "decision": TEXT,
            "approvals": NUMBER,
            "required": NUMBER,
            "counted": FLAG,
        },
    ),
    # The deadline passed under an escalating policy: the second group is told, and the
    # deadline extended once.
    EventKind(
        "approval.escalated",
        "approval",
        {
            "approval": NUMBER,
            "resource": TEXT,
            "agent": TEXT,
            "group": TEXT,
            "group_id": NUMBER,
            "deadline_at": TEXT,
        },
    ),
    EventKind("approval.approved", "approval", _DECIDED, frozenset({COUNTS})),
    EventKind("approval.rejected", "approval", _DECIDED, frozenset({COUNTS})),
    EventKind("approval.failed", "approval", _DECIDED, frozenset({COUNTS})),
    # Runs and steps (agents/runtime.py, agents/recovery.py).
    # Standing rules (core/policies.py).
    EventKind(
        "rule.created",
        "standingrule",
        {"rule": NUMBER, "action": TEXT, "agent": MAYBE_TEXT, "resource": TEXT},
    ),
    EventKind("rule.revoked", "standingrule", {"rule": NUMBER}),
    EventKind("run.started", "run", {"run": RUN_ID, "goal": TEXT, "agents": NAMES}),
    EventKind("run.paused", "run"),
    EventKind("run.resumed", "run"),
    EventKind("run.finished", "run", {"run": RUN_ID}),
    EventKind("run.failed", "run", {"run": RUN_ID}),
    EventKind("run.cancelled", "run", {"run": RUN_ID}),
    EventKind("step.started", "step", {**_STEP, "attempt": NUMBER}),
    EventKind("step.waiting", "step", {**_STEP, "tools": NAMES}),
    EventKind("step.done", "step", {**_STEP, "tools": NAMES}),
    EventKind("step.failed", "step", {"error": TEXT}),
    EventKind("step.deferred", "step", {"reason": TEXT}),
    EventKind("step.retried", "step", {**_STEP, "attempt": NUMBER, "why": TEXT}),
)

# The events page's filter: each family, and the lock kinds one by one.
FILTERS: list[str] = [
    "lock.",
    *[name for name in KINDS if name.startswith("lock.")],
    *sorted({name.split(".")[0] + "." for name in KINDS} - {"lock."}),
]


def event_kind(name: str) -> EventKind:
    """The declared kind ``name``; EventPayloadError if there is none."""
    try:
        return KINDS[name]
    except KeyError:
        raise EventPayloadError(f"event kind {name!r} is not declared in core/kinds.py") from None
