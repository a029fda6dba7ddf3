"""Prometheus metrics: what the protocol did, counted once it committed, added up over
every process of a host.

**Multiprocess.** The counters and histograms are prometheus_client's, in its
multiprocess mode: each process writes its values to memory-mapped files in one
directory (``settings.PROMETHEUS_MULTIPROC_DIR``, by default ``data/metrics``), and a
scrape (:func:`exposition`, served at ``/metrics`` by orchestrator/metrics_view.py)
adds up the files of every process, those of processes that have exited included, so
a counter does not go down while the directory lasts. All the processes of a host
(web, workers, monitor) must share the directory, and it must be emptied before they
start (``make run`` does, orchestrator/launch.py; docs/deploy.md says how elsewhere).

**What is counted** comes from the event log: :func:`count_events` observes every
service transaction's events (``events.observe``) and increments after commit
(``transaction.on_commit``), so only committed facts count and a transaction that rolls
back counts nothing. It reads the events as they are (kind, payload, user, the agent
and the subject instances they were emitted with) and runs no query: a lock cycle pays
a dictionary lookup per event and, for a grant, one callback after commit.

**Gauges of the state** (approvals pending, open deadlocks, queued jobs) are read when
scraped, from PostgreSQL and Redis (:class:`StateCollector`), so they are true whichever
process changed the state; there is no per-process gauge (and nothing for
``mark_process_dead`` to clear, though every process calls it when it exits).

Labels are bounded: lock modes, deadlock resolutions, backends, queue names; never an
agent, a resource or a team.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from orchestrator.core import events
from orchestrator.core.models import (
    Approval,
    ApprovalStatus,
    Backend,
    Conflict,
    ConflictKind,
    ConflictStatus,
    Event,
    LockMode,
)

logger = logging.getLogger(__name__)

# prometheus_client takes the directory from this variable whenever it opens a
# process's files.
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "orchestrator_"  # of every metric's name


class _Process:
    directory: Path | None = None
    # Bumped when the directory changes: prometheus_client reopens every value's file,
    # in the directory of the moment, when the process identifier changes (as after a
    # fork), and the identifier ends with it.
    generation = 0


def _process_identifier() -> str:
    # The pid names the process's files; mark_process_dead(pid) finds them by it.
    pid = os.getpid()
    return f"{pid}-{_Process.generation}" if _Process.generation else str(pid)


def use_directory(directory: Path) -> None:
    """Keep this process's values in ``directory`` (created if missing) from now on.

    Called once at import with the setting, before any metric exists; again by a test
    that gives a run a directory of its own (what was counted before stays in the old
    one). The processes this one starts inherit the directory through the environment.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[DIRECTORY_VARIABLE] = str(directory)
    first = _Process.directory is None
    _Process.directory = directory
    if first:
        values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
    else:
        _Process.generation += 1
        # Any update reopens them all now, so that every series is in the new directory
        # from the start (at 0), as in a process that has just started.
        LEASE_EXPIRED.inc(0)


def directory() -> Path | None:
    """The multiprocess directory this process writes to (None: single-process mode)."""
    return _Process.directory


if settings.PROMETHEUS_MULTIPROC_DIR:
    use_directory(Path(settings.PROMETHEUS_MULTIPROC_DIR))

# The metrics, registered here (single-process mode serves this registry; in
# multiprocess mode a scrape reads the files instead).
REGISTRY = CollectorRegistry(auto_describe=True)

