"""The tool surface an agent sees: OpenAI function specs, validated arguments.

The runtime executes these through the coordination services; the specs are
what a model is shown. The fencing token of a write is filled in by the
runtime from the lock the agent holds, so a model cannot forget or forge it.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "description": "The resource's name."}
# A value may be any JSON value. Spelled as a list of every JSON type rather than
# left untyped: servers that constrain the model's output with a grammar built from
# the schema (llama.cpp) refuse a property without a type ("Unrecognized schema").
ANY_JSON = ["string", "number", "integer", "boolean", "object", "array", "null"]
_RESOURCE_ONLY = {
    "type": "object",
    "properties": {"resource": _NAME},
    "required": ["resource"],
    "additionalProperties": False,
}

TOOL_SPECS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "acquire",
            "description": (
                "Lock a shared resource before changing it. Exclusive for writing, shared for "
                "reading. If someone else holds it you wait; the result arrives in a later turn."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "resource": _NAME,
                    "mode": {"type": "string", "enum": ["exclusive", "shared"]},
                    "ttl": {"type": "integer", "minimum": 1, "maximum": 3600},
                },
                "required": ["resource"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read",
            "description": "Read a resource: its JSON value, version, holders and waiters.",
            "parameters": _RESOURCE_ONLY,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write",
            "description": (
                "Replace a resource's value. Pass the version you read as expected_version; "
                "if it moved, the write is refused (re-read and retry) or goes to an operator."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "resource": _NAME,
                    "value": {"type": ANY_JSON, "description": "The new JSON value."},
                    "expected_version": {"type": "integer", "minimum": 0},
                },
                "required": ["resource", "value"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "release",
            "description": "Release your lock on a resource.",
            "parameters": _RESOURCE_ONLY,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "request_approval",
            "description": "Ask a human operator to approve a write before it is applied.",
            "parameters": {
                "type": "object",
                "properties": {
                    "resource": _NAME,
                    "value": {"type": ANY_JSON, "description": "The proposed JSON value."},
                    "expected_version": {"type": "integer", "minimum": 0},
                    "note": {"type": "string", "description": "Why, for the operator."},
                },
                "required": ["resource", "value"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "Say you are done with the goal. Release your locks first.",
            "parameters": {
                "type": "object",
                "properties": {"summary": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    },
]

TOOL_NAMES = tuple(spec["function"]["name"] for spec in TOOL_SPECS)
