"""The interface between the runtime and a backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class BackendError(Exception):
    """The backend could not produce a decision; the step fails with this message."""


@dataclass
class ToolCall:
    """One tool call the backend asks for.

    ``arguments`` is None when the backend produced something that is not a
    JSON object; ``error`` then says what was wrong, and the runtime reports
    it back to the model as the tool's result instead of executing anything.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    error: str = ""


@dataclass
class Decision:
    """What the backend decided this turn: optional text and tool calls."""

    message: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class StepContext:
    """Everything a backend may look at for one step (plain data, JSON-safe).

    ``transcript`` is the agent's conversation so far in this run, as
    OpenAI-style chat messages: ``{"role": "assistant", "content": ...,
    "tool_calls": [{"id", "type": "function", "function": {"name",
    "arguments"}}]}`` and ``{"role": "tool", "tool_call_id": ..., "content":
    <JSON text of the result>}``. ``tools`` are the OpenAI tool specs
    (agents/tools.py). ``seed`` is the run's seed mixed with the agent's id
    and the step number, for reproducible randomness.
    """

    agent: str
    role: str
    goal: str
    config: dict[str, Any]
    transcript: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    step_number: int
    seed: int


class Backend(Protocol):
    def decide(self, context: StepContext) -> Decision: ...
