"""The agents' operations, validated once: one pydantic model per operation.

Every door to the protocol validates an agent's input with these models: the
HTTP API (its request bodies are these models or subclasses of them), the
runtime's tool calls (agents/tools_exec.py, whose tool specs are generated from
them, agents/tools.py) and the MCP server (orchestrator/mcp). The services validate their
plain arguments with the same fields (:func:`checked`), so a direct call with
bad input is refused as it would be over the API.

Input is strict: no type coercion ("5" is not a number, "yes" is not a
boolean) and no unknown fields, so that a misspelt ``expected_version`` is
refused instead of silently turning a guarded write into a blind one.

A refusal (:func:`refusal`) is :class:`Invalid` with the code ``invalid_request``
and a detail naming each field (``ttl: Input should be greater than or equal to
1``), except for the rules of the protocol's own that clients switch on:
``invalid_name``, ``invalid_value`` and ``value_too_large`` (413), whose texts
are those the services always gave.

Where a door names the resource or the lock elsewhere (the API's URL paths),
it takes the model of the rest of the operation: :class:`WriteBody` and
:class:`FencedWrite` without the resource, :class:`Renew` without the lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from django.conf import settings
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.core.errors import Invalid
from orchestrator.core.models import NAME_MAX_LENGTH, TEAM_SEPARATOR

MAX_TTL = 86400  # seconds: the longest lease
MAX_VERSION = 2**62  # versions and fences are below it (bigint columns, with room)
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints; a larger number cannot name a row
MAX_VALUE_DEPTH = 100

# The rules with a code of their own (clients switch on them), with their statuses;
# every other refusal of input is invalid_request (400).
CODED_STATUS = {"invalid_name": 400, "invalid_value": 400, "value_too_large": 413}


def max_value_bytes() -> int:
    """The largest value a resource may hold, in bytes of JSON (256 KiB unless set)."""
    return getattr(settings, "ORCHESTRATOR_MAX_VALUE_BYTES", 256 * 1024)


def _plain_name(name: str) -> str:
    if name != name.strip() or not name.isprintable():
        raise PydanticCustomError(
            "invalid_name", "name must not have surrounding spaces or control characters"
        )
    if TEAM_SEPARATOR in name:
        raise PydanticCustomError(
            "invalid_name",
            "name must not contain '::': it separates a team's name from a resource's",
        )
    if "/" in name:
        _relative_path(name)
    return name


def _relative_path(name: str) -> None:
    """A name with '/' is a path (core/paths.py): relative, normalized, a folder if it
    ends with '/'."""
    parts = (name[:-1] if name.endswith("/") else name).split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise PydanticCustomError(
            "invalid_name",
            "a name with '/' is a relative path: no leading '/', no empty, '.' or '..' "
            "parts (a folder ends with one '/')",
        )


def _storable_value(value: Any) -> Any:
    """A JSON value within the size and nesting limits that PostgreSQL's jsonb can store."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise PydanticCustomError(
            "invalid_value", "value must be JSON: {reason}", {"reason": str(exc)}
        ) from None
    limit = max_value_bytes()
    if len(encoded) > limit:
        raise PydanticCustomError(
            "value_too_large",
            "value is {size} bytes of JSON; the limit is {limit}",
            {"size": len(encoded), "limit": limit},
        )
    _check_nesting_and_nul(value)
    return value


