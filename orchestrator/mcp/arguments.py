"""The MCP tools' arguments: the agents' operations (core/operations.py), as the MCP
door names them.

The HTTP API names locks, lock requests and approvals in its URLs; a tool call
has only its arguments, so these models add the ids to the operations, and the
bounded waits that a tool call may make instead of a long poll.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, StrictFloat, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.core.operations import (
    MAX_LOCK_SET,
    Acquire,
    FencedWrite,
    ObjectId,
    OnResource,
    Operation,
    Renew,
    ResourceRef,
)

# MCP clients cut a tool call off at about 60 s: a call never waits longer than this.
MAX_WAIT_SECONDS = 25
Seconds = Annotated[
    StrictFloat,  # an integer is a number too
    Field(ge=0, allow_inf_nan=False, description=f"Seconds to wait; capped at {MAX_WAIT_SECONDS}."),
]


ResourceList = Annotated[list[ResourceRef], Field(min_length=1, max_length=MAX_LOCK_SET)]


class AcquireArgs(Acquire):
    """Lock a resource, or several all or nothing (a lock set); when busy, queue and
    wait up to ``wait_seconds``."""

    resource: ResourceRef | ResourceList = Field(
        description="A resource's name; or a list of names (1 to "
        f"{MAX_LOCK_SET}) to lock all of them or none: a lock set."
    )
    wait_seconds: Seconds = 0


def _one_of(args: Operation, first: str, second: str) -> None:
    if (getattr(args, first) is None) == (getattr(args, second) is None):
        raise PydanticCustomError("one_of", f"give either {first} or {second}")


class RequestArgs(Operation):
    """Name a lock request, or a lock set, that the caller queued."""

    request_id: ObjectId | None = Field(None, description="The request_id that acquire returned.")
    lock_set_id: ObjectId | None = Field(
        None, description="The lock_set_id that acquire returned for a list of resources."
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        _one_of(self, "request_id", "lock_set_id")
        return self


class WaitArgs(RequestArgs):
    """Wait for a queued lock request or lock set to be granted or to end."""

    wait_seconds: Seconds = 20


class WriteArgs(FencedWrite, OnResource):
    """Write a resource with the fence of the lock held and the version read; with
    ``release``, release that lock in the same transaction if the write is applied."""


class LockArgs(Operation):
    """Name a lock the caller holds."""

    lock_id: ObjectId = Field(description="The lock_id that acquire returned.")


class ReleaseArgs(Operation):
    """Name a lock, or a lock set, that the caller holds."""

    lock_id: ObjectId | None = Field(None, description="The lock_id that acquire returned.")
    lock_set_id: ObjectId | None = Field(
        None, description="The lock_set_id of a lock set: releases each of its locks."
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        _one_of(self, "lock_id", "lock_set_id")
        return self


class RenewArgs(Renew, LockArgs):
    """Extend the lease of a lock the caller holds."""


def capped(seconds: float) -> float:
    """A wait as long as asked, up to MAX_WAIT_SECONDS."""
    return min(float(seconds), MAX_WAIT_SECONDS)
