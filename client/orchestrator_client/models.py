"""The answers the clients return, as small read-only records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resource:
    """A resource as read at one moment: its value, version, current fence, live
    holders and queued waiters."""

    name: str
    value: Any
    version: int
    fence: int
    holders: list[dict[str, Any]] = field(default_factory=list)
    waiters: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Resource:
        return cls(
            name=body["name"],
            value=body["value"],
            version=body["version"],
            fence=body["fence"],
            holders=list(body.get("holders", [])),
            waiters=list(body.get("waiters", [])),
        )


@dataclass(frozen=True)
class ApprovalDecision:
    """How an approval stands: ``status`` is pending, approved, edited (approved with
    a value the operator changed), rejected or failed."""

    approval_id: int
    resource: str
    status: str
    reason: str
    version: int | None
    proposed_value: Any
    applied_value: Any
    requested_at: str
    decided_at: str | None

    @property
    def approved(self) -> bool:
        """The write was applied (as proposed, or as the operator edited it)."""
        return self.status in ("approved", "edited")

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ApprovalDecision:
        return cls(
            approval_id=body["approval_id"],
            resource=body["resource"],
            status=body["status"],
            reason=body.get("reason", ""),
            version=body.get("version"),
            proposed_value=body.get("proposed_value"),
            applied_value=body.get("applied_value"),
            requested_at=body.get("requested_at", ""),
            decided_at=body.get("decided_at"),
        )
