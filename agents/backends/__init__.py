"""Agent backends: what decides an agent's next tool calls.

A backend is a callable ``decide(context: StepContext) -> Decision``. The
runtime (agents/runtime.py) builds the context, calls the backend once per
step, and executes the returned tool calls through the coordination services.
Backends never touch the database or the services themselves.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agents.backends.base import Backend, BackendError, Decision, StepContext, ToolCall
from agents.config import BACKEND_CONFIGS, backend_config, config_messages

__all__ = ["Backend", "BackendError", "Decision", "StepContext", "ToolCall", "get_backend"]


def get_backend(kind: str, config: Any) -> Backend:
    """The backend for an agent's ``backend`` field and config (agents/config.py).

    Raises BackendError, naming the keys, for a config its model refuses (one
    stored without the admin's validation), and for an unknown backend."""
    try:
        parsed = backend_config(kind, config)
    except ValidationError as exc:
        reasons = " ".join(config_messages(exc, BACKEND_CONFIGS[kind]))
        raise BackendError(f"the agent's {kind} config is invalid: {reasons}") from None
    except ValueError:
        raise BackendError(f"unknown backend {kind!r}") from None
    if kind == "scripted":
        from agents.backends.scripted import ScriptedBackend

        return ScriptedBackend(parsed)
    if kind == "openai":
        from agents.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(parsed)
    from agents.backends.python_backend import PythonBackend

    return PythonBackend(parsed)
