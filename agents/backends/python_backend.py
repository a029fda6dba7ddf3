"""The python backend: a custom agent as a dotted path to ``decide(context) -> Decision``."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from agents.backends.base import BackendError, Decision, StepContext


class PythonBackend:
    def __init__(self, config: dict[str, Any]) -> None:
        try:
            self.func = import_string(config["callable"])
        except (ImportError, KeyError) as exc:
            raise BackendError(f"cannot import {config.get('callable')!r}: {exc}") from exc
        self.options = config.get("options", {})

    def decide(self, context: StepContext) -> Decision:
        decision = self.func(context)
        if not isinstance(decision, Decision):
            raise BackendError(
                f"{self.func.__module__}.{self.func.__name__} returned "
                f"{type(decision).__name__}, not a Decision"
            )
        return decision
