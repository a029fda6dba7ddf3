"""What must hold after a fault run, read from the database alone.

``check`` returns the problems found (an empty list when every invariant holds)
and the figures of the run. The invariants:

* **runs ended**: every run finished or failed; every step is done or failed;
  an agent that failed has its ``agent.failed`` event (an explicit failure).
* **no lost update**: each counter's value equals its version and its number of
  applied writes, and equals the number of writes its agents were told were
  applied (their journals); every version in its history is the one before plus 1.
* **no double booking**: a slot has at most one applied write, by the agent its
  value names; ``agents.checker`` finds no double booking, lost update, write by
  a non-holder or overlapping exclusive holds in either run.
* **zombies**: at least one zombie incident happened; the zombie never wrote
  with its lost token; its next write on that resource was rejected as
  ``stale_fence`` and a stale_fence Conflict records that token.
* **locks**: at the end no lock is live and no request waits; a lease that
  expired ended no earlier than it was due; no request was ever queued behind an
  expired lease (the lock manager treats expired leases as free); exclusive holds
  of a resource never overlap on the database clock; every applied write carries
  the fence of a lock its writer held, and its event lies between that lock's
  grant and end events; every lock held by the agent of a killed worker ended.
* **event log**: each applied write has exactly one ``resource.written`` event with
  its resource, version, fence and writer, and nothing else has one; per resource
  the written versions come in event-id order 1, 2, 3... (ids follow commit order)
  and exclusive grants in strictly increasing fence order; every lock has one
  grant event and, once ended, one end event of its kind, after the grant; each
  stale_fence Conflict has its ``write.rejected`` event; the history's versions
  are contiguous from 0 and its last value is the resource's value.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.faults.nemesis import Log
from tests.faults.workload import TOOLS, Built

END_EVENTS = {
    "released": "lock.released",
    "expired": "lock.expired",
    "revoked": "lock.revoked",
    "force_released": "lock.force_released",
}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def require(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def check(built: Built, log: Log) -> Report:
    """Check every invariant of the module docstring; gather the figures."""
    from orchestrator.core.models import Resource, Step

    report = Report()
    steps = list(
        Step.objects.filter(run_id__in=built.runs)
        .order_by("agent_id", "number")
        .values("pk", "agent_id", "agent__name", "number", "status", "attempts", "tool_calls")
    )
    resources = {
        res.name: res for res in Resource.objects.filter(name__in=built.counters + built.slots)
    }
    _runs_ended(report, built, steps)
    _counters(report, built, steps, resources)
    _slots(report, built, steps, resources)
    _checker(report, built)
    _zombies(report, log, steps)
    events = _events(resources)
    _locks(report, log, resources, events)
    _event_log(report, resources, events)
    _figures(report, built, log, steps, events)
    return report


# --- runs, steps and agents -----------------------------------------------------------


def _runs_ended(report: Report, built: Built, steps: list[dict]) -> None:
    from orchestrator.core.models import Agent, Event, Run

    for run in Run.objects.filter(pk__in=built.runs):
        report.require(run.status in ("finished", "failed"), f"run {run.pk} is {run.status}")
    open_steps = [s for s in steps if s["status"] not in ("done", "failed")]
    report.require(
        not open_steps,
        f"{len(open_steps)} steps neither done nor failed, e.g. "
        + ", ".join(f"#{s['pk']} {s['status']}" for s in open_steps[:5]),
    )
    agent_ids = {s["agent_id"] for s in steps}
    failed_events = set(
        Event.objects.filter(kind="agent.failed", agent_id__in=agent_ids).values_list(
            "agent_id", flat=True
        )
    )
    for agent in Agent.objects.filter(pk__in=agent_ids):
        report.require(
            agent.status == "done" or (agent.status == "failed" and agent.pk in failed_events),
            f"agent {agent.name} ended {agent.status} without an explicit failure",
        )


def _calls(steps: list[dict], tool: str, resource: str) -> list[tuple[dict, dict]]:
    """(step, call) of every journaled ``tool`` call on ``resource``, in step order: by
    its name, or as owner::name (the zombies' team names the main team's counters so)."""
    from orchestrator.core.tenancy import split_name

    def names_it(call: dict) -> bool:
        named = (call.get("arguments") or {}).get("resource")
        return isinstance(named, str) and split_name(named)[1] == resource

    return [
        (step, call)
        for step in steps
        for call in step["tool_calls"] or []
        if call["tool"] == tool and names_it(call)
    ]


def _applied(steps: list[dict], resource: str) -> list[tuple[dict, dict]]:
    return [
        (step, call)
        for step, call in _calls(steps, "write", resource)
        if call["result"].get("status") == "applied"
    ]


def _history(resource: Any) -> list[tuple[int, Any, int | None, int | None]]:
    from orchestrator.core.models import ResourceVersion

    return list(
        ResourceVersion.objects.filter(resource=resource)
        .order_by("version")
        .values_list("version", "value", "agent_id", "fence")
    )


# --- data ---------------------------------------------------------------------------


def _counters(report: Report, built: Built, steps: list[dict], resources: dict) -> None:
    for name in built.counters:
        res = resources[name]
        history = _history(res)
        versions = [version for version, *_ in history]
        report.require(
            versions == list(range(len(versions))),
            f"{name}: history versions are not contiguous from 0",
        )
        report.require(
            all(value == version for version, value, *_ in history),
            f"{name}: some version is not the previous value plus 1 (a lost update)",
        )
        applied = len(_applied(steps, name))
        report.require(
            res.value == res.version == len(history) - 1 == applied,
            f"{name}: value {res.value}, version {res.version}, {len(history) - 1} writes "
            f"in the history, {applied} writes its agents were told were applied",
        )


def _slots(report: Report, built: Built, steps: list[dict], resources: dict) -> None:
    from orchestrator.core.models import Agent

    names = dict(Agent.objects.values_list("pk", "name"))
    for name in built.slots:
        res = resources[name]
        writes = _history(res)[1:]
        applied = _applied(steps, name)
        report.require(
            len(writes) <= 1 and len(applied) <= 1,
            f"{name}: booked {len(writes)} times ({len(applied)} told so): a double booking",
        )
        if writes:
            booker = names.get(writes[0][2])
            report.require(
                res.value == [booker], f"{name}: holds {res.value!r}, but {booker} booked it"
            )
        else:
            report.require(res.value == [], f"{name}: holds {res.value!r} without a write")


def _checker(report: Report, built: Built) -> None:
    from agents.checker import check_run

    anomalies: Counter[str] = Counter()
    for run_id in built.runs:
        found = check_run(run_id=run_id)
        anomalies.update(found.counts())
        for anomaly in found.anomalies[:5]:
            report.problems.append(f"checker, run {run_id}: {anomaly.kind}: {anomaly.detail}")
    report.figures["checker anomalies"] = dict(anomalies)


def _zombies(report: Report, log: Log, steps: list[dict]) -> None:
    from orchestrator.core.models import Conflict, Event, Resource, ResourceVersion

    report.require(bool(log.incidents), "no zombie incident happened")
    for incident in log.incidents:
        name = Resource.objects.get(pk=incident.resource_id).name
        what = f"zombie {incident.agent_id} (lock #{incident.lock_id}, fence {incident.token})"
        report.require(
            not ResourceVersion.objects.filter(
                resource_id=incident.resource_id, fence=incident.token
            ).exists(),
            f"{what} wrote {name} with its lost token",
        )
        stopped = next(s for s in steps if s["pk"] == incident.step_id)
        later = [
            call
            for step, call in _calls(steps, "write", name)
            if step["agent_id"] == incident.agent_id and step["number"] >= stopped["number"]
        ]
        report.require(bool(later), f"{what} never wrote after it was resumed")
        if later:
            report.require(
                later[0]["result"].get("error") == "stale_fence",
                f"{what}: its write after the stop was answered {later[0]['result']}",
            )
        # One Conflict counts an agent's repeated stale writes to a resource (its data
        # are the first one's); the event log has each rejection with its token.
        report.require(
            Conflict.objects.filter(
                kind="stale_fence", agents=incident.agent_id, resources=incident.resource_id
            ).exists()
            and Event.objects.filter(
                kind="write.rejected",
                agent_id=incident.agent_id,
                subject_type="resource",
                subject_id=incident.resource_id,
                payload__error="stale_fence",
                payload__fence=incident.token,
            ).exists(),
            f"{what}: no stale_fence Conflict and write.rejected event record its rejected write",
        )


# --- locks --------------------------------------------------------------------------


def _events(resources: dict) -> dict[str, list[dict]]:
    """The events about the run's resources and their locks, by kind, in id order."""
    from orchestrator.core.models import Event

    names = set(resources)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for event in (
        Event.objects.filter(
            kind__in=["resource.written", "write.rejected", "lock.granted", *END_EVENTS.values()]
        )
        .order_by("id")
        .values("id", "kind", "agent_id", "subject_id", "payload")
        .iterator(chunk_size=5000)
    ):
        if event["payload"].get("resource") in names:
            by_kind[event["kind"]].append(event)
    return by_kind


