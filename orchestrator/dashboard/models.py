"""The dashboard keeps no data of its own: this model only carries its permissions.

``managed = False`` means no table; Django still creates the content type and
the two permissions, which the "operators" and "viewers" groups are given by
migration 0002.
"""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("watch", "Can watch the live dashboard"),
            ("operate", "Can act from the dashboard (approve, pause, break deadlocks, release)"),
        ]

    def __str__(self) -> str:
        return "dashboard"