def _check_nesting_and_nul(value: Any) -> None:
    """Refuse what jsonb cannot store and what a later encoder cannot write.

    json.dumps writes NUL as \\u0000, which jsonb rejects; nesting deeper than
    MAX_VALUE_DEPTH could exhaust the stack of psycopg's encoder or a renderer.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise PydanticCustomError("invalid_value", "value must not contain NUL characters")
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > MAX_VALUE_DEPTH:
            raise PydanticCustomError(
                "invalid_value",
                "value must not be nested deeper than {depth} levels",
                {"depth": MAX_VALUE_DEPTH},
            )
        stack.extend((child, depth + 1) for child in children)


# --- the fields ----------------------------------------------------------------------

# A new resource's name (agents' and teams' names follow the same rule).
Name = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        description="1 to 200 printable characters, no surrounding spaces; unique.",
    ),
    AfterValidator(_plain_name),
]
# An existing resource's name: any string (a name that cannot exist is not found).
ResourceRef = Annotated[StrictStr, Field(description="The resource's name.")]
# Any JSON value; size-limited (max_value_bytes), at most MAX_VALUE_DEPTH levels deep.
JsonValue = Annotated[Any, AfterValidator(_storable_value)]
Mode = Literal["exclusive", "shared"]
Ttl = Annotated[StrictInt, Field(ge=1, le=MAX_TTL, description="Lease length in seconds.")]
Version = Annotated[StrictInt, Field(ge=0, lt=MAX_VERSION)]


# --- the operations ------------------------------------------------------------------


class Operation(BaseModel):
    """An agent's request: strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid")


class OnResource(Operation):
    """An operation on one resource, named in its arguments."""

    resource: ResourceRef


class CreateResource(Operation):
    """Create a resource at version 0."""

    name: Name
    value: JsonValue = Field(None, description="Any JSON value (size-limited).")
    requires_approval: StrictBool = Field(
        False, description="Every write to this resource waits for an operator."
    )


class Acquire(OnResource):
    """Lock a resource (the API adds ``wait``: the runtime always waits)."""

    mode: Mode = "exclusive"
    ttl: Ttl | None = Field(None, description="Lease seconds (default: the team's lease TTL).")


MAX_LOCK_SET = 64  # resources in one lock set


class AcquireSet(Operation):
    """Lock several resources all or nothing (core/lock_sets.py)."""

    resources: list[ResourceRef] = Field(
        min_length=1,
        max_length=MAX_LOCK_SET,
        description=f"The resources' names (1 to {MAX_LOCK_SET}), in any order.",
    )
    mode: Mode = "exclusive"
    ttl: Ttl | None = Field(None, description="Lease seconds of each lock (default: team's).")


class Read(OnResource):
    """Read a resource: value, version, fence, holders, waiters."""


class Release(OnResource):
    """Release the caller's lock on a resource (the API names the lock by its id)."""


class Renew(Operation):
    """Extend the lease of a lock the caller holds (named by its id, or the heartbeat's)."""

    ttl: Ttl | None = Field(None, description="New lease seconds from now (default: team's).")


class WriteBody(Operation):
    """What every write says, whatever names its resource."""

    value: JsonValue = Field(
        description="The new JSON value (size-limited); null is a value.",
    )
    expected_version: Version | None = Field(
        None, description="The version the value is based on; a mismatch is a version_conflict."
    )


class FencedWriteBody(WriteBody):
    """A write with the fencing token its writer carries (agents outside the runtime)."""

    fence: Version | None = Field(
        None, description="The fencing token of the exclusive lock the writer holds."
    )


RELEASE_NEEDS_FENCE = (
    "a write releases only the exclusive lock it is fenced by: give that lock's fence"
)


class ReleasesLock(Operation):
    """A write that may end its writer's lock in the same transaction (a lock cycle in
    two commits: acquire, then write and release). Kept off the approval requests: an
    approval re-checks the fence when it is decided, so the lock must stay."""

    release: StrictBool = Field(
        False,
        description="Release the lock this write is fenced by, in the same transaction, "
        "if and only if the write is applied (refused or waiting for approval: the lock "
        "stays held). For the last write of a cycle.",
    )


def release_refusal(release: bool, fence: int | None) -> Invalid | None:
    """The refusal of ``release`` without a ``fence`` (``release: ...``), or None: the
    same text from the services as from the operations' models."""
    if release and fence is None:
        return refusal([{"loc": ("release",), "msg": RELEASE_NEEDS_FENCE, "type": "release"}])
    return None


# Fields are ordered from the last base to the first: value, expected_version, fence,
# release (so that release is validated after fence).
class FencedWrite(ReleasesLock, FencedWriteBody):
    """A fenced write that may release its lock (the API's PUT body; MCP's ``write``)."""

    @field_validator("release")
    @classmethod
    def _fenced(cls, release: bool, info: ValidationInfo) -> bool:
        # A fence that failed its own validation is not in info.data: its error says so.
        if "fence" in info.data and release and info.data["fence"] is None:
            raise PydanticCustomError("release", RELEASE_NEEDS_FENCE)
        return release


