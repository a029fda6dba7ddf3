"""The MCP tools' arguments: the agents' operations (core/operations.py), as the MCP
door names them.

The HTTP API names locks, lock requests and approvals in its URLs; a tool call
has only its arguments, so these models add the ids to the operations, and the
bounded waits that a tool call may make instead of a long poll.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictFloat

from orchestrator.core.operations import (
    Acquire,
    FencedWriteBody,
    ObjectId,
    OnResource,
    Operation,
    Renew,
)

# MCP clients cut a tool call off at about 60 s: a call never waits longer than this.
MAX_WAIT_SECONDS = 25
Seconds = Annotated[
    StrictFloat,  # an integer is a number too
    Field(ge=0, allow_inf_nan=False, description=f"Seconds to wait; capped at {MAX_WAIT_SECONDS}."),
]


class AcquireArgs(Acquire):
    """Lock a resource; when it is busy, queue and wait up to ``wait_seconds``."""

    # Lock sets: ``resource`` will also take a list of names, taken all or nothing.
    wait_seconds: Seconds = 0


class RequestArgs(Operation):
    """Name a lock request the caller queued."""

    request_id: ObjectId = Field(description="The request_id that acquire returned.")


class WaitArgs(RequestArgs):
    """Wait for a queued lock request to be granted or to end."""

    wait_seconds: Seconds = 20


class WriteArgs(FencedWriteBody, OnResource):
    """Write a resource with the fence of the lock held and the version read."""


class LockArgs(Operation):
    """Name a lock the caller holds."""

    lock_id: ObjectId = Field(description="The lock_id that acquire returned.")


class RenewArgs(Renew, LockArgs):
    """Extend the lease of a lock the caller holds."""


def capped(seconds: float) -> float:
    """A wait as long as asked, up to MAX_WAIT_SECONDS."""
    return min(float(seconds), MAX_WAIT_SECONDS)
