"""Who may watch and who may act.

Two groups, created by migration 0002: ``operators`` (watch and operate) and
``viewers`` (watch only). Superusers have every permission.
"""

from __future__ import annotations

from typing import Any

WATCH = "dashboard.watch"
OPERATE = "dashboard.operate"
OPERATORS_GROUP = "operators"
VIEWERS_GROUP = "viewers"
GROUP_PERMISSIONS = {OPERATORS_GROUP: ["watch", "operate"], VIEWERS_GROUP: ["watch"]}


def can_watch(user: Any) -> bool:
    """Whether ``user`` may see the dashboard pages and its live feed."""
    return bool(user is not None and user.is_authenticated and user.has_perm(WATCH))


def can_operate(user: Any) -> bool:
    """Whether ``user`` may take operator actions."""
    return bool(user is not None and user.is_authenticated and user.has_perm(OPERATE))
