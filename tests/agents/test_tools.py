"""The tool specs a model is shown are generated from the operations' models
(agents/tools.py, core/operations.py), in the shape function calling needs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.tools import ANY_JSON, TOOL_MODELS, TOOL_NAMES, TOOL_SPECS, TOOLS
from orchestrator.core.operations import (
    MAX_LOCK_SET,
    Acquire,
    AcquireSet,
    Finish,
    Read,
    Release,
    RequestApproval,
    Write,
)


def spec(name: str) -> dict[str, Any]:
    (found,) = [s["function"] for s in TOOL_SPECS if s["function"]["name"] == name]
    return found


def test_each_tool_is_an_operation() -> None:
    assert {
        "acquire": Acquire,
        "acquire_all": AcquireSet,
        "read": Read,
        "write": Write,
        "release": Release,
        "request_approval": RequestApproval,
        "finish": Finish,
    } == TOOL_MODELS
    assert tuple(TOOL_MODELS) == TOOL_NAMES
    assert [s["function"]["name"] for s in TOOL_SPECS] == list(TOOL_NAMES)
    for tool in TOOL_SPECS:
        assert tool["type"] == "function"
        assert set(tool["function"]) == {"name", "description", "parameters"}
        assert tool["function"]["description"] == TOOLS[tool["function"]["name"]][1]


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_a_tools_parameters_are_its_models_json_schema(name: str) -> None:
    model = TOOL_MODELS[name]
    schema = model.model_json_schema()
    parameters = spec(name)["parameters"]

    assert parameters["type"] == "object"
    assert list(parameters["properties"]) == list(model.model_fields)
    required = [field for field, info in model.model_fields.items() if info.is_required()]
    assert parameters.get("required", []) == required
    assert parameters["additionalProperties"] is schema["additionalProperties"] is False
    for field, given in schema["properties"].items():
        # An optional X is X (leaving the field out says "none"); untitled.
        (expected,) = [o for o in given.get("anyOf", [given]) if o != {"type": "null"}]
        expected = {**expected, **{k: v for k, v in given.items() if k != "anyOf"}}
        expected.pop("title")
        if expected.get("default", ...) is None:
            del expected["default"]
        if "type" not in expected and "enum" not in expected:
            expected["type"] = ANY_JSON  # any JSON value, typed for llama.cpp's grammar
        assert parameters["properties"][field] == expected, field


def test_the_specs_use_only_what_function_calling_needs() -> None:
    text = json.dumps(TOOL_SPECS)
    for construct in ('"$ref"', '"$defs"', '"anyOf"', '"title"', '"allOf"'):
        assert construct not in text


def test_the_models_values_are_typed_and_the_runtime_adds_the_fence() -> None:
    for name in ("write", "request_approval"):
        properties = spec(name)["parameters"]["properties"]
        assert properties["value"]["type"] == ANY_JSON
        assert "fence" not in properties
    acquire = spec("acquire")["parameters"]
    assert "wait" not in acquire["properties"]  # the runtime always waits
    assert acquire["properties"]["ttl"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 86400,
        "description": "Lease seconds (default: the team's lease TTL).",
    }
    assert acquire["properties"]["mode"]["enum"] == ["exclusive", "shared"]


def test_acquire_all_takes_a_typed_list_of_names() -> None:
    """An array property needs its ``items`` typed for llama.cpp's grammar; the runtime
    always waits for a set (no ``wait``), and the mode and lease are those of acquire."""
    parameters = spec("acquire_all")["parameters"]
    assert parameters["required"] == ["resources"]
    assert parameters["properties"]["resources"] == {
        "type": "array",
        "items": {"type": "string", "description": "The resource's name."},
        "minItems": 1,
        "maxItems": MAX_LOCK_SET,
        "description": f"The resources' names (1 to {MAX_LOCK_SET}), in any order.",
    }
    assert set(parameters["properties"]) == {"resources", "mode", "ttl"}
    acquire = spec("acquire")["parameters"]["properties"]
    assert parameters["properties"]["mode"] == acquire["mode"]
    description = spec("acquire_all")["description"]
    for promise in ("all or nothing", "never deadlock", "later turn", "release"):
        assert promise in description
