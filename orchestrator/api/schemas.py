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
    AcquireSet,
    AskApproval,
    CreateResource,
    FencedWrite,
    ListResources,
    Renew,
)


class ResourceCreateIn(CreateResource):
    pass


class ResourceWriteIn(FencedWrite):
    pass


class LockAcquireIn(Acquire):
    wait: StrictBool = Field(
        False, description="Queue when busy (202) instead of answering 409 busy."
    )


class LockSetIn(AcquireSet):
    wait: StrictBool = Field(
        False, description="Queue as one request when busy (202) instead of answering 409 busy."
    )


class LockRenewIn(Renew):
    pass


class ApprovalRequestIn(AskApproval):
    pass


class ResourceFilters(ListResources):
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
    version: int = Field(description="The version the value was written as.")
    released: bool = Field(
        description="Whether the lock was released with this write (asked with `release`)."
    )
    lock_id: int | None = Field(description="The lock released with the write, if any.")


class ApprovalPendingOut(Schema):
    approval_id: int


class LockOut(Schema):
    id: int
    resource: str
    mode: str
    fence: int
    expires_at: datetime
    version: int = Field(
        description="The resource's version as of the answer: while you hold the lock "
        "(exclusive), nobody else writes it, so it needs no separate read."
    )
    value: Any = Field(description="The resource's value at that version.")


class LockWaitingOut(Schema):
    request_id: int
    status: Literal["waiting"]


class LockRequestOut(Schema):
    status: RequestStatus
    lock: LockOut | None
    reason: str


class LockSetOut(Schema):
    id: int
    status: RequestStatus = Field(
        description="`granted` (every lock is in `locks`), `waiting`, or ended: `cancelled`, "
        "`aborted` (a deadlock victim; `reason` says why)."
    )
    mode: str
    resources: list[str] = Field(description="Its resources, in the order they are taken.")
    locks: list[LockOut] = Field(description="Granted: one lock per resource, in that order.")
    waiting_on: str | None = Field(description="Waiting: the resource it is queued for.")
    held: int = Field(description="Waiting: how many of its resources it holds meanwhile.")
    reason: str


class RenewOut(Schema):
    expires_at: datetime


class ConflictOut(Schema):
    id: int
    kind: ConflictKind
    status: ConflictStatus
    agents: list[str]
    resources: list[str] = Field(description="As you name them: another team's as owner::name.")
    detail: str
    occurrences: int = Field(
        description="How many times it happened: the same refusal repeated by one agent on "
        "one resource soon after counts here instead of adding a conflict."
    )
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


class BlockerOut(HolderOut):
    resource: str = Field(
        description="What it holds: this resource, or a folder above it, or a path under it."
    )


class BusyOut(ErrorOut):
    holders: list[BlockerOut]


class SetBusyOut(ErrorOut):
    busy: dict[str, list[BlockerOut]] = Field(description="Each busy resource's holders.")


class WriteRejectedOut(ErrorOut):
    error: Literal["version_conflict", "stale_fence", "not_holder", "approval_rejected"]
    conflict_id: int | None = Field(None, description="The Conflict that records this rejection.")
    current_version: int | None = None


class ApprovalRequestedOut(Schema):
    approval_id: int
    status: Literal["pending", "approved"] = Field(
        description="`approved` when a standing rule approved it at once (no operator)."
    )
    version: int | None = Field(None, description="The version it was applied as, if approved.")
    reason: str = Field("", description="Why it was decided at once (the standing rule).")


class ApprovalStatusOut(Schema):
    approval_id: int
    resource: str
    status: Literal["pending", "approved", "edited", "rejected", "failed"]
    reason: str = Field(description="The operator's note (a rejection's reason), or why it failed.")
    version: int | None = Field(description="The version the value was applied as.")
    proposed_value: Any
    applied_value: Any
    requested_at: datetime
    decided_at: datetime | None


class ResourceSummaryOut(Schema):
    name: str = Field(description="As you name it: `name`, or `owner::name` for another team's.")
    access: Literal["own", "read", "read_write"] = Field(
        description="Your team's (`own`), or shared with it read-only or read-write."
    )
    version: int
    requires_approval: bool
    updated_at: datetime
    held_by: list[str] = Field(description="The agents holding a live lock on it now.")


class ResourceListOut(Schema):
    resources: list[ResourceSummaryOut]
    truncated: bool = Field(description="There are more than were listed: narrow the prefix.")


class AgentSelfOut(Schema):
    id: int
    name: str
    role: str


class TeamSelfOut(Schema):
    id: int
    name: str
    default_lease_ttl: int


class OwnLockOut(Schema):
    lock_id: int
    resource: str
    mode: str
    fence: int
    expires_at: datetime
    lease_seconds_left: float
    lock_set_id: int | None = Field(description="The lock set this lock was taken with, if any.")


class OwnWaitOut(Schema):
    request_id: int
    resource: str
    mode: str
    since: datetime
    lock_set_id: int | None = Field(
        description="The lock set waiting here (poll GET /lock-sets/{id}), if any."
    )


class WhoAmIOut(Schema):
    agent: AgentSelfOut
    team: TeamSelfOut
    paused: bool = Field(description="Paused by an operator: change nothing until resumed.")
    paused_by: list[Literal["agent", "team", "everything"]]
    locks: list[OwnLockOut]
    waits: list[OwnWaitOut]
