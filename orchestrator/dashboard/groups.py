"""The "operators" and "viewers" groups (also created by migration 0002)."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from orchestrator.dashboard.models import Dashboard
from orchestrator.dashboard.permissions import GROUP_PERMISSIONS


def groups_ensure() -> dict[str, Group]:
    """Create the two groups if missing and give them their permissions (idempotent).

    For databases flushed after migrating (``manage.py flush``, transactional tests).
    """
    content_type = ContentType.objects.get_for_model(Dashboard, for_concrete_model=False)
    permissions = {
        codename: Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )[0]
        for codename, name in Dashboard._meta.permissions
    }
    groups = {}
    for name, codenames in GROUP_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*(permissions[codename] for codename in codenames))
        groups[name] = group
    return groups
