"""The monitor's periodic sweep: expire leases, wake waiters, catch deadlocks, and
apply the outcome of approvals whose deadline passed.

Each resource with an expired lease is handled in its own short transaction
(lock the row, expire, grant the next waiters), so the sweep never holds many
row locks at once. Deadlock detection then looks at the whole wait-for graph,
which catches cycles that concurrent requests formed without seeing each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q

from orchestrator.core.approvals import approval_deadline_pass, approvals_past_deadline
from orchestrator.core.deadlocks import auto_break_pending, deadlock_sweep
from orchestrator.core.errors import ProtocolError
from orchestrator.core.events import service
from orchestrator.core.lock_sets import continue_lock_set, lock_sets_to_continue
from orchestrator.core.locks import lock_renew
from orchestrator.core.models import Lock, LockRequest, RequestStatus, Switchboard, Team
from orchestrator.core.queue import db_now, lock_queue

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    granted: int = 0
    deadlocks: list[int] = field(default_factory=list)
    dissolved: list[int] = field(default_factory=list)
    auto_broken: int = 0
    renewed: int = 0
    lock_sets: int = 0
    # Approvals whose deadline passed, by what their policy did: rejected, approved,
    # failed (approved, but no longer applicable) or escalated.
    deadlines: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.expired or self.granted or self.deadlocks or self.dissolved or self.deadlines
        )


@service
def _sweep_resource(resource_id: int) -> tuple[int, int]:
    queue = lock_queue(pk=resource_id)
    granted = queue.grant_waiters()
    return len(queue.expired), len(granted)


def renew_paused_leases(now: datetime) -> int:
    """Keep the leases of paused agents alive where their team's policy asks for it.

    A paused agent runs no step, so nothing else renews its leases: by default
    they run out and its locks are freed (the dashboard shows who waits on a
    paused holder until then). Teams with ``renew_leases_while_paused`` keep
    them: each lease is renewed for the team's TTL once less than half of it
    is left.
    """
    if not Team.objects.filter(renew_leases_while_paused=True).exists():
        return 0  # the usual case: one cheap query instead of the join below
    paused = (
        Q(agent__paused=True)
        | Q(agent__team__paused=True)
        | Q(agent__steps__run__paused=True, agent__steps__status="queued")
    )
    if Switchboard.objects.filter(pk=1, paused=True).exists():
        paused = Q()
    candidates = (
        Lock.objects.filter(
            released_at__isnull=True,
            expires_at__gt=now,
            agent__team__renew_leases_while_paused=True,
        )
        .filter(paused)
        .select_related("agent__team")
        .distinct()
    )
    renewed = 0
    for lock in candidates:
        ttl = lock.agent.team.default_lease_ttl
        if (lock.expires_at - now).total_seconds() < ttl / 2:
            try:
                lock_renew(lock_id=lock.pk, agent=lock.agent, ttl=ttl)
                renewed += 1
            except ProtocolError:
                pass  # ended meanwhile
    return renewed


def monitor_sweep() -> SweepReport:
    """One pass of the monitor. Safe to run from several processes at once."""
    report = SweepReport()
    now = db_now()
    report.renewed = renew_paused_leases(now)
    stale = set(
        Lock.objects.filter(released_at__isnull=True, expires_at__lte=now).values_list(
            "resource_id", flat=True
        )
    )
    # Queues whose head could be granted (e.g. a holder's row vanished) are rechecked too.
    stale |= set(
        LockRequest.objects.filter(status=RequestStatus.WAITING)
        .exclude(resource__locks__released_at__isnull=True)
        .values_list("resource_id", flat=True)
    )
    for resource_id in sorted(stale):
        expired, granted = _sweep_resource(resource_id)
        report.expired += expired
        report.granted += granted
    # Lock sets whose after-commit continuation was lost (its process died) go on here.
    for lock_set_id in lock_sets_to_continue():
        continue_lock_set(lock_set_id)
        report.lock_sets += 1
    for approval_id in approvals_past_deadline():
        done = approval_deadline_pass(approval_id)
        if done is not None:
            report.deadlines[done] = report.deadlines.get(done, 0) + 1
    result = deadlock_sweep()
    report.deadlocks = result.detected
    report.dissolved = result.dissolved
    report.auto_broken = auto_break_pending()
    return report
