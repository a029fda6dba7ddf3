"""The agents' operations (core/operations.py): each model takes good input and
refuses bad input with the protocol's codes and texts, and the services refuse a
direct call's bad arguments with the same refusal."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.errors import Invalid
from orchestrator.core.locks import lock_acquire, lock_renew
from orchestrator.core.models import Event, Lock, LockMode, Resource
from orchestrator.core.operations import (
    MAX_TTL,
    MAX_VALUE_DEPTH,
    MAX_VERSION,
    RELEASE_NEEDS_FENCE,
    Acquire,
    AskApproval,
    CreateResource,
    FencedWrite,
    FencedWriteBody,
    Finish,
    Read,
    Release,
    Renew,
    RequestApproval,
    Write,
    WriteBody,
    checked,
    parsed,
    refusal,
)
from orchestrator.core.resources import resource_create, resource_write
from tests import factories


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


GOOD = [
    (CreateResource, {"name": "rooms/101"}, {"value": None, "requires_approval": False}),
    (CreateResource, {"name": "x" * 200, "value": {"a": [1]}, "requires_approval": True}, {}),
    (Acquire, {"resource": "doc"}, {"mode": "exclusive", "ttl": None}),
    (Acquire, {"resource": "doc", "mode": "shared", "ttl": MAX_TTL}, {}),
    (
        Acquire,
        {"resource": "", "ttl": 1},
        {"mode": "exclusive"},
    ),  # a name that cannot exist is not found later
    (Read, {"resource": "doc"}, {}),
    (Release, {"resource": "doc"}, {}),
    (Renew, {}, {"ttl": None}),
    (Renew, {"ttl": 30}, {}),
    (Write, {"resource": "doc", "value": None}, {"expected_version": None, "release": False}),
    (
        Write,
        {"resource": "doc", "value": [1, "two"], "expected_version": MAX_VERSION - 1},
        {"release": False},
    ),
    (Write, {"resource": "doc", "value": 1, "release": True}, {"expected_version": None}),
    (FencedWrite, {"value": 1, "fence": 3, "release": True}, {"expected_version": None}),
    (FencedWrite, {"value": 1}, {"expected_version": None, "fence": None, "release": False}),
    (WriteBody, {"value": 0, "expected_version": 0}, {}),
    (FencedWriteBody, {"value": "v", "fence": 3}, {"expected_version": None}),
    (RequestApproval, {"resource": "doc", "value": 1}, {"expected_version": None, "note": ""}),
    (
        RequestApproval,
        {"resource": "doc", "value": 1, "note": "please"},
        {"expected_version": None},
    ),
    (Finish, {}, {"summary": ""}),
    (Finish, {"summary": "booked 101"}, {}),
]


@pytest.mark.parametrize(("model", "arguments", "defaults"), GOOD)
def test_good_input_is_taken_as_given_with_the_defaults(model, arguments, defaults) -> None:
    operation = parsed(model, arguments)
    assert operation.model_dump() == {**defaults, **arguments}


BAD = [
    # types: strict, no coercion
    (CreateResource, {"name": 5}, "invalid_request", "name: Input should be a valid string"),
    (CreateResource, {"name": "x", "requires_approval": "yes"}, "invalid_request",
     "requires_approval: Input should be a valid boolean"),
    (CreateResource, {"name": "x", "requires_approval": 1}, "invalid_request",
     "requires_approval: Input should be a valid boolean"),
    (Acquire, {"resource": 5}, "invalid_request", "resource: Input should be a valid string"),
    (Acquire, {"resource": "doc", "ttl": "5"}, "invalid_request",
     "ttl: Input should be a valid integer"),
    (Acquire, {"resource": "doc", "ttl": 1.5}, "invalid_request",
     "ttl: Input should be a valid integer"),
    (Acquire, {"resource": "doc", "ttl": True}, "invalid_request",
     "ttl: Input should be a valid integer"),
    (Write, {"resource": "doc", "value": 1, "expected_version": "0"}, "invalid_request",
     "expected_version: Input should be a valid integer"),
    (Finish, {"summary": 5}, "invalid_request", "summary: Input should be a valid string"),
    (RequestApproval, {"resource": "d", "value": 1, "note": None}, "invalid_request",
     "note: Input should be a valid string"),
    # ranges and choices
    (CreateResource, {"name": ""}, "invalid_request",
     "name: String should have at least 1 character"),
    (CreateResource, {"name": "x" * 201}, "invalid_request",
     "name: String should have at most 200 characters"),
    (Acquire, {"resource": "doc", "mode": "upgradable"}, "invalid_request",
     "mode: Input should be 'exclusive' or 'shared'"),
    (Acquire, {"resource": "doc", "ttl": 0}, "invalid_request",
     "ttl: Input should be greater than or equal to 1"),
    (Renew, {"ttl": MAX_TTL + 1}, "invalid_request",
     "ttl: Input should be less than or equal to 86400"),
    (Write, {"resource": "doc", "value": 1, "expected_version": -1}, "invalid_request",
     "expected_version: Input should be greater than or equal to 0"),
    (FencedWriteBody, {"value": 1, "fence": MAX_VERSION}, "invalid_request",
     f"fence: Input should be less than {MAX_VERSION}"),
    # required and unknown fields
    (Read, {}, "invalid_request", "resource: Field required"),
    (Write, {"resource": "doc"}, "invalid_request", "value: Field required"),
    (Acquire, {"resource": "doc", "lease": 5}, "invalid_request",
     "lease: Extra inputs are not permitted"),
    (Write, {"resource": "doc", "value": 1, "expected_verison": 0}, "invalid_request",
     "expected_verison: Extra inputs are not permitted"),
    # a runtime agent cannot forge a fence: the runtime adds it
    (Write, {"resource": "doc", "value": 1, "fence": 9}, "invalid_request",
     "fence: Extra inputs are not permitted"),
    (Finish, {"summary": "done", "ok": True}, "invalid_request",
     "ok: Extra inputs are not permitted"),
    # a write releases only the lock it is fenced by; an approval request never does
    (FencedWrite, {"value": 1, "release": True}, "invalid_request",
     f"release: {RELEASE_NEEDS_FENCE}"),
    (FencedWrite, {"value": 1, "fence": None, "release": True}, "invalid_request",
     f"release: {RELEASE_NEEDS_FENCE}"),
    (FencedWrite, {"value": 1, "fence": "3", "release": True}, "invalid_request",
     "fence: Input should be a valid integer"),
    (FencedWrite, {"value": 1, "fence": 3, "release": 1}, "invalid_request",
     "release: Input should be a valid boolean"),
    (RequestApproval, {"resource": "d", "value": 1, "release": True}, "invalid_request",
     "release: Extra inputs are not permitted"),
    (AskApproval, {"resource": "d", "value": 1, "fence": 3, "release": True},
     "invalid_request", "release: Extra inputs are not permitted"),
    (Finish, None, "invalid_request",
     "body: Input should be a valid dictionary or instance of Finish"),
    # the protocol's own rules, with their own codes and the services' texts
    (CreateResource, {"name": " padded "}, "invalid_name",
     "name must not have surrounding spaces or control characters"),
    (CreateResource, {"name": "tab\there"}, "invalid_name",
     "name must not have surrounding spaces or control characters"),
    (WriteBody, {"value": "a\x00b"}, "invalid_value", "value must not contain NUL characters"),
    (WriteBody, {"value": float("nan")}, "invalid_value",
     "value must be JSON: Out of range float values are not JSON compliant"),
    (WriteBody, {"value": {1, 2}}, "invalid_value",
     "value must be JSON: Object of type set is not JSON serializable"),
    (WriteBody, {"value": nested(MAX_VALUE_DEPTH + 1)}, "invalid_value",
     "value must not be nested deeper than 100 levels"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "arguments", "code", "detail"), BAD)
def test_bad_input_is_refused_with_the_protocols_code_and_text(
    model, arguments, code, detail
) -> None:
    with pytest.raises(Invalid) as refused:
        parsed(model, arguments)
    assert (refused.value.code, refused.value.detail, refused.value.status) == (code, detail, 400)


def test_values_are_limited_in_size_by_the_setting_and_in_depth(settings) -> None:
    settings.ORCHESTRATOR_MAX_VALUE_BYTES = 100
    assert parsed(WriteBody, {"value": "x" * 98}).value == "x" * 98  # 100 bytes with quotes
    with pytest.raises(Invalid) as refused:
        parsed(WriteBody, {"value": "x" * 99})
    assert refused.value.as_dict() == {
        "error": "value_too_large",
        "detail": "value is 101 bytes of JSON; the limit is 100",
    }
    assert refused.value.status == 413
    settings.ORCHESTRATOR_MAX_VALUE_BYTES = 10_000
    assert parsed(WriteBody, {"value": nested(MAX_VALUE_DEPTH)}).value == nested(MAX_VALUE_DEPTH)


def test_a_failure_of_the_schema_comes_before_the_protocols_own_rules() -> None:
    """As before the models: the schema refused first, naming each field."""
    with pytest.raises(Invalid) as refused:
        parsed(CreateResource, {"name": " padded ", "requires_approval": "yes"})
    assert refused.value.code == "invalid_request"
    assert refused.value.detail == (
        "name: name must not have surrounding spaces or control characters; "
        "requires_approval: Input should be a valid boolean"
    )


def test_refusal_names_each_field_once_and_drops_union_member_names() -> None:
    errors = [
        {"type": "int_type", "loc": ("ttl", "int"), "msg": "Input should be a valid integer"},
        {"type": "float_type", "loc": ("ttl", "float"), "msg": "Input should be a number"},
        {"type": "missing", "loc": (), "msg": "Field required"},
    ]
    assert refusal(errors).as_dict() == {
        "error": "invalid_request",
        "detail": "ttl: Input should be a valid integer; body: Field required",
    }


@pytest.mark.parametrize(
    ("model", "fields", "whole"),
    [
        (Acquire, {"mode": "weird", "ttl": 0}, {"resource": "r", "mode": "weird", "ttl": 0}),
        (Renew, {"ttl": "5"}, {"ttl": "5"}),
        (CreateResource, {"name": "\tx"}, {"name": "\tx"}),
        (FencedWriteBody, {"value": 1, "fence": -1}, {"value": 1, "fence": -1}),
        (WriteBody, {"value": "\x00"}, {"value": "\x00"}),
    ],
)
def test_a_services_fields_are_refused_as_the_whole_operation_is(model, fields, whole) -> None:
    with pytest.raises(Invalid) as by_fields:
        checked(model, **fields)
    with pytest.raises(Invalid) as by_model:
        parsed(model, whole)
    assert by_fields.value.as_dict() == by_model.value.as_dict()
    assert by_fields.value.status == by_model.value.status


@pytest.mark.django_db
def test_the_services_refuse_bad_arguments_with_the_operations_refusal() -> None:
    agent = factories.agent()
    resource_create(team=agent.team, name="r")
    before = Event.objects.count()
    calls: list[tuple[Any, dict[str, Any], type, dict[str, Any]]] = [
        (lock_acquire, {"resource": "r", "ttl": 0}, Acquire, {"resource": "r", "ttl": 0}),
        (lock_acquire, {"resource": "r", "mode": "weird"},
         Acquire, {"resource": "r", "mode": "weird"}),
        (lock_renew, {"lock_id": 1, "ttl": 10**9}, Renew, {"ttl": 10**9}),
        (resource_create, {"name": " r "}, CreateResource, {"name": " r "}),
        (resource_write, {"resource": "r", "value": 1, "fence": -1},
         FencedWriteBody, {"value": 1, "fence": -1}),
        (resource_write, {"resource": "r", "value": 1, "expected_version": True},
         FencedWriteBody, {"value": 1, "expected_version": True}),
        (resource_write, {"resource": "r", "value": 1, "release": True},
         FencedWrite, {"value": 1, "release": True}),
        (resource_write, {"resource": "r", "value": 1, "fence": 1, "release": "yes"},
         FencedWrite, {"value": 1, "fence": 1, "release": "yes"}),
    ]  # fmt: skip
    for service, arguments, model, operation in calls:
        with pytest.raises(Invalid) as by_service:
            service(agent=agent, **arguments)
        with pytest.raises(Invalid) as by_model:
            parsed(model, operation)
        assert by_service.value.as_dict() == by_model.value.as_dict(), service
    assert Event.objects.count() == before
    assert not Lock.objects.exists()
    assert list(Resource.objects.values_list("name", flat=True)) == ["r"]


@pytest.mark.django_db
def test_the_services_take_the_lock_modes_enum() -> None:
    agent = factories.agent()
    resource_create(team=agent.team, name="r")
    granted = lock_acquire(agent=agent, resource="r", mode=LockMode.SHARED, ttl=5)
    assert (granted.status, granted.lock.mode) == ("granted", "shared")