LOCK_WAIT = Histogram(
    "orchestrator_lock_wait_seconds",
    "Time a queued lock request waited for its grant (immediate grants are not observed).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
LOCK_GRANTS = Counter(
    "orchestrator_lock_grants_total",
    "Locks granted, at once or after a wait, by mode.",
    ["mode"],
    registry=REGISTRY,
)
LEASE_EXPIRED = Counter(
    "orchestrator_lease_expired_total",
    "Locks whose lease ran out before their holder released or renewed them.",
    registry=REGISTRY,
)
FENCING_REJECTIONS = Counter(
    "orchestrator_fencing_rejections_total",
    "Writes refused for a stale fencing token (the writer's lock had ended).",
    registry=REGISTRY,
)
WRITE_CONFLICTS = Counter(
    "orchestrator_write_conflicts_total",
    "Writes based on a version that was no longer current (refused, or sent to an operator "
    "for approval by the team's policy), each repetition counted.",
    registry=REGISTRY,
)
DEADLOCKS = Counter(
    "orchestrator_deadlocks_total",
    "Deadlocks detected (resolution=detected), and how each one ended: broken by an "
    "operator, broken by the team's policy, or dissolved by itself.",
    ["resolution"],
    registry=REGISTRY,
)
APPROVAL_DECISION = Histogram(
    "orchestrator_approval_decision_seconds",
    "Time from an approval's request to its decision (by an operator, a rule or a deadline).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "orchestrator_step_duration_seconds",
    "Time of an agent step from its start to its end (done or failed), waits included, by backend.",
    ["backend"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
MODEL_CALL = Histogram(
    "orchestrator_model_call_seconds",
    "Time of one chat-completions request of the openai backend (each retry its own).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)


class Resolution:
    """The values of ``orchestrator_deadlocks_total``'s label ``resolution``."""

    DETECTED = "detected"  # deadlock.detected: a cycle reported (once per cycle)
    OPERATOR = "operator"  # deadlock.broken by an operator (the ask_operator policy)
    POLICY = "policy"  # deadlock.broken by the team's automatic policy
    DISSOLVED = "dissolved"  # the cycle went away by itself (a lease or a wait ended)
    ALL = (DETECTED, OPERATOR, POLICY, DISSOLVED)


# Every label value known in advance has its series from the start (at 0), so that a
# rate() or an alert sees the first increment, and no series is created later.
_GRANTS = {mode: LOCK_GRANTS.labels(mode) for mode in LockMode.values}
_DEADLOCKS = {resolution: DEADLOCKS.labels(resolution) for resolution in Resolution.ALL}
_STEPS = {backend: STEP_DURATION.labels(backend) for backend in Backend.values}

# What a transaction's events add, applied once it commits: (increment, amount).
Increments = list[tuple[Callable[[float], None], float]]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _lock_granted(event: Event, counts: Increments) -> None:
    mode = event.payload.get("mode", "")
    child = _GRANTS.get(mode) or LOCK_GRANTS.labels(mode)
    counts.append((child.inc, 1))
    waited = event.payload.get("waited")
    if waited is not None:
        counts.append((LOCK_WAIT.observe, waited))


def _lease_expired(event: Event, counts: Increments) -> None:
    counts.append((LEASE_EXPIRED.inc, 1))


def _write_rejected(event: Event, counts: Increments) -> None:
    if event.payload.get("error") == "stale_fence":
        counts.append((FENCING_REJECTIONS.inc, 1))


def _conflict(event: Event, counts: Increments) -> None:
    # conflict.opened, and conflict.repeated (a refusal counted on an earlier row).
    if event.payload.get("kind") == ConflictKind.WRITE_CONFLICT:
        counts.append((WRITE_CONFLICTS.inc, 1))


def _conflict_resolved(event: Event, counts: Increments) -> None:
    # A deadlock's conflict resolved without deadlock.broken: the sweep found it gone.
    if event.payload.get("kind") == ConflictKind.DEADLOCK:
        counts.append((_DEADLOCKS[Resolution.DISSOLVED].inc, 1))


def _deadlock_detected(event: Event, counts: Increments) -> None:
    counts.append((_DEADLOCKS[Resolution.DETECTED].inc, 1))


def _deadlock_broken(event: Event, counts: Increments) -> None:
    by = Resolution.OPERATOR if event.user_id is not None else Resolution.POLICY
    counts.append((_DEADLOCKS[by].inc, 1))


def _approval_decided(event: Event, counts: Increments) -> None:
    approval = getattr(event, "subject_object", None)
    if isinstance(approval, Approval):
        seconds = _seconds(approval.created_at, approval.decided_at)
        if seconds is not None:
            counts.append((APPROVAL_DECISION.observe, seconds))


def _step_ended(event: Event, counts: Increments) -> None:
    step = getattr(event, "subject_object", None)
    seconds = _seconds(getattr(step, "started_at", None), getattr(step, "finished_at", None))
    if seconds is None or event.agent is None:
        return
    backend = event.agent.backend
    counts.append(((_STEPS.get(backend) or STEP_DURATION.labels(backend)).observe, seconds))


_COUNTERS: dict[str, Callable[[Event, Increments], None]] = {
    "lock.granted": _lock_granted,
    "lock.expired": _lease_expired,
    "write.rejected": _write_rejected,
    "conflict.opened": _conflict,
    "conflict.repeated": _conflict,
    "conflict.resolved": _conflict_resolved,
    "deadlock.detected": _deadlock_detected,
    "deadlock.broken": _deadlock_broken,
    "approval.approved": _approval_decided,
    "approval.rejected": _approval_decided,
    "approval.failed": _approval_decided,
    "step.done": _step_ended,
    "step.failed": _step_ended,
}


def count_events(batch: list[Event]) -> None:
    """The events observer (``events.observe``, registered by core/apps.py): counts a
    service transaction's events once it commits, and never raises into the service.
    """
    counts: Increments = []
    for event in batch:
        counter = _COUNTERS.get(event.kind)
        if counter is not None:
            try:
                counter(event, counts)
            except Exception:  # a metric must never break the protocol
                logger.exception("could not count an event of kind %s", event.kind)
    if counts:
        transaction.on_commit(functools.partial(_apply, counts), robust=True)


def _apply(counts: Increments) -> None:
    for increment, amount in counts:
        increment(amount)


def model_call_timer() -> Any:
    """A context manager that observes the time of its block in
    ``orchestrator_model_call_seconds`` (one model request)."""
    return MODEL_CALL.time()


def mark_process_dead() -> None:
    """At exit: drop this process's live gauges from the directory (its counters and
    histograms stay, so the totals do not go down)."""
    if _Process.directory is not None:
        multiprocess.mark_process_dead(_process_identifier(), str(_Process.directory))


class StateCollector:
    """Gauges read when scraped: approvals pending (and the least time left before one's
    deadline), open deadlocks (and the age of the oldest), and jobs queued on each RQ
    queue. A source that cannot be read is left out of the scrape (and logged)."""

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: collect() queries the database

    def collect(self) -> Iterator[Metric]:
        try:
            yield from _approval_gauges()
            yield from _deadlock_gauges()
        except Exception:
            logger.warning("metrics: could not read the database", exc_info=True)
        try:
            yield _queue_gauge()
        except Exception:
            logger.warning("metrics: could not read the RQ queues", exc_info=True)


def _approval_gauges() -> Iterator[Metric]:
    pending = Approval.objects.filter(status=ApprovalStatus.PENDING).aggregate(
        count=Count("pk"), deadline=Min("deadline_at")
    )
    yield GaugeMetricFamily(
        "orchestrator_approvals_pending",
        "Approvals waiting for a decision.",
        value=pending["count"],
    )
    deadline = GaugeMetricFamily(
        "orchestrator_approval_deadline_seconds",
        "Seconds left before the earliest deadline of a pending approval (negative: passed, "
        "its outcome not yet applied); absent when no pending approval has a deadline.",
    )
    if pending["deadline"] is not None:
        deadline.add_metric([], (pending["deadline"] - timezone.now()).total_seconds())
    yield deadline


def _deadlock_gauges() -> Iterator[Metric]:
    open_ = Conflict.objects.filter(
        kind=ConflictKind.DEADLOCK, status=ConflictStatus.OPEN
    ).aggregate(count=Count("pk"), oldest=Min("created_at"))
    yield GaugeMetricFamily(
        "orchestrator_deadlocks_open",
        "Deadlocks detected and not yet broken or dissolved.",
        value=open_["count"],
    )
    yield GaugeMetricFamily(
        "orchestrator_deadlock_oldest_open_seconds",
        "Age of the oldest open deadlock (0 when none is open).",
        value=_seconds(open_["oldest"], timezone.now()) or 0.0,
    )


def _queue_gauge() -> Metric:
    import django_rq

    gauge = GaugeMetricFamily(
        "orchestrator_queue_jobs", "Jobs waiting on each RQ queue.", labels=["queue"]
    )
    for name in settings.RQ_QUEUES:
        gauge.add_metric([name], django_rq.get_queue(name).count)
    return gauge


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The scrape: every process's counters and histograms (added up from the directory)
    and the gauges of the state, in the format ``accept`` asks for (Prometheus text by
    default, OpenMetrics if asked). Returns (body, content type)."""
    if _Process.directory is None:
        source: Any = REGISTRY
    else:
        source = multiprocess.MultiProcessCollector(None, path=str(_Process.directory))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Ours(source))
    registry.register(StateCollector())
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _Ours:
    """Only this module's metrics: the directory also holds those that other libraries
    make in every process (django_rq's admin module makes one)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return (metric for metric in self.source.collect() if metric.name.startswith(PREFIX))


def install() -> None:
    """Count every service transaction's events, and clear this process's live gauges
    when it exits (core/apps.py calls it once per process)."""
    events.observe(count_events)
    atexit.register(mark_process_dead)
