"""The tool surface an agent sees: OpenAI function specs, generated from the
operations' models (core/operations.py), which also validate the arguments
(agents/tools_exec.py).

The runtime executes these through the coordination services; the specs are
what a model is shown. The fencing token of a write is filled in by the
runtime from the lock the agent holds, so a model cannot forget or forge it
(the ``write`` tool's model has no ``fence``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.operations import (
    Acquire,
    AcquireSet,
    Finish,
    Operation,
    Read,
    Release,
    RequestApproval,
    Write,
)

# A value may be any JSON value. Spelled as a list of every JSON type rather than
# left untyped: servers that constrain the model's output with a grammar built from
# the schema (llama.cpp) refuse a property without a type ("Unrecognized schema").
ANY_JSON = ["string", "number", "integer", "boolean", "object", "array", "null"]

# Each tool: its operation, and what the model is told it does.
TOOLS: dict[str, tuple[type[Operation], str]] = {
    "acquire": (
        Acquire,
        "Lock a shared resource before changing it. Exclusive for writing, shared for "
        "reading. If someone else holds it you wait; the result arrives in a later turn. "
        "The grant carries the resource's value and version: no read is needed before "
        "you write.",
    ),
    "acquire_all": (
        AcquireSet,
        "Lock several resources at once, all or nothing: you get every lock or none. "
        "Use it when you change more than one resource together. They are taken in one "
        "order for everybody, so agents that lock with acquire_all never deadlock with "
        "each other. If one is busy you wait; the result, with every lock, arrives in a "
        "later turn. Release each resource with release when you are done.",
    ),
    "read": (Read, "Read a resource: its JSON value, version, holders and waiters."),
    "write": (
        Write,
        "Replace a resource's value. Pass the version you read (or were granted) as "
        "expected_version; if it moved, the write is refused (re-read and retry) or goes "
        "to an operator. On your last write to it, pass release: true to release your "
        "lock with the write (only if it is applied; a refused write keeps the lock).",
    ),
    "release": (Release, "Release your lock on a resource."),
    "request_approval": (
        RequestApproval,
        "Ask a human operator to approve a write before it is applied.",
    ),
    "finish": (Finish, "Say you are done with the goal. Release your locks first."),
}
TOOL_MODELS: dict[str, type[Operation]] = {name: model for name, (model, _) in TOOLS.items()}


def _property(schema: dict[str, Any]) -> dict[str, Any]:
    """One property of a model's JSON schema as function calling wants it."""
    schema = {key: value for key, value in schema.items() if key != "title"}
    options = schema.pop("anyOf", None)
    kept = [option for option in options or [] if option != {"type": "null"}]
    if len(kept) > 1:  # ``X | Y`` (a name or a list of names): each as a property
        return {**schema, "anyOf": [_property(option) for option in kept]}
    if options is not None:  # ``X | None`` with default None: an optional X
        schema = {**kept[0], **schema}
        if schema.get("default", ...) is None:
            del schema["default"]
    if not {"type", "enum", "const"} & schema.keys():  # any JSON value
        schema["type"] = ANY_JSON
    return schema


def tool_parameters(model: type[Operation]) -> dict[str, Any]:
    """The ``parameters`` of a function spec: ``model``'s JSON schema, without the
    titles and the model's own description, every property typed (see ANY_JSON),
    an optional field as its type (not ``anyOf`` with null: leaving it out is how a
    model says "none"), and no references (the models have no nested models)."""
    schema = model.model_json_schema()
    if "$defs" in schema:
        raise ValueError(f"{model.__name__} has nested models, which tool specs do not inline")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {name: _property(prop) for name, prop in schema["properties"].items()},
    }
    if schema.get("required"):
        parameters["required"] = schema["required"]
    if "additionalProperties" in schema:  # Operation forbids unknown fields
        parameters["additionalProperties"] = schema["additionalProperties"]
    return parameters


TOOL_SPECS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": tool_parameters(model),
        },
    }
    for name, (model, description) in TOOLS.items()
]

TOOL_NAMES = tuple(TOOLS)
