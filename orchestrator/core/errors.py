"""Errors that services raise for requests they refuse before changing anything.

Outcomes that must be recorded (a stale write, a lost lease) are *results*,
committed with their Conflict and Event; these exceptions are for refusals
that leave no trace, so raising them rolls back the whole transaction.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """A refused request: ``code`` is stable (clients switch on it), ``detail`` is for humans."""

    status = 400

    def __init__(self, code: str, detail: str, *, status: int | None = None, **extra: Any):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status is not None:
            self.status = status
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class NotFound(ProtocolError):
    status = 404


class Forbidden(ProtocolError):
    status = 403


class Invalid(ProtocolError):
    status = 400


class Gone(ProtocolError):
    status = 410


class Conflicting(ProtocolError):
    status = 409


class Throttled(ProtocolError):
    """Too many at once: ask again in ``retry_after`` seconds (the API's Retry-After)."""

    status = 429

    def __init__(self, code: str, detail: str, *, retry_after: int, **extra: Any):
        super().__init__(code, detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after