def _locks(report: Report, log: Log, resources: dict, events: dict[str, list[dict]]) -> None:
    from orchestrator.core.models import Lock, LockRequest, ResourceVersion

    ids = [res.pk for res in resources.values()]
    locks = list(Lock.objects.filter(resource_id__in=ids).order_by("acquired_at", "pk"))
    report.require(
        not [lock for lock in locks if lock.released_at is None],
        "locks are still live after the runs ended",
    )
    report.require(
        not LockRequest.objects.filter(resource_id__in=ids, status="waiting").exists(),
        "lock requests still wait after the runs ended",
    )
    early = [
        lock.pk for lock in locks if lock.end == "expired" and lock.released_at < lock.expires_at
    ]
    report.require(not early, f"leases marked expired before they were due: {early[:5]}")

    by_resource: dict[int, list[Any]] = defaultdict(list)
    for lock in locks:
        by_resource[lock.resource_id].append(lock)
    requests = list(LockRequest.objects.filter(resource_id__in=ids).select_related("lock"))
    for request in requests:
        behind_expired = [
            lock.pk
            for lock in by_resource[request.resource_id]
            if lock.acquired_at <= request.requested_at
            and (lock.released_at is None or lock.released_at > request.requested_at)
            and lock.expires_at <= request.requested_at
        ]
        report.require(
            not behind_expired,
            f"request #{request.pk} was queued behind expired leases {behind_expired}",
        )
    report.figures["longest wait behind an expired lease (s)"] = _expiry_delay(locks, requests)
    for resource_id, held in by_resource.items():
        exclusive = [lock for lock in held if lock.mode == "exclusive"]
        for before, after in itertools.pairwise(exclusive):
            report.require(
                before.released_at is not None and after.acquired_at >= before.released_at,
                f"exclusive locks #{before.pk} and #{after.pk} on resource {resource_id} overlap",
            )

    granted = {e["subject_id"]: e["id"] for e in events["lock.granted"]}
    ended = {e["subject_id"]: e["id"] for kind in END_EVENTS.values() for e in events[kind]}
    token_lock = {
        (lock.resource_id, lock.token): lock for lock in locks if lock.mode == "exclusive"
    }
    written = {
        (e["payload"]["resource"], e["payload"]["version"]): e["id"]
        for e in events["resource.written"]
    }
    name_of = {res.pk: name for name, res in resources.items()}
    for resource_id, version, agent_id, fence in ResourceVersion.objects.filter(
        resource_id__in=ids, version__gt=0
    ).values_list("resource_id", "version", "agent_id", "fence"):
        lock = token_lock.get((resource_id, fence))
        event_id = written.get((name_of[resource_id], version))
        report.require(
            lock is not None
            and lock.agent_id == agent_id
            and event_id is not None
            and granted.get(lock.pk, 0) < event_id < ended.get(lock.pk, float("inf")),
            f"{name_of[resource_id]} version {version} (fence {fence}) was not written by "
            "the holder of that fence while its lock was live",
        )
    ends = {lock.pk: lock.end for lock in locks}
    for kill in log.kills:
        for lock_id in kill.locks:
            report.require(
                ends.get(lock_id, "") != "",
                f"lock #{lock_id} of killed worker {kill.worker} never ended",
            )


