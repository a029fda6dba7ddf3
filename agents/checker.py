"""The run checker: what went wrong in a run, read from the event log and the data.

It trusts nothing the agents said about themselves beyond what the services
recorded: the ``resource.written`` events (commit-ordered ids, writer, fence),
the Lock history (each lock's grant and end events), the steps' tool calls
(which version each agent read before it wrote: a read, or a grant, which carries
the value and version) and the resources' values.

Anomalies it counts:

* **double bookings**: a booking slot (a resource named ``...slot-...``) that
  more than one agent booked successfully, or whose value lists more than one
  booking; each booking beyond the first counts;
* **lost updates**: an applied write whose base (the ``expected_version`` it
  named, or else the version its agent last read) is not the version just
  before it, so the versions in between were overwritten unseen; or a counter
  (integer values) that does not end at its start plus its applied increments
  (below it, increments were lost; above it, decrements: a transfer's debit);
* **non-holder writes**: a write by an agent that held no live exclusive lock
  on the resource when it was applied (by event order; unguarded writes count);
* **overlapping holds**: two locks on one resource, at least one exclusive,
  live at the same time (by event order);

and, in a run of coding agents (agents that run elsewhere and journal Claude
Code's ``Read`` and ``Write`` tools on the files of a repository: agents/external.py,
agents/coding.py), where each applied Write names the file (``resource``), its
whole new ``content``, the ``edit`` it makes (a line it adds) and its place in the
order of all writes:

* **stale overwrites**: a Write based on content older than the file's then-current
  version (its base, what its agent last read or wrote of the file, is not what the
  write before it left, or the file's first content: the resource's version 0,
  ``{"sha256": ...}``), so the versions in between were overwritten unseen;
* **lost edits**: an edit missing from its file's final content (what the last
  write left);

and the agents of the run that never finished (no successful ``finish``).

The verdict (``RunReport.ok``) is OK only for a run that finished, with every
agent finished and no anomaly; anything else fails it, with the reasons in
``RunReport.failures``: a run that failed, was cancelled or is still going, an
agent that did not finish, an anomaly. An unguarded run therefore fails it when
its agents did the damage the protocol prevents, which is what it is for.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.backends.scripted import read_in
from orchestrator.core.models import Event, Lock, LockMode, Resource, ResourceVersion, Run, Step
from orchestrator.core.tenancy import split_name

KINDS = ("double_bookings", "lost_updates", "non_holder_writes", "overlapping_holds")
FILE_KINDS = ("lost_edits", "stale_overwrites")  # counted for runs that edit files
FILE_TOOLS = ("Read", "Write")  # Claude Code's, as coding agents journal them
# Not needed here, and large: an agent's config holds its whole script, loaded once per
# step or lock otherwise (a long fault run's check took over 20 GB).
HEAVY_STEP_FIELDS = ("agent__config", "transcript", "decision")
BOOKING_MARK = "slot-"
NEVER = float("inf")
RUN_NOT_FINISHED = {
    "running": "the run has not ended",
    "failed": "the run failed",
    "cancelled": "the run was cancelled",
}


@dataclass
class Anomaly:
    kind: str  # one of KINDS
    resource: str
    detail: str


@dataclass
class RunReport:
    run: int
    status: str  # running | finished | failed | cancelled
    unguarded: bool
    agents: list[str]
    unfinished_agents: list[str]
    resources: list[str]
    writes: int
    steps: int
    anomalies: list[Anomaly] = field(default_factory=list)
    edits: int = 0  # file writes applied by coding agents (FILE_TOOLS)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The anomalies counted for this run: FILE_KINDS too for a run that edited files."""
        return KINDS + FILE_KINDS if self.edits else KINDS

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.kinds, 0)
        for anomaly in self.anomalies:
            counts[anomaly.kind] += 1
        return counts

    @property
    def total(self) -> int:
        return len(self.anomalies)

    @property
    def failures(self) -> list[str]:
        """Why the run is not OK, for people; empty when it is."""
        reasons = []
        if self.status != Run.Status.FINISHED:
            reasons.append(RUN_NOT_FINISHED[self.status])
        if self.unfinished_agents:
            count = len(self.unfinished_agents)
            reasons.append(f"{count} agent{'s' * (count != 1)} did not finish")
        if self.anomalies:
            reasons.append(f"{self.total} anomal{'ies' if self.total != 1 else 'y'}")
        return reasons

    @property
    def ok(self) -> bool:
        """The run finished, every agent of it finished, and nothing went wrong."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``ok`` is the verdict, ``anomalies`` holds the counts,
        ``details`` the findings; ``edits`` the file writes, for a run that edited files."""
        edits = {"edits": self.edits} if self.edits else {}
        return {
            "run": self.run,
            "ok": self.ok,
            "status": self.status,
            "unguarded": self.unguarded,
            "anomalies": self.counts(),
            "unfinished_agents": self.unfinished_agents,
            "agents": self.agents,
            "resources": self.resources,
            "writes": self.writes,
            "steps": self.steps,
            **edits,
            "details": [asdict(anomaly) for anomaly in self.anomalies],
        }


