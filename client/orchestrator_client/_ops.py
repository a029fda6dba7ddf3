"""The protocol's operations, written once for the sync and the async client.

Each operation is a generator: it yields a :class:`Call` (an HTTP request to
send) or a :class:`Sleep`, receives the :class:`Reply` to each call, and
returns its result or raises an :mod:`~orchestrator_client.errors` exception.
:func:`run` drives one with a blocking transport, the async client drives the
same generators with ``await`` (aio.py), so the waiting, polling and error
mapping exist in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from orchestrator_client.errors import (
    ApprovalPending,
    DeadlockVictim,
    OrchestratorError,
    RequestCancelled,
    WaitTimeout,
    error_from,
)

T = TypeVar("T")

POLL_WAIT = 25.0  # seconds per long poll (the server allows up to 30)
# A long poll's answer may take this much longer than its wait before it counts as lost.
POLL_SLACK = 10.0


# Named tuples, not dataclasses: the guard starts a process per edit, and importing
# dataclasses (with inspect) is a noticeable part of its start.
class Call(NamedTuple):
    """One HTTP request, relative to the API's base (``/api/v1``)."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    timeout: float | None = None  # seconds to wait for the answer; None: the client's


class Reply(NamedTuple):
    status: int
    body: Any  # the parsed JSON body, or None


class Sleep(NamedTuple):
    seconds: float


Op = Generator[Call | Sleep, Reply | None, T]


def run(op: Op[T], send: Callable[[Call], Reply]) -> T:
    """Drive ``op`` to its result with a blocking ``send``."""
    reply: Reply | None = None
    while True:
        try:
            step = op.send(reply)
        except StopIteration as done:
            return done.value
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            reply = None
        else:
            reply = send(step)


def resource_path(name: str) -> str:
    """The URL path of a resource: every character but ``/`` percent-encoded."""
    return "/resources/" + quote(name, safe="/")


def expect(reply: Reply | None, *statuses: int) -> Any:
    """The body of ``reply`` if its status is one of ``statuses``, else its exception."""
    assert reply is not None
    if reply.status in statuses:
        return reply.body
    raise error_from(reply.status, reply.body)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _throttled(reply: Reply | None, left: float | None) -> Sleep | None:
    """How long to pause before polling again when the server refused a long poll for
    the agent's cap of waits at once (429 ``too_many_waits``: its ``Retry-After``)."""
    if reply is None or reply.status != 429 or not isinstance(reply.body, dict):
        return None
    if reply.body.get("error") != "too_many_waits":
        return None
    pause = reply.body.get("retry_after")
    pause = float(pause) if isinstance(pause, int | float) and pause > 0 else 1.0
    return Sleep(pause if left is None else max(0.0, min(pause, left)))


def _ended(kind: str, body: dict[str, Any]) -> OrchestratorError:
    reason = body.get("reason") or ""
    if body.get("status") == "aborted":
        return DeadlockVictim(reason or f"the {kind} was aborted to break a deadlock", **body)
    return RequestCancelled(reason or f"the {kind} was cancelled", **body)


# --- resources -----------------------------------------------------------------------


def create_resource(name: str, value: Any, requires_approval: bool) -> Op[dict[str, Any]]:
    reply = yield Call(
        "POST",
        "/resources",
        json={"name": name, "value": value, "requires_approval": requires_approval},
    )
    return expect(reply, 201)


def read_resource(name: str) -> Op[dict[str, Any]]:
    reply = yield Call("GET", resource_path(name))
    return expect(reply, 200)


def write_resource(
    name: str,
    value: Any,
    expected_version: int | None,
    fence: int | None,
    approval: Callable[[int], Any],
    release: bool = False,
) -> Op[dict[str, Any]]:
    """The answer of an applied write (``version``, ``released``, ``lock_id``: with
    ``release``, the lock ``fence`` names ended with the write); ApprovalPending
    (``approval(id)`` attached) if it waits for an operator (the lock is kept)."""
    body: dict[str, Any] = {"value": value}
    if expected_version is not None:
        body["expected_version"] = expected_version
    if fence is not None:
        body["fence"] = fence
    if release:
        body["release"] = True
    reply = yield Call("PUT", resource_path(name), json=body)
    answer = expect(reply, 200, 202)
    if reply is not None and reply.status == 202:
        approval_id = answer["approval_id"]
        raise ApprovalPending(
            f"the write to {name} waits for an operator (approval #{approval_id})",
            approval=approval(approval_id),
            approval_id=approval_id,
        )
    return answer


def simple(method: str, path: str, ok: int = 200, **kwargs: Any) -> Op[Any]:
    reply = yield Call(method, path, **kwargs)
    return expect(reply, ok)


# --- locks ---------------------------------------------------------------------------


