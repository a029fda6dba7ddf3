"""The monitor's periodic sweep: expire leases, wake waiters, catch deadlocks.

Each resource with an expired lease is handled in its own short transaction
(lock the row, expire, grant the next waiters), so the sweep never holds many
row locks at once. Deadlock detection then looks at the whole wait-for graph,
which catches cycles that concurrent requests formed without seeing each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from orchestrator.core.deadlocks import auto_break_pending, deadlock_sweep
from orchestrator.core.events import service
from orchestrator.core.locks import Queue, db_now
from orchestrator.core.models import Lock, LockRequest, RequestStatus
from orchestrator.core.rowlocks import lock_resource_with_clock

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    granted: int = 0
    deadlocks: list[int] = field(default_factory=list)
    dissolved: list[int] = field(default_factory=list)
    auto_broken: int = 0

    def __bool__(self) -> bool:
        return bool(self.expired or self.granted or self.deadlocks or self.dissolved)


@service
def _sweep_resource(resource_id: int) -> tuple[int, int]:
    res, now = lock_resource_with_clock(pk=resource_id)
    queue = Queue(res, now)
    granted = queue.grant_waiters()
    return len(queue.expired), len(granted)


def monitor_sweep() -> SweepReport:
    """One pass of the monitor. Safe to run from several processes at once."""
    report = SweepReport()
    now = db_now()
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
    result = deadlock_sweep()
    report.deadlocks = result.detected
    report.dissolved = result.dissolved
    report.auto_broken = auto_break_pending()
    return report
