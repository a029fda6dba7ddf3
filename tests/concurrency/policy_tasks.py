"""Work of the approval-policy concurrency tests, run in child processes (processes.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from orchestrator.core.approvals import approval_deadline_pass, approval_decide
from orchestrator.core.errors import Conflicting
from orchestrator.core.monitor import monitor_sweep

BARRIER_TIMEOUT = 60


def monitor_worker(*, approval_ids: list[int], barrier: Any) -> dict[str, int]:
    """A monitor: one full sweep, then each approval's deadline once more (as a second
    sweep racing the other monitor would), counting what this process did."""
    barrier.wait(timeout=BARRIER_TIMEOUT)
    done: dict[str, int] = {}
    for outcome, count in monitor_sweep().deadlines.items():
        done[outcome] = done.get(outcome, 0) + count
    for approval_id in approval_ids:
        outcome = approval_deadline_pass(approval_id)
        if outcome is not None:
            done[outcome] = done.get(outcome, 0) + 1
    return done


def operator_worker(*, username: str, approval_ids: list[int], barrier: Any) -> dict[str, int]:
    """An operator approving each approval, at the same moment as another one."""
    user = get_user_model().objects.get(username=username)
    barrier.wait(timeout=BARRIER_TIMEOUT)
    outcomes = {"applied": 0, "counted": 0, "already_decided": 0}
    for approval_id in approval_ids:
        try:
            result = approval_decide(approval_id=approval_id, decision="approve", user=user)
        except Conflicting as exc:
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
            continue
        outcomes["applied" if result.applied else "counted"] += 1
    return outcomes