def _status(run: Run) -> str:
    if run.status in (Run.Status.FINISHED, Run.Status.FAILED, Run.Status.CANCELLED):
        return run.status
    return "running"


@dataclass
class _Write:
    event_id: int
    agent_id: int
    agent: str
    resource: str
    version: int
    unguarded: bool


def _window(run: Run) -> tuple[int, float]:
    """The event ids of the run's start and end (end: infinity while it runs)."""
    marks = dict(
        Event.objects.filter(subject_type="run", subject_id=run.pk)
        .filter(kind__in=["run.started", f"run.{run.status}"])
        .values_list("kind", "id")
    )
    start = marks.get("run.started", 0)
    end = marks.get(f"run.{run.status}") if run.status != Run.Status.RUNNING else None
    return start, end if end is not None else NEVER


def _walk_steps(steps: list[Step]) -> tuple[list[Anomaly], dict[str, int], set[str], set[str]]:
    """Replay each agent's tool calls: stale-based writes, counter increments, finishers."""
    anomalies: list[Anomaly] = []
    increments: dict[str, int] = defaultdict(int)
    names: set[str] = set()
    finished: set[str] = set()
    last_read: dict[tuple[int, str], dict[str, Any]] = {}
    for step in steps:
        for call in step.tool_calls or []:
            args, result = call.get("arguments") or {}, call.get("result") or {}
            resource = args.get("resource") if isinstance(args, dict) else None
            if call["tool"] == "finish" and result.get("ok"):
                finished.add(step.agent.name)
            # A grant carries the value and version, as a read does (acquire_all: each lock).
            for name in _named(args, call["tool"]):
                seen = read_in(call["tool"], args, result, name)
                if seen is not None:
                    last_read[(step.agent_id, name)] = seen
            if not isinstance(resource, str):
                continue
            names.add(resource)
            key = (step.agent_id, resource)
            if call["tool"] == "write" and result.get("status") == "applied":
                seen = last_read.get(key, {})
                base = args.get("expected_version")
                if not isinstance(base, int) or isinstance(base, bool):
                    base = seen.get("version")
                version = result["version"]
                if base is not None and base != version - 1:
                    anomalies.append(
                        Anomaly(
                            "lost_updates",
                            resource,
                            f"{step.agent.name} wrote version {version} based on version "
                            f"{base}: the versions in between were overwritten unseen",
                        )
                    )
                value, before = args.get("value"), seen.get("value", 0)
                if _is_int(value) and _is_int(before):
                    increments[resource] += value - before
    return anomalies, increments, names, finished


def _named(args: Any, tool: str) -> list[Any]:
    """The resources a call names: its ``resource``, or an ``acquire_all``'s list."""
    if not isinstance(args, dict):
        return []
    if tool == "acquire_all" and isinstance(args.get("resources"), list):
        return [name for name in args["resources"] if isinstance(name, str)]
    return [args["resource"]] if isinstance(args.get("resource"), str) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run(*, run_id: int) -> RunReport:
    """Check one run's invariants. Read-only; raises Run.DoesNotExist for an unknown id."""
    run = Run.objects.get(pk=run_id)
    steps = list(
        Step.objects.filter(run=run)
        .select_related("agent")
        .defer(*HEAVY_STEP_FIELDS)
        .order_by("agent_id", "number")
    )
    agents = {step.agent_id: step.agent.name for step in steps}
    stale, increments, names, finished = _walk_steps(steps)
    resources = _resources_named(run.team_id, names)
    name_of = {res.pk: name for name, res in resources.items()}
    start, end = _window(run)
    writes = [
        _Write(
            event.pk,
            event.agent_id,
            agents[event.agent_id],
            name_of[event.subject_id],
            event.payload.get("version"),
            bool(event.payload.get("unguarded")),
        )
        for event in Event.objects.filter(
            kind="resource.written",
            agent_id__in=list(agents),
            subject_type="resource",
            subject_id__in=list(name_of),
            id__gt=start,
        ).order_by("id")
        if event.pk < end
    ]
    report = RunReport(
        run=run.pk,
        status=_status(run),
        unguarded=run.unguarded,
        agents=sorted(agents.values()),
        unfinished_agents=sorted(set(agents.values()) - finished),
        resources=sorted(resources),
        writes=len(writes),
        steps=len(steps),
    )
    report.anomalies += _double_bookings(resources, writes)
    own_writes = defaultdict(int)
    for write in writes:
        own_writes[write.resource] += 1
    report.anomalies += stale + _counter_deficits(resources, increments, stale, own_writes)
    intervals = _lock_intervals(resources, agents)
    report.anomalies += _non_holder_writes(writes, intervals)
    report.anomalies += _overlapping_holds(intervals)
    file_writes = _file_writes(steps)
    report.edits = len(file_writes)
    report.anomalies += _file_anomalies(file_writes, resources)
    return report


