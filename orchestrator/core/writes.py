"""The write itself, below the services that decide when it may happen (resources,
approvals): the checks of a value and a version, the fence check, and storing
the next version with its history and event. Callers hold the Resource row lock.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.errors import Invalid
from orchestrator.core.events import event_emit
from orchestrator.core.models import Agent, Approval, Lock, LockMode, Resource
from orchestrator.core.queue import Queue
from orchestrator.core.types import User


def max_value_bytes() -> int:
    return getattr(settings, "ORCHESTRATOR_MAX_VALUE_BYTES", 256 * 1024)


def clean_value(value: Any) -> Any:
    """A JSON value within the size and nesting limits that PostgreSQL's jsonb can store."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise Invalid("invalid_value", f"value must be JSON: {exc}") from None
    limit = max_value_bytes()
    if len(encoded) > limit:
        raise Invalid(
            "value_too_large",
            f"value is {len(encoded)} bytes of JSON; the limit is {limit}",
            status=413,
        )
    _check_nesting_and_nul(value)
    return value


MAX_VALUE_DEPTH = 100


def _check_nesting_and_nul(value: Any) -> None:
    """Refuse what jsonb cannot store and what a later encoder cannot write.

    json.dumps writes NUL as \\u0000, which jsonb rejects; nesting deeper than
    MAX_VALUE_DEPTH could exhaust the stack of psycopg's encoder or a renderer.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise Invalid("invalid_value", "value must not contain NUL characters")
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > MAX_VALUE_DEPTH:
            raise Invalid(
                "invalid_value", f"value must not be nested deeper than {MAX_VALUE_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in children)


def clean_version(version: Any, field: str = "expected_version") -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**62:
        raise Invalid(f"invalid_{field}", f"{field} must be a non-negative integer")
    return version


def check_fence(queue: Queue, agent: Agent | None, fence: int) -> Lock | None:
    """The live exclusive lock of ``agent`` whose token is ``fence``, if it is current."""
    if agent is None or fence != queue.resource.fence:
        return None
    return next(
        (
            lock
            for lock in queue.live
            if lock.agent_id == agent.pk and lock.mode == LockMode.EXCLUSIVE and lock.token == fence
        ),
        None,
    )


def apply_write(
    res: Resource,
    value: Any,
    *,
    agent: Agent | None,
    user: User = None,
    fence: int | None,
    team_id: int | None,
    approval: Approval | None = None,
    idempotency_key: str = "",
) -> int:
    """Store ``value`` as the next version. Caller holds the Resource row lock and checked."""
    sql.write_value(
        res,
        value,
        agent_id=agent.pk if agent else None,
        user_id=user.pk if user is not None and user.is_authenticated else None,
        fence=fence,
        now=timezone.now(),
        idempotency_key=idempotency_key[:100],
    )
    event_emit(
        "resource.written",
        team=team_id,
        agent=agent,
        user=user,
        subject=res,
        payload={
            "resource": res.name,
            "version": res.version,
            "fence": fence,
            "approval": approval.pk if approval else None,
            "by": agent.name if agent else None,
        },
    )
    return res.version
