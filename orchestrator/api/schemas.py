"""Request and response bodies of the agent API.

Request bodies are the agents' operations (core/operations.py), strict like
them: no type coercion and no unknown fields. Where the URL names the resource
or the lock, the body is the rest of the operation. Responses list exactly the
fields of the published contract.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema
from pydantic import ConfigDict, StrictBool, field_validator

from orchestrator.core.models import ConflictKind, ConflictStatus, RequestStatus
from orchestrator.core.operations import (
    Acquire,
    CreateResource,
    FencedWriteBody,
    Renew,
)


class ResourceCreateIn(CreateResource):
    pass


class ResourceWriteIn(FencedWriteBody):
    pass


class LockAcquireIn(Acquire):
    wait: StrictBool = Field(
        False, description="Queue when busy (202) instead of answering 409 busy."
    )


class LockRenewIn(Renew):
    pass


class HolderOut(Schema):
    agent: str
    mode: str
    fence: int
    expires_at: datetime


class WaiterOut(Schema):
    agent: str
    mode: str
    since: datetime


class ResourceOut(Schema):
    name: str
    value: Any
    version: int
    fence: int
    holders: list[HolderOut]
    waiters: list[WaiterOut]


class VersionOut(Schema):
    version: int


class ApprovalPendingOut(Schema):
    approval_id: int


class LockOut(Schema):
    id: int
    resource: str
    mode: str
    fence: int
    expires_at: datetime


class LockWaitingOut(Schema):
    request_id: int
    status: Literal["waiting"]


class LockRequestOut(Schema):
    status: RequestStatus
    lock: LockOut | None
    reason: str


class RenewOut(Schema):
    expires_at: datetime


class ConflictOut(Schema):
    id: int
    kind: ConflictKind
    status: ConflictStatus
    agents: list[str]
    resources: list[str]
    detail: str
    created_at: datetime


class ConflictFilters(Schema):
    kind: ConflictKind | None = Field(None, description="Only conflicts of this kind.")
    status: ConflictStatus | None = Field(None, description="Only conflicts in this status.")

    @field_validator("kind", "status", mode="before")
    @classmethod
    def blank_is_no_filter(cls, value: Any) -> Any:
        return None if value == "" else value


class ErrorOut(Schema):
    """Every 4xx answer: a stable ``error`` code to switch on, and a ``detail`` for humans."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str


class BusyOut(ErrorOut):
    holders: list[HolderOut]


class WriteRejectedOut(ErrorOut):
    error: Literal["version_conflict", "stale_fence", "not_holder"]
    conflict_id: int | None = Field(None, description="The Conflict that records this rejection.")
    current_version: int | None = None