def acquire(
    resource: str, mode: str, ttl: int | None, wait: bool, timeout: float | None
) -> Op[dict[str, Any]]:
    """The granted lock (``id``, ``resource``, ``mode``, ``fence``, ``expires_at``, and
    the resource's ``version`` and ``value`` as of the grant).

    Busy when it is held and ``wait`` is false; otherwise the request queues and is
    long-polled until it is granted (DeadlockVictim, RequestCancelled if it ends
    otherwise), or until ``timeout`` seconds have passed: then it is withdrawn and
    WaitTimeout raised (unless it was granted meanwhile). A poll refused because the
    agent has too many waits at once (429 too_many_waits) is asked again after the
    server's Retry-After.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    body: dict[str, Any] = {"resource": resource, "mode": mode, "wait": wait}
    if ttl is not None:
        body["ttl"] = ttl
    reply = yield Call("POST", "/locks", json=body)
    answer = expect(reply, 201, 202)
    if reply is not None and reply.status == 201:
        return answer
    request_id = answer["request_id"]
    path = f"/lock-requests/{request_id}"
    while True:
        left = _left(deadline)
        if left is not None and left <= 0:
            reply = yield Call("DELETE", path)
            polled = expect(reply, 200)
            if polled["status"] == "granted":  # granted meanwhile: it is ours
                return polled["lock"]
            raise WaitTimeout(
                f"{resource} was not granted within {timeout:g} s; the request was withdrawn",
                request_id=request_id,
            )
        wait_for = POLL_WAIT if left is None else max(0.0, min(POLL_WAIT, left))
        reply = yield Call(
            "GET", path, params={"wait": round(wait_for, 3)}, timeout=wait_for + POLL_SLACK
        )
        pause = _throttled(reply, left)
        if pause is not None:  # the request still queues: poll again after the pause
            yield pause
            continue
        polled = expect(reply, 200)
        if polled["status"] == "granted":
            return polled["lock"]
        if polled["status"] != "waiting":
            raise _ended("lock request", polled)


def renew(lock_id: int, ttl: int | None) -> Op[dict[str, Any]]:
    reply = yield Call("POST", f"/locks/{lock_id}/renew", json={"ttl": ttl} if ttl else None)
    return expect(reply, 200)


def release(lock_id: int) -> Op[None]:
    reply = yield Call("DELETE", f"/locks/{lock_id}")
    expect(reply, 204)


def acquire_set(
    resources: list[str], mode: str, ttl: int | None, wait: bool, timeout: float | None
) -> Op[dict[str, Any]]:
    """The granted lock set (``id``, ``locks``, ...), waited for as :func:`acquire` does."""
    deadline = None if timeout is None else time.monotonic() + timeout
    body: dict[str, Any] = {"resources": list(resources), "mode": mode, "wait": wait}
    if ttl is not None:
        body["ttl"] = ttl
    reply = yield Call("POST", "/lock-sets", json=body)
    answer = expect(reply, 201, 202)
    path = f"/lock-sets/{answer['id']}"
    while answer["status"] != "granted":
        if answer["status"] != "waiting":
            raise _ended("lock set", answer)
        left = _left(deadline)
        if left is not None and left <= 0:
            # Cancels it, or releases it if it was granted since the last poll.
            reply = yield Call("DELETE", path)
            answer = expect(reply, 200)
            raise WaitTimeout(
                f"the lock set was not granted within {timeout:g} s; it was withdrawn",
                lock_set_id=answer["id"],
            )
        wait_for = POLL_WAIT if left is None else max(0.0, min(POLL_WAIT, left))
        reply = yield Call(
            "GET", path, params={"wait": round(wait_for, 3)}, timeout=wait_for + POLL_SLACK
        )
        pause = _throttled(reply, left)
        if pause is not None:  # the set still waits: poll again after the pause
            yield pause
            continue
        answer = expect(reply, 200)
    return answer


# --- approvals -----------------------------------------------------------------------


def request_approval(
    resource: str, value: Any, expected_version: int | None, fence: int | None, reason: str
) -> Op[int]:
    body: dict[str, Any] = {"resource": resource, "value": value, "reason": reason}
    if expected_version is not None:
        body["expected_version"] = expected_version
    if fence is not None:
        body["fence"] = fence
    reply = yield Call("POST", "/approvals", json=body)
    return expect(reply, 202)["approval_id"]


def approval_decided(
    approval_id: int, timeout: float | None, interval: float
) -> Op[dict[str, Any]]:
    """The approval once decided (polled every ``interval`` s, backing off to 5 s);
    WaitTimeout if it is still pending after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reply = yield Call("GET", f"/approvals/{approval_id}")
        answer = expect(reply, 200)
        if answer["status"] != "pending":
            return answer
        left = _left(deadline)
        if left is not None and left <= 0:
            raise WaitTimeout(
                f"approval #{approval_id} was not decided within {timeout:g} s",
                approval_id=approval_id,
            )
        yield Sleep(interval if left is None else max(0.0, min(interval, left)))
        interval = min(interval * 1.5, 5.0)