def _resources_named(team_id: int, names: set[str]) -> dict[str, Resource]:
    """The run team's resources, and those its agents named, keyed by the names the
    agents use (core/tenancy.py): a resource of their team by its name, another
    team's (shared with theirs) as ``owner::name``."""
    found = {res.name: res for res in Resource.objects.filter(team_id=team_id)}
    for name in names - set(found):
        owner, plain = split_name(name)
        if owner is not None:
            res = Resource.objects.filter(team__name=owner, name=plain).first()
            if res is not None:
                found[name] = res
    return found


def _double_bookings(resources: dict[str, Resource], writes: list[_Write]) -> list[Anomaly]:
    found = []
    for name, res in sorted(resources.items()):
        if BOOKING_MARK not in name:
            continue
        bookers = sorted({w.agent for w in writes if w.resource == name})
        held = len(res.value) if isinstance(res.value, list) else 0
        extra = max(len(bookers), held) - 1
        for _ in range(max(extra, 0)):
            found.append(
                Anomaly(
                    "double_bookings",
                    name,
                    f"booked by {', '.join(bookers)}; it now holds {res.value!r}",
                )
            )
    return found


def _counter_deficits(
    resources: dict[str, Resource],
    increments: dict[str, int],
    stale: list[Anomaly],
    own_writes: dict[str, int],
) -> list[Anomaly]:
    """Counters that lost increments (or decrements) beyond the stale-based writes
    already counted. Above its start plus the run's changes counts only for a counter
    that nobody else wrote (its every version is one of this run's writes): another run
    sharing it (a grant) adds what this one does not know of."""
    found = []
    counted = defaultdict(int)
    for anomaly in stale:
        counted[anomaly.resource] += 1
    name_of = {resources[name].pk: name for name in increments if name in resources}
    initial = {
        name_of[resource_id]: value
        for resource_id, value in ResourceVersion.objects.filter(
            resource_id__in=list(name_of), version=0
        ).values_list("resource_id", "value")
    }
    for name, added in sorted(increments.items()):
        if name not in resources:  # a name that matched nothing: its calls failed
            continue
        start, final = initial.get(name), resources[name].value
        if not (_is_int(start) and _is_int(final)):
            continue
        missing = start + added - final
        if missing < 0 and resources[name].version == own_writes.get(name, 0):
            missing = -missing  # only this run wrote it: a lost debit left it above
        for _ in range(max(missing - counted[name], 0)):
            found.append(
                Anomaly(
                    "lost_updates",
                    name,
                    f"counter is {final}, but it started at {start} and {added} was added",
                )
            )
    return found


@dataclass
class _Interval:
    lock: int
    agent_id: int
    agent: str
    resource: str
    mode: str
    token: int
    start: float
    end: float


def _lock_intervals(resources: dict[str, Resource], agents: dict[int, str]) -> list[_Interval]:
    """Every lock on the run's resources, live from its grant event to its end event."""
    by_id = {res.pk: name for name, res in resources.items()}
    locks = list(
        Lock.objects.filter(resource_id__in=list(by_id))
        .select_related("agent")
        .defer("agent__config")
        .order_by("pk")
    )
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for kind, lock_id, event_id in (
        Event.objects.filter(subject_type="lock", subject_id__in=[lock.pk for lock in locks])
        .exclude(kind="lock.renewed")
        .order_by("id")
        .values_list("kind", "subject_id", "id")
    ):
        if kind == "lock.granted":
            starts.setdefault(lock_id, event_id)
        else:
            ends.setdefault(lock_id, event_id)
    return [
        _Interval(
            lock.pk,
            lock.agent_id,
            lock.agent.name,
            by_id[lock.resource_id],
            lock.mode,
            lock.token,
            starts.get(lock.pk, 0),
            ends.get(lock.pk, NEVER),
        )
        for lock in locks
    ]


