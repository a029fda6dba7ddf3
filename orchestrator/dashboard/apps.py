from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "orchestrator.dashboard"
    label = "dashboard"
    verbose_name = "Operator dashboard"
    default_auto_field = "django.db.models.BigAutoField"
