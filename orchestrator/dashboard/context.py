"""Template context shared by every page: the navigation bar's live counts."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from orchestrator.dashboard.permissions import can_operate, can_watch
from orchestrator.dashboard.selectors.board import board_counts


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Counts of open approvals and conflicts (kept live by nav.js) and what the user may do."""
    user = getattr(request, "user", None)
    if not can_watch(user):
        return {"nav_counts": None, "can_operate": False}
    return {"nav_counts": board_counts(), "can_operate": can_operate(user)}
