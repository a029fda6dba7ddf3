from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "orchestrator.core"
    label = "core"
    verbose_name = "Orchestrator"
    default_auto_field = "django.db.models.BigAutoField"
