"""The approvals queue: pending writes with what they would change, and recent decisions."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db.models import QuerySet

from orchestrator.core.models import Approval, ApprovalStatus
from orchestrator.dashboard.diffs import DiffLine, pretty, value_diff

PENDING_LIMIT = 100
RECENT_LIMIT = 20


@dataclass
class ApprovalView:
    """One pending approval, ready to show: values as text, and two diffs."""

    approval: Approval
    base_text: str
    current_text: str
    proposed_text: str
    # The proposed value as JSON, to start an edit from.
    proposed_json: str
    # What approving would change (current -> proposed).
    change: list[DiffLine]
    # What others wrote since the agent read its base (base -> current).
    drift: list[DiffLine]


def approvals_pending(*, limit: int = PENDING_LIMIT) -> list[ApprovalView]:
    """Pending approvals, oldest first (the queue's order)."""
    rows = (
        Approval.objects.filter(status=ApprovalStatus.PENDING)
        .select_related("resource", "agent", "team")
        .order_by("created_at", "pk")[:limit]
    )
    return [
        ApprovalView(
            approval=approval,
            base_text=pretty(approval.base_value) if approval.base_version is not None else "",
            current_text=pretty(approval.current_value),
            proposed_text=pretty(approval.proposed_value),
            proposed_json=json.dumps(
                approval.proposed_value, indent=2, sort_keys=True, ensure_ascii=False
            ),
            change=value_diff(approval.current_value, approval.proposed_value),
            drift=value_diff(approval.base_value, approval.current_value)
            if approval.base_version is not None
            and approval.base_version != approval.current_version
            else [],
        )
        for approval in rows
    ]


def approvals_decided(*, limit: int = RECENT_LIMIT) -> QuerySet[Approval]:
    """The latest decisions, newest first, with who took them."""
    return (
        Approval.objects.exclude(status=ApprovalStatus.PENDING)
        .select_related("resource", "agent", "decided_by")
        .order_by("-decided_at", "-pk")[:limit]
    )