class ResourceWrite(WriteBody, OnResource):
    """What the runtime's writes say: resource, value, expected_version. The runtime
    adds the fence of the lock the agent holds."""


# Fields: resource, value, expected_version, release.
class Write(ReleasesLock, ResourceWrite):
    """Write a resource; with ``release``, release its lock in the same transaction."""


class RequestApproval(ResourceWrite):
    """Ask an operator to approve a write before it is applied."""

    value: JsonValue = Field(description="The proposed JSON value (size-limited); null is a value.")
    note: StrictStr = Field("", description="Why, for the operator.")


class Finish(Operation):
    """Say the goal is done."""

    summary: StrictStr = Field("", description="What was done, for the operator.")


# The doors for agents outside the runtime (the HTTP API, the MCP server).


def _printable(text: str) -> str:
    if not text.isprintable():
        raise PydanticCustomError("control_characters", "must not contain control characters")
    return text


ObjectId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class AskApproval(FencedWriteBody, OnResource):
    """Ask an operator to approve a write before it is applied, saying why."""

    value: JsonValue = Field(description="The proposed JSON value (size-limited); null is a value.")
    reason: StrictStr = Field(
        "", max_length=5000, description="Why, for the operator (shown beside the values)."
    )


class ReadApproval(Operation):
    """Ask how an approval the caller requested was decided."""

    approval_id: ObjectId = Field(description="The id that requesting the approval returned.")


class ListResources(Operation):
    """List the resources the caller may use, by name."""

    prefix: Annotated[StrictStr, AfterValidator(_printable)] = Field(
        "", max_length=NAME_MAX_LENGTH, description="Only names that start with this."
    )


class WhoAmI(Operation):
    """Ask who the caller is: its agent, team, live locks, waits and pause."""


# --- validating ----------------------------------------------------------------------

# Union members that pydantic names in an error's location.
_UNION_TAGS = ("int", "float", "str", "bool")


def refusal(errors: Iterable[Mapping[str, Any]]) -> Invalid:
    """The protocol's refusal of input that failed validation (pydantic's ``errors()``,
    each location relative to the operation's fields).

    A protocol rule with a code of its own (CODED_STATUS) answers with that code
    and its text when it is the only kind of failure; any other failure is
    ``invalid_request``, with one message per field: ``ttl: Input should be ...``.
    """
    errors = list(errors)
    if errors and all(error.get("type") in CODED_STATUS for error in errors):
        first = errors[0]
        return Invalid(first["type"], first["msg"], status=CODED_STATUS[first["type"]])
    seen: dict[str, str] = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        field = ".".join(part for part in loc if part not in _UNION_TAGS)
        seen.setdefault(field or "body", error.get("msg", "invalid"))
    return Invalid("invalid_request", "; ".join(f"{field}: {msg}" for field, msg in seen.items()))


OperationT = TypeVar("OperationT", bound=Operation)


def parsed(model: type[OperationT], arguments: Any) -> OperationT:
    """``arguments`` (a dict, as decoded from JSON) as the operation ``model``;
    Invalid (:func:`refusal`) if they do not fit."""
    try:
        return model.model_validate(arguments)
    except ValidationError as exc:
        raise refusal(exc.errors(include_url=False)) from None


@cache
def _field_adapter(model: type[Operation], field: str) -> TypeAdapter[Any]:
    info = model.model_fields[field]
    return TypeAdapter(Annotated[info.annotation, info])


def checked(model: type[Operation], **values: Any) -> dict[str, Any]:
    """``values`` validated as the fields of the same names of ``model``, for a
    service's plain arguments: the same rules, codes and texts as the whole
    operation's. Invalid (:func:`refusal`) naming every field that does not fit."""
    cleaned: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for field, value in values.items():
        try:
            cleaned[field] = _field_adapter(model, field).validate_python(value)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                errors.append({**error, "loc": (field, *error["loc"])})
    if errors:
        raise refusal(errors)
    return cleaned
