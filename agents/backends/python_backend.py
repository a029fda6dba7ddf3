"""The python backend: a custom agent as a dotted path to ``decide(context) -> Decision``."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from agents.backends.base import BackendError, Decision, StepContext
from agents.config import PythonConfig


class PythonBackend:
    def __init__(self, config: PythonConfig | dict[str, Any]) -> None:
        config = PythonConfig.model_validate(config)
        try:
            self.func = import_string(config.callable)
        except ImportError as exc:
            raise BackendError(f"cannot import {config.callable!r}: {exc}") from exc
        self.options = config.options

    def decide(self, context: StepContext) -> Decision:
        decision = self.func(context)
        if not isinstance(decision, Decision):
            raise BackendError(
                f"{self.func.__module__}.{self.func.__name__} returned "
                f"{type(decision).__name__}, not a Decision"
            )
        return decision
