"""Agent backends: what decides an agent's next tool calls.

A backend is a callable ``decide(context: StepContext) -> Decision``. The
runtime (agents/runtime.py) builds the context, calls the backend once per
step, and executes the returned tool calls through the coordination services.
Backends never touch the database or the services themselves.
"""

from __future__ import annotations

from agents.backends.base import Backend, BackendError, Decision, StepContext, ToolCall

__all__ = ["Backend", "BackendError", "Decision", "StepContext", "ToolCall", "get_backend"]


def get_backend(kind: str, config: dict) -> Backend:
    """The backend for an agent's ``backend`` field and (validated) config."""
    if kind == "scripted":
        from agents.backends.scripted import ScriptedBackend

        return ScriptedBackend(config)
    if kind == "openai":
        from agents.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(config)
    if kind == "python":
        from agents.backends.python_backend import PythonBackend

        return PythonBackend(config)
    raise BackendError(f"unknown backend {kind!r}")