def _non_holder_writes(writes: list[_Write], intervals: list[_Interval]) -> list[Anomaly]:
    found = []
    for write in writes:
        held = any(
            i.agent_id == write.agent_id
            and i.resource == write.resource
            and i.mode == LockMode.EXCLUSIVE
            and i.start < write.event_id < i.end
            for i in intervals
        )
        if not held:
            found.append(
                Anomaly(
                    "non_holder_writes",
                    write.resource,
                    f"{write.agent} wrote version {write.version} holding no exclusive lock"
                    + (" (unguarded)" if write.unguarded else ""),
                )
            )
    return found


def _overlapping_holds(intervals: list[_Interval]) -> list[Anomaly]:
    found = []
    by_resource: dict[str, list[_Interval]] = defaultdict(list)
    for interval in intervals:
        by_resource[interval.resource].append(interval)
    for name, held in sorted(by_resource.items()):
        held.sort(key=lambda i: i.start)
        for index, first in enumerate(held):
            for second in held[index + 1 :]:
                if second.start >= first.end:
                    continue
                if LockMode.EXCLUSIVE in (first.mode, second.mode):
                    found.append(
                        Anomaly(
                            "overlapping_holds",
                            name,
                            f"{first.agent} ({first.mode}, lock #{first.lock}) and "
                            f"{second.agent} ({second.mode}, lock #{second.lock}) held it at once",
                        )
                    )
    return found


@dataclass
class _FileWrite:
    order: float  # its place in the order of all writes (NEVER if it has none)
    index: int  # in the journals' order, to break ties
    agent: str
    file: str
    edit: str | None
    sha256: str
    content: str
    base: str | None  # the hash of what its agent last read or wrote of the file


def _hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _file_writes(steps: list[Step]) -> list[_FileWrite]:
    """The applied Writes of the run's coding agents, in the order they happened, each
    with its base: the hash of what its agent last read or wrote of that file."""
    seen: dict[tuple[int, str], str | None] = {}
    writes: list[_FileWrite] = []
    for step in steps:  # by agent, then number: each agent's journal in its own order
        for call in step.tool_calls or []:
            args, result = call.get("arguments") or {}, call.get("result") or {}
            file = args.get("resource") if isinstance(args, dict) else None
            if call.get("tool") not in FILE_TOOLS or not isinstance(file, str):
                continue
            key = (step.agent_id, file)
            if call["tool"] == "Read" and result.get("ok"):
                seen[key] = result.get("sha256")
            elif result.get("status") == "applied" and isinstance(args.get("content"), str):
                order = result.get("order")
                edit = args.get("edit")
                writes.append(
                    _FileWrite(
                        order if _is_int(order) else NEVER,
                        len(writes),
                        step.agent.name,
                        file,
                        edit if isinstance(edit, str) and edit else None,
                        _hash(args["content"]),
                        args["content"],
                        seen.get(key),
                    )
                )
                seen[key] = writes[-1].sha256
    return sorted(writes, key=lambda write: (write.order, write.index))


def _file_anomalies(writes: list[_FileWrite], resources: dict[str, Resource]) -> list[Anomaly]:
    """Stale overwrites and lost edits, file by file (see the module docstring)."""
    by_file: dict[str, list[_FileWrite]] = defaultdict(list)
    for write in writes:
        by_file[write.file].append(write)
    ids = {resources[name].pk: name for name in by_file if name in resources}
    first = {
        ids[resource_id]: value.get("sha256")
        for resource_id, value in ResourceVersion.objects.filter(
            resource_id__in=list(ids), version=0
        ).values_list("resource_id", "value")
        if isinstance(value, dict)
    }
    found = []
    for name, chain in sorted(by_file.items()):
        versions = [first.get(name)]  # each version's hash; version 0's may be unknown
        for number, write in enumerate(chain, start=1):
            current = versions[-1]
            if current is not None and write.base != current:
                based = [v for v in range(number) if versions[v] == write.base]
                found.append(
                    Anomaly(
                        "stale_overwrites",
                        name,
                        f"{write.agent} wrote version {number} based on "
                        + (f"version {based[-1]}" if based else "content it had not read")
                        + ": the versions in between were overwritten unseen",
                    )
                )
            versions.append(write.sha256)
        final = chain[-1]
        for write in chain:
            if write.edit is not None and write.edit not in final.content:
                found.append(
                    Anomaly(
                        "lost_edits",
                        name,
                        f"{write.agent}'s edit {write.edit!r} is not in the final file "
                        f"(version {len(chain)}, written by {final.agent})",
                    )
                )
    return found
