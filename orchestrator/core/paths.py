"""Path resources: a lock on a folder covers every path under it.

A resource name with a ``/`` is a path, relative, with ``/`` separators
(``src/api/views.py``); one that ends with ``/`` is a folder (``src/api/``). A
lock on a folder conflicts with the locks on every path under it, and the other
way round, by the usual rules (shared locks are compatible with each other, an
exclusive lock with nothing). So an agent can claim a folder before a
refactoring, and nobody edits a file in it meanwhile. Names without a ``/`` have
no folders above or below them: nothing here costs them anything.

How the check stays correct under concurrency: every decision on a path
resource of a team is made behind that team's *path lock*, a transaction-level
advisory lock (``sql.PATH_LOCK_CLASS``, the team's id), taken before the
resource's row lock, so two decisions about a folder and a file under it (two
rows) cannot both see the other side free. A transaction that locks one
resource takes it in the statement pipelined before its row lock
(``sql.lock_resource_then``, only for a name with a ``/``); one that locks
several resources (a lock set, releasing everything an agent holds, breaking a
deadlock) takes the path locks of all of them first (:func:`lock_paths_of`),
in team id order, so that it never waits for a path lock while holding a row.

The covering locks of a resource (:func:`covering_locks`) are the live locks on
the folders above it and, for a folder, on every path under it: an index on
(team, name ``text_pattern_ops``) serves the prefix match. When one of them
ends, the waiters of the paths it covered may go: the queues of the related
resources with waiting requests are settled after commit (:func:`settle_related`),
and by the monitor's sweep. Grants are FIFO per resource; between a folder and
the paths under it, whoever asks when they are free goes first.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db.models import Q

from orchestrator.core import sql
from orchestrator.core.models import Lock, LockRequest, RequestStatus, Resource

logger = logging.getLogger(__name__)

SEPARATOR = "/"


def is_path(name: str) -> bool:
    """Whether ``name`` is a path (it has a ``/``): folders may cover it or it them."""
    return SEPARATOR in name


def is_folder(name: str) -> bool:
    return name.endswith(SEPARATOR)


def folders_above(name: str) -> list[str]:
    """The folders that contain ``name``, outermost first: ``a/b/c.py`` -> ``a/``, ``a/b/``."""
    inner = name[:-1] if is_folder(name) else name
    return [inner[: index + 1] for index, char in enumerate(inner) if char == SEPARATOR]


def contains(folder: str, name: str) -> bool:
    """Whether ``name`` is under the folder ``folder`` (not the folder itself)."""
    return is_folder(folder) and name != folder and name.startswith(folder)


def overlapping(names: list[str]) -> tuple[str, str] | None:
    """A folder and a path under it among ``names`` (of one team), if any."""
    folders = [name for name in names if is_folder(name)]
    for folder in folders:
        for name in names:
            if contains(folder, name):
                return folder, name
    return None


def related_filter(team_id: int, name: str) -> Q:
    """Resource rows of the team whose locks cover ``name`` or that ``name`` covers."""
    related = Q(team_id=team_id, name__in=folders_above(name))
    if is_folder(name):
        # startswith: LIKE 'prefix%' (escaped), which the text_pattern_ops index serves.
        related |= Q(team_id=team_id, name__startswith=name) & ~Q(name=name)
    return related


def covering_locks(resource: Resource, now: datetime) -> list[Lock]:
    """The live locks on the folders above ``resource`` and, for a folder, on the paths
    under it, with their agents and resources. Caller holds the team's path lock."""
    if not is_path(resource.name):
        return []
    return list(
        Lock.objects.filter(
            released_at__isnull=True,
            expires_at__gt=now,
            resource__in=Resource.objects.filter(related_filter(resource.team_id, resource.name)),
        )
        .select_related("agent", "resource")
        .order_by("pk")
    )


def lock_paths_of(resource_ids: list[int]) -> None:
    """Take the path locks of the teams whose path resources are among ``resource_ids``,
    in team id order: before the first row lock of a transaction that locks several."""
    if resource_ids:
        sql.lock_team_paths(sorted(set(resource_ids)))


def related_waiting(resource: Resource) -> list[int]:
    """The ids of the resources related to ``resource`` (folders above, paths under)
    that have waiting requests, ascending: whose queues may go once its lock ends."""
    if not is_path(resource.name):
        return []
    waiting = LockRequest.objects.filter(
        status=RequestStatus.WAITING,
        resource__in=Resource.objects.filter(related_filter(resource.team_id, resource.name)),
    )
    return sorted(set(waiting.values_list("resource_id", flat=True)))
