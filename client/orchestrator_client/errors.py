"""One exception per error code of the Orchestrator API, under :class:`OrchestratorError`.

Every refusal the server sends is a 4xx with the JSON body ``{"error": code,
"detail": text, ...}`` (docs/api.md, "Errors"). :func:`error_from` turns it into
the class registered for ``code``; a code this version does not know yet falls
back to the class of its HTTP status (a 409 is still a :class:`Conflict`), so a
newer server never breaks an older client's ``except`` clauses.

A few outcomes are not HTTP errors but end a call all the same, and have codes
of their own chosen here: a queued request aborted as a deadlock victim
(``deadlock_victim``) or cancelled by an operator (``cancelled``), a wait that
ran out of the caller's time (``wait_timeout``), a write turned into an
approval (``approval_pending``), a lease the client knows it has lost
(``lease_lost``, also the server's code), and a server that could not be
reached (``unreachable``).
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """A refused or failed call: ``code`` is stable (switch on it), ``detail`` is for humans.

    ``status`` is the HTTP status (0 when no answer came), ``extra`` holds the
    other fields of the error's JSON body (``holders``, ``conflict_id``, ...).
    """

    code = "error"
    status = 0

    def __init__(
        self, detail: str = "", *, code: str | None = None, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra: dict[str, Any] = extra

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code

    @property
    def conflict_id(self) -> int | None:
        """The Conflict that records this refusal on the server, if one does."""
        return self.extra.get("conflict_id")


# --- by HTTP status ------------------------------------------------------------------


class InvalidRequest(OrchestratorError):
    """400: the request is malformed; ``detail`` names each field."""

    code, status = "invalid_request", 400


class Unauthorized(OrchestratorError):
    """401: missing or wrong token."""

    code, status = "unauthorized", 401


class Forbidden(OrchestratorError):
    """403: not yours to change (another agent's lock, a resource shared read-only)."""

    code, status = "forbidden", 403


class NotFound(OrchestratorError):
    """404: no such thing (or not one your team may see)."""

    code, status = "not_found", 404


class MethodNotAllowed(OrchestratorError):
    code, status = "method_not_allowed", 405


class Conflict(OrchestratorError):
    """409: the request clashes with the state of the protocol."""

    code, status = "conflict", 409


class Gone(OrchestratorError):
    """410: the lock has ended."""

    code, status = "gone", 410


class TooLarge(OrchestratorError):
    """413: the value or the body is over its size limit."""

    code, status = "too_large", 413


class TooManyRequests(OrchestratorError):
    """429: too many at once; ask again after ``retry_after`` seconds (Retry-After)."""

    code, status = "too_many_requests", 429

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait before asking again, as the server said (None if it did not)."""
        value = self.extra.get("retry_after")
        return value if isinstance(value, int) else None


class ServerError(OrchestratorError):
    """5xx: the server failed; the request may or may not have been applied."""

    code, status = "server_error", 500


class Unreachable(OrchestratorError):
    """No answer: the server could not be reached, or did not answer in time."""

    code = "unreachable"


# --- 400 -----------------------------------------------------------------------------


class InvalidName(InvalidRequest):
    code = "invalid_name"


class InvalidValue(InvalidRequest):
    code = "invalid_value"


class UpgradeNotSupported(InvalidRequest):
    """You hold a shared lock and asked for an exclusive one: release it first."""

    code = "upgrade_not_supported"


class AmbiguousName(InvalidRequest):
    code = "ambiguous_name"


class OverlappingPaths(InvalidRequest):
    """A lock set names a folder and a path under it: name the folder only."""

    code = "overlapping_paths"


class InvalidAction(InvalidRequest):
    code = "invalid_action"


class InvalidVictim(InvalidRequest):
    code = "invalid_victim"


class OperatorRequired(InvalidRequest):
    """A two-person approval must name an operator (operators' calls only)."""

    code = "operator_required"


class InvalidDecision(InvalidRequest):
    code = "invalid_decision"


# --- 403 -----------------------------------------------------------------------------


class NotYourLock(Forbidden):
    code = "not_your_lock"


class NotYourRequest(Forbidden):
    code = "not_your_request"


class NotYourLockSet(Forbidden):
    code = "not_your_lock_set"


# --- 404 -----------------------------------------------------------------------------


class ResourceNotFound(NotFound):
    code = "resource_not_found"


class LockNotFound(NotFound):
    code = "lock_not_found"


class RequestNotFound(NotFound):
    code = "request_not_found"


class LockSetNotFound(NotFound):
    code = "lock_set_not_found"


class ApprovalNotFound(NotFound):
    code = "approval_not_found"


class RuleNotFound(NotFound):
    """No such standing rule (operators' calls only)."""

    code = "rule_not_found"


class ConflictNotFound(NotFound):
    code = "conflict_not_found"


# --- 409 -----------------------------------------------------------------------------


class Busy(Conflict):
    """The lock is held and you asked not to wait: ``holders`` (one lock) or ``busy``
    (a lock set: each busy resource's holders) says by whom."""

    code = "busy"

    @property
    def holders(self) -> list[dict[str, Any]]:
        if "holders" in self.extra:
            return list(self.extra["holders"])
        return [holder for holders in self.extra.get("busy", {}).values() for holder in holders]

    @property
    def busy(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.extra.get("busy", {}))


class VersionConflict(Conflict):
    """You wrote based on an old version: read again and retry. ``current_version``."""

    code = "version_conflict"

    @property
    def current_version(self) -> int | None:
        return self.extra.get("current_version")


class NotHolder(Conflict):
    """Somebody else holds the lock and you wrote without a fence."""

    code = "not_holder"


class NameTaken(Conflict):
    code = "name_taken"


class AlreadyWaiting(Conflict):
    """A lock set with a resource you already wait for."""

    code = "already_waiting"


class AlreadyDecided(Conflict):
    code = "already_decided"


class AlreadyVoted(Conflict):
    """An operator's second approval of the same value (operators' calls only)."""

    code = "already_voted"


class ApprovalRejected(Conflict):
    """The write was rejected at once by a standing rule (``detail`` says which)."""

    code = "approval_rejected"


class AlreadyResolved(Conflict):
    code = "already_resolved"


# --- 410, and leases lost --------------------------------------------------------------


class LeaseLost(Gone):
    """Your lease ended (expired, revoked, force-released): acquire again, re-read,
    decide again. Raised by the server (410 ``lease_lost`` on renew or release) and
    by the client itself, by the next call on a lock whose renewal failed or whose
    lease ran out by the client's clock."""

    code = "lease_lost"


class StaleFence(LeaseLost):
    """409 ``stale_fence``: your fencing token is not the current one, so your lease
    ended (and maybe somebody else took the lock). Do not retry the write. A
    :class:`LeaseLost`, so that one ``except LeaseLost`` covers both."""

    code, status = "stale_fence", 409


class LockNotLive(Gone):
    code = "lock_not_live"


# --- 413 -----------------------------------------------------------------------------


# --- 429 -----------------------------------------------------------------------------


class TooManyWaits(TooManyRequests):
    """The agent already has as many long polls waiting as the server allows at once
    (ORCHESTRATOR_MAX_WAITS_PER_AGENT): end one, or poll again after ``retry_after``."""

    code = "too_many_waits"


class ValueTooLarge(TooLarge):
    code = "value_too_large"


class RequestTooLarge(TooLarge):
    code = "request_too_large"


# --- ends of waits (no HTTP error) ---------------------------------------------------------


class DeadlockVictim(OrchestratorError):
    """Your queued request (or lock set) was aborted to break a deadlock: it holds
    nothing now. ``detail`` is the server's reason."""

    code = "deadlock_victim"


class RequestCancelled(OrchestratorError):
    """Your queued request (or lock set) was cancelled (by an operator) before it was granted."""

    code = "cancelled"


class WaitTimeout(OrchestratorError):
    """The caller's timeout ran out while waiting; a queued request was withdrawn."""

    code = "wait_timeout"


class ApprovalPending(OrchestratorError):
    """The write was not applied: it waits for an operator's decision.
    ``approval`` is the object to wait on."""

    code, status = "approval_pending", 202

    def __init__(self, detail: str = "", *, approval: Any = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.approval = approval


def _classes(base: type[OrchestratorError]) -> list[type[OrchestratorError]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_classes(sub))
    return found


# Every class by its code; the status classes are the fallbacks by status.
BY_CODE: dict[str, type[OrchestratorError]] = {cls.code: cls for cls in _classes(OrchestratorError)}
BY_STATUS: dict[int, type[OrchestratorError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Gone,
    413: TooLarge,
    429: TooManyRequests,
}


def error_from(status: int, body: Any) -> OrchestratorError:
    """The exception for an error answer: by the body's ``error`` code, else by status."""
    fields = dict(body) if isinstance(body, dict) else {}
    code = fields.pop("error", None)
    detail = fields.pop("detail", None)
    if not isinstance(code, str):
        code = None
    if not isinstance(detail, str):
        detail = "" if body is None or isinstance(body, dict) else str(body)[:500]
    cls = BY_CODE.get(code or "") if code else None
    if cls is None or cls in (Unreachable, DeadlockVictim, RequestCancelled, WaitTimeout):
        cls = BY_STATUS.get(status) or (ServerError if status >= 500 else OrchestratorError)
    return cls(detail, code=code or cls.code, status=status, **fields)