def _expiry_delay(locks: list[Any], requests: list[Any]) -> float:
    """How long, at most, a waiter got its lock after the lease blocking it ran out
    (database clock): the sweep's period, or the monitor's downtime if it was dead."""
    by_resource: dict[int, list[Any]] = defaultdict(list)
    for request in requests:
        by_resource[request.resource_id].append(request)
    longest = 0.0
    for lock in locks:
        if lock.end != "expired":
            continue
        grants = [
            request.lock.acquired_at
            for request in by_resource[lock.resource_id]
            if request.requested_at < lock.expires_at
            and request.lock is not None
            and request.lock.acquired_at >= lock.expires_at
        ]
        if grants:
            longest = max(longest, (min(grants) - lock.expires_at).total_seconds())
    return round(longest, 2)


# --- the event log ------------------------------------------------------------------


def _event_log(report: Report, resources: dict, events: dict[str, list[dict]]) -> None:
    from django.db.models import Sum

    from orchestrator.core.models import Conflict, Lock, ResourceVersion

    ids = [res.pk for res in resources.values()]
    name_of = {res.pk: name for name, res in resources.items()}
    history = Counter(
        (name_of[r], v, a, f)
        for r, v, a, f in ResourceVersion.objects.filter(
            resource_id__in=ids, version__gt=0
        ).values_list("resource_id", "version", "agent_id", "fence")
    )
    logged = Counter(
        (e["payload"]["resource"], e["payload"]["version"], e["agent_id"], e["payload"]["fence"])
        for e in events["resource.written"]
    )
    report.require(
        history == logged,
        f"applied writes and resource.written events differ: {len(history - logged)} writes "
        f"without their event, {len(logged - history)} events without their write",
    )
    versions: dict[str, list[int]] = defaultdict(list)
    for event in events["resource.written"]:
        versions[event["payload"]["resource"]].append(event["payload"]["version"])
    for name, seen in versions.items():
        report.require(
            seen == list(range(1, len(seen) + 1)),
            f"{name}: resource.written events in id order do not count versions up from 1",
        )
    fences: dict[str, list[int]] = defaultdict(list)
    for event in events["lock.granted"]:
        if event["payload"].get("mode") == "exclusive":
            fences[event["payload"]["resource"]].append(event["payload"]["fence"])
    for name, seen in fences.items():
        report.require(
            all(a < b for a, b in itertools.pairwise(seen)),
            f"{name}: exclusive grants in event-id order do not have increasing fences",
        )

    granted = Counter(e["subject_id"] for e in events["lock.granted"])
    ended = {kind: Counter(e["subject_id"] for e in events[kind]) for kind in END_EVENTS.values()}
    first_grant = {}
    for event in events["lock.granted"]:
        first_grant.setdefault(event["subject_id"], event["id"])
    end_ids = {e["subject_id"]: e["id"] for kind in END_EVENTS.values() for e in events[kind]}
    bad = []
    for lock_id, end in Lock.objects.filter(resource_id__in=ids).values_list("pk", "end"):
        ok = granted[lock_id] == 1 and all(
            counts[lock_id] == (1 if kind == END_EVENTS.get(end) else 0)
            for kind, counts in ended.items()
        )
        if end:
            ok = ok and first_grant.get(lock_id, 0) < end_ids.get(lock_id, 0)
        if not ok:
            bad.append(lock_id)
    report.require(not bad, f"locks without exactly one grant and one end event: {bad[:5]}")

    stale = (
        Conflict.objects.filter(kind="stale_fence", resources__in=ids).aggregate(
            times=Sum("occurrences")
        )["times"]
        or 0
    )
    rejected = sum(
        1 for e in events["write.rejected"] if e["payload"].get("error") == "stale_fence"
    )
    report.require(
        stale == rejected,
        f"stale_fence Conflicts counted {stale} times but {rejected} write.rejected events",
    )


