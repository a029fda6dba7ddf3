"""What the sync and the async clients share: the operations they offer, as
generators (see _ops.py), and what a lock knows of its lease.

client.py runs these operations with a blocking transport and renews leases in a
thread; aio.py awaits them and renews in a task. Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator_client import _ops
from orchestrator_client._ops import Op
from orchestrator_client.errors import LeaseLost, OrchestratorError, StaleFence

if TYPE_CHECKING:
    from orchestrator_client.models import ApprovalDecision, Resource

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_TTL = 30
MIN_RENEW_INTERVAL = 0.2


def mapped(op: Op[T], convert: Callable[[T], U]) -> Op[U]:
    return convert((yield from op))


def _version(answer: dict[str, Any]) -> int:
    return answer["version"]


class Lease:
    """A held lease by this process's clock: it ends ``ttl`` seconds after the last
    renewal was *sent* (the server counts from when it received it, later), so the
    client never believes in a lease the server has already ended."""

    def __init__(self, ttl: int, sent_at: float) -> None:
        self.ttl = ttl
        self.deadline = sent_at + ttl
        self.lost: tuple[str, BaseException | None] | None = None

    def renewed(self, sent_at: float) -> None:
        if self.lost is None:
            self.deadline = max(self.deadline, sent_at + self.ttl)

    def lose(self, detail: str, cause: BaseException | None = None) -> None:
        if self.lost is None:
            self.lost = (detail, cause)

    def check(self, what: str) -> None:
        """Raise LeaseLost if the lease is known lost or has run out by our clock."""
        if self.lost is None and time.monotonic() >= self.deadline:
            self.lose(
                f"the lease of {what} ran out before it could be renewed: another agent may "
                "hold it now; acquire it again and re-read"
            )
        if self.lost is not None:
            raise self.error()

    def error(self) -> LeaseLost:
        assert self.lost is not None
        detail, cause = self.lost
        error = LeaseLost(detail)
        error.__cause__ = cause
        return error


class ClientBase:
    """The operations of the API, as generators, with their answers shaped; and the
    transport that sends them (each client's kind of httpx client, unless given)."""

    transport_class = ""  # the name of its default transport, in _transport.py

    def __init__(
        self, base_url: str, token: str, *, timeout: float = 10.0, transport: Any = None
    ) -> None:
        if transport is None:
            from orchestrator_client import _transport

            transport = getattr(_transport, self.transport_class)(base_url, token, timeout)
        self.transport = transport
        self.base_url = base_url

    def _read_op(self, name: str) -> Op[Resource]:
        from orchestrator_client.models import Resource

        return mapped(_ops.read_resource(name), Resource.from_body)

    def _create_op(self, name: str, value: Any, requires_approval: bool) -> Op[Resource]:
        from orchestrator_client.models import Resource

        return mapped(_ops.create_resource(name, value, requires_approval), Resource.from_body)

    def _write_op(
        self, name: str, value: Any, expected_version: int | None, fence: int | None
    ) -> Op[int]:
        return mapped(self._written_op(name, value, expected_version, fence), _version)

    def _written_op(
        self,
        name: str,
        value: Any,
        expected_version: int | None,
        fence: int | None,
        release: bool = False,
    ) -> Op[dict[str, Any]]:
        return _ops.write_resource(name, value, expected_version, fence, self.approval, release)

    def _approval_op(
        self,
        name: str,
        value: Any,
        expected_version: int | None,
        fence: int | None,
        reason: str,
    ) -> Op[Any]:
        return mapped(
            _ops.request_approval(name, value, expected_version, fence, reason), self.approval
        )

    def _whoami_op(self) -> Op[dict[str, Any]]:
        return _ops.simple("GET", "/whoami")

    def _resources_op(self, prefix: str) -> Op[dict[str, Any]]:
        return _ops.simple("GET", "/resources", params={"prefix": prefix})

    def _conflicts_op(self, kind: str | None, status: str | None) -> Op[list[dict[str, Any]]]:
        params = {key: value for key, value in (("kind", kind), ("status", status)) if value}
        return _ops.simple("GET", "/conflicts", params=params)

    def approval(self, approval_id: int) -> Any:  # pragma: no cover - each client's own
        raise NotImplementedError


class HeldBase:
    """A lock or a lock set: how it is asked for, and its lease once granted."""

    what = "lock"

    def __init__(
        self,
        client: ClientBase,
        *,
        mode: str = "exclusive",
        ttl: int = DEFAULT_TTL,
        wait: bool = True,
        timeout: float | None = None,
        renew: bool = True,
    ) -> None:
        self.client = client
        self.mode = mode
        self.ttl = ttl
        self.wait = wait
        self.timeout = timeout
        self.renew_in_background = renew
        self.info: dict[str, Any] | None = None
        self.lease: Lease | None = None
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else ("held" if self.info else "not acquired")
        return f"<{type(self).__name__} {self.what}: {self.mode}, {state}>"

    @property
    def id(self) -> int:
        return self._info()["id"]

    @property
    def held(self) -> bool:
        """Granted, not released, and not known lost (by this process's clock)."""
        if self.info is None or self.released or self.lease is None:
            return False
        try:
            self.lease.check(self.what)
        except LeaseLost:
            return False
        return True

    @property
    def renew_interval(self) -> float:
        return max(MIN_RENEW_INTERVAL, self.ttl / 3)

    def _info(self) -> dict[str, Any]:
        if self.info is None:
            raise RuntimeError(f"the {self.what} has not been acquired")
        return self.info

    def _live(self) -> None:
        """Raise unless it is held: LeaseLost once its lease is lost."""
        self._info()
        if self.released:
            raise LeaseLost(f"the {self.what} was released; acquire it again")
        assert self.lease is not None
        self.lease.check(self.what)

    def _granted(self, info: dict[str, Any], sent_at: float) -> None:
        self.info = dict(info)
        self.lease = Lease(self.ttl, sent_at)
        self.released = False

    def _renewal(self, locks: list[LockBase]) -> Op[Any]:
        """Renew ``locks`` (this lock, or every lock of this set), sent now; the lease is
        extended, or marked lost if the server says they have ended."""
        sent_at = time.monotonic()
        assert self.lease is not None
        answer = None
        for lock in locks:
            try:
                answer = yield from _ops.renew(lock.id, self.ttl)
            except OrchestratorError as exc:
                if exc.status in (403, 404, 410):  # it has ended, or is not ours any more
                    self.lease.lose(f"renewing the lock on {lock.resource} failed: {exc}", exc)
                raise
            lock.info = {**lock._info(), "expires_at": answer["expires_at"]}
        self.lease.renewed(sent_at)
        return answer

    def _renewed_in_background(self) -> None:
        """After a background renewal failed: lost once the lease has run out."""
        assert self.lease is not None
        if time.monotonic() >= self.lease.deadline:
            self.lease.lose(f"the lease of {self.what} ran out: its renewals did not get through")


class LockBase(HeldBase):
    """One lock on one resource: what the sync and async locks share."""

    def __init__(self, client: ClientBase, resource: str, **asked: Any) -> None:
        super().__init__(client, **asked)
        self.resource = resource

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"the lock on {self.resource}"

    @property
    def _lease_holder(self) -> Any:
        """What renews this lock's lease: the lock itself (a set's lock: the set)."""
        return self

    @property
    def fence(self) -> int:
        """The fencing token, sent with every write through this lock."""
        return self._info()["fence"]

    @property
    def expires_at(self) -> str:
        """When the lease ends by the server's clock, as of the grant or last renewal."""
        return self._info()["expires_at"]

    @property
    def version(self) -> int:
        """The resource's version as of the grant: while an exclusive lock is held nobody
        else writes it, so a cycle needs no read (``write(..., expected_version=...)``)."""
        return self._info()["version"]

    @property
    def value(self) -> Any:
        """The resource's value at :attr:`version`, as of the grant."""
        return self._info()["value"]

    def _acquire_op(self) -> Op[dict[str, Any]]:
        return _ops.acquire(self.resource, self.mode, self.ttl, self.wait, self.timeout)

    def _fenced(self, op: Op[T]) -> Op[T]:
        """``op``, after which a stale fence marks the lease lost for every later call."""
        try:
            return (yield from op)
        except StaleFence as exc:
            assert self.lease is not None
            self.lease.lose(exc.detail, exc)
            raise

    def _read_op(self) -> Op[Resource]:
        self._live()
        return self.client._read_op(self.resource)

    def _write_op(self, value: Any, expected_version: int | None, release: bool = False) -> Op[int]:
        """The version written; with ``release``, the lock ends with the write (only if it
        is applied: a refusal or a pending approval keeps it), and so here too."""
        self._live()
        return mapped(
            self._fenced(
                self.client._written_op(self.resource, value, expected_version, self.fence, release)
            ),
            self._after_write,
        )

    def _after_write(self, answer: dict[str, Any]) -> int:
        if answer.get("released"):
            self._released_by_write()
        return answer["version"]

    def _released_by_write(self) -> None:
        """The server released this lock with a write: a later release() is a no-op."""
        self.released = True

    def _approval_op(self, value: Any, expected_version: int | None, reason: str) -> Op[Any]:
        self._live()
        return self._fenced(
            self.client._approval_op(self.resource, value, expected_version, self.fence, reason)
        )

    def _renew_op(self) -> Op[dict[str, Any]]:
        self._live()
        return self._renewal([self])

    def _release_op(self) -> Op[None]:
        self._info()
        self.released = True
        return _ops.release(self.id)


class SetMember(LockBase):
    """One lock of a lock set: read and write through it (its own fence); the set
    renews and releases them all, and its lease is theirs."""

    def __init__(self, owner: LockSetBase, info: dict[str, Any]) -> None:
        super().__init__(owner.client, info["resource"], mode=owner.mode, ttl=owner.ttl)
        self.owner = owner
        self.info = dict(info)
        self.ended = False  # released with a write, before the rest of the set

    @property
    def _lease_holder(self) -> Any:
        return self.owner

    def _live(self) -> None:
        if self.ended:
            raise LeaseLost(f"{self.what} was released with a write; acquire it again")
        self.owner._live()

    def _released_by_write(self) -> None:
        """This lock ended with a write: the set no longer renews it, and once each of
        its locks has ended so, the set is released."""
        self.ended = True
        if all(member.ended for member in self.owner.members.values()):
            self.owner.released = True

    @property
    def lease(self) -> Lease | None:  # type: ignore[override]
        return self.owner.lease

    @lease.setter
    def lease(self, value: Lease | None) -> None:
        pass

    @property
    def released(self) -> bool:  # type: ignore[override]
        return self.owner.released

    @released.setter
    def released(self, value: bool) -> None:
        pass


class LockSetBase(HeldBase):
    """Several resources locked all or nothing: what the sync and async sets share."""

    what = "lock set"
    member_class: type[SetMember] = SetMember  # each client's, with its calls

    def __init__(self, client: ClientBase, resources: list[str], **asked: Any) -> None:
        if isinstance(resources, str):
            raise TypeError("a lock set takes a list of resource names")
        super().__init__(client, **asked)
        self.resources = list(resources)
        self.members: dict[str, Any] = {}

    def __getitem__(self, resource: str) -> Any:
        """The set's lock on ``resource``."""
        self._info()
        return self.members[resource]

    @property
    def locks(self) -> list[Any]:
        """Every lock of the set, in the order they were taken."""
        self._info()
        return list(self.members.values())

    def _acquire_op(self) -> Op[dict[str, Any]]:
        return _ops.acquire_set(self.resources, self.mode, self.ttl, self.wait, self.timeout)

    def _granted(self, info: dict[str, Any], sent_at: float) -> None:
        super()._granted(info, sent_at)
        # Named as the server names them: as they were asked for (another team's
        # resources as owner::name), in the order they were taken.
        self.members = {lock["resource"]: self.member_class(self, lock) for lock in info["locks"]}

    def _renew_op(self) -> Op[Any]:
        self._live()
        return self._renewal([lock for lock in self.locks if not lock.ended])

    def _release_op(self) -> Op[dict[str, Any]]:
        self.released = True
        return _ops.simple("DELETE", f"/lock-sets/{self.id}")


class ApprovalBase:
    """A write waiting for an operator's decision."""

    def __init__(self, client: ClientBase, approval_id: int) -> None:
        self.client = client
        self.id = approval_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id}>"

    def _status_op(self) -> Op[ApprovalDecision]:
        from orchestrator_client.models import ApprovalDecision

        return mapped(_ops.simple("GET", f"/approvals/{self.id}"), ApprovalDecision.from_body)

    def _wait_op(self, timeout: float | None, interval: float) -> Op[ApprovalDecision]:
        from orchestrator_client.models import ApprovalDecision

        return mapped(_ops.approval_decided(self.id, timeout, interval), ApprovalDecision.from_body)
