"""Request and response bodies of the agent API.

Request bodies are strict: no type coercion ("5" is not a number, "yes" is
not a boolean) and no unknown fields, so that a misspelt ``expected_version``
is refused instead of silently turning a guarded write into a blind one.
Responses list exactly the fields of the published contract.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import ConfigDict, StrictBool, StrictInt, StrictStr, field_validator

from orchestrator.core.locks import MAX_TTL
from orchestrator.core.models import NAME_MAX_LENGTH, ConflictKind, ConflictStatus, RequestStatus

# Ids are PostgreSQL bigints; a larger number cannot name a row.
MAX_ID = 2**63 - 1
Ttl = Annotated[StrictInt, Field(ge=1, le=MAX_TTL, description="Lease length in seconds.")]
Version = Annotated[StrictInt, Field(ge=0, lt=2**62)]


class StrictBody(Schema):
    model_config = ConfigDict(extra="forbid")


class ResourceCreateIn(StrictBody):
    name: StrictStr = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        description="1 to 200 printable characters, no surrounding spaces; unique.",
    )
    value: Any = Field(None, description="Any JSON value (size-limited).")
    requires_approval: StrictBool = Field(
        False, description="Every write to this resource waits for an operator."
    )


class ResourceWriteIn(StrictBody):
    value: Any = Field(description="The new JSON value (size-limited); null is a value.")
    expected_version: Version | None = Field(
        None, description="The version the value is based on; a mismatch is a version_conflict."
    )
    fence: Version | None = Field(
        None, description="The fencing token of the exclusive lock the writer holds."
    )


class LockAcquireIn(StrictBody):
    resource: StrictStr = Field(description="The resource name.")
    mode: Literal["exclusive", "shared"] = "exclusive"
    ttl: Ttl | None = Field(None, description="Lease seconds (default: the team's lease TTL).")
    wait: StrictBool = Field(
        False, description="Queue when busy (202) instead of answering 409 busy."
    )


class LockRenewIn(StrictBody):
    ttl: Ttl | None = Field(None, description="New lease seconds from now (default: team's).")


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