# --- figures ------------------------------------------------------------------------


def _figures(
    report: Report, built: Built, log: Log, steps: list[dict], events: dict[str, list[dict]]
) -> None:
    from django.db.models import Sum

    from orchestrator.core.models import Conflict, Event, ResourceVersion

    operations: Counter[str] = Counter()
    for step in steps:
        for call in step["tool_calls"] or []:
            if call["tool"] in TOOLS:
                operations[call["tool"]] += 1
    rejected = Counter(e["payload"].get("error") for e in events["write.rejected"])
    refused: Counter[str] = Counter()
    gave_up = 0  # agents whose last call before finishing was refused: a script abandoned
    last: dict[int, dict] = {}
    for step in steps:
        for call in step["tool_calls"] or []:
            if call["tool"] == "finish":
                gave_up += not last.get(step["agent_id"], {}).get("result", {}).get("ok", True)
            else:
                last[step["agent_id"]] = call
                if not call["result"].get("ok"):
                    refused[f"{call['tool']} {call['result'].get('error')}"] += 1
    agent_ids = {step["agent_id"] for step in steps}
    report.figures.update(
        {
            "operations": sum(operations.values()),
            "operations by tool": {tool: operations[tool] for tool in TOOLS},
            "steps": len(steps),
            "steps retried": Event.objects.filter(
                kind="step.retried", agent_id__in=agent_ids
            ).count(),
            "steps run more than once": sum(1 for step in steps if step["attempts"] > 1),
            "faults injected": dict(log.injected),
            "zombie attempts aborted": log.aborted_zombies,
            "stale writes rejected": Conflict.objects.filter(
                kind="stale_fence", agents__in=agent_ids
            ).aggregate(times=Sum("occurrences"))["times"]
            or 0,
            "zombie writes rejected": len(log.incidents),
            "writes applied": ResourceVersion.objects.filter(
                resource__name__in=built.counters + built.slots, version__gt=0
            ).count(),
            "writes refused": dict(rejected),
            "calls refused": dict(refused),
            "agents that gave up": gave_up,
            "slots booked": ResourceVersion.objects.filter(
                resource__name__in=built.slots, version__gt=0
            ).count(),
            "leases expired": len(events["lock.expired"]),
        }
    )
