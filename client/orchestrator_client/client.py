"""The blocking client: ``Client``, and the ``Lock``, ``LockSet`` and ``Approval`` it hands out.

    client = Client("http://127.0.0.1:8000", token)
    with client.lock("report", ttl=30) as lock:      # waits in the queue if it is held
        state = lock.read()
        lock.write({"text": "hello"}, expected_version=state.version)   # fenced

    # A lock cycle in two requests: the grant says the value and version, and the
    # write releases the lock in its own transaction (only if it is applied).
    with client.lock("counter") as lock:
        lock.write(lock.value + 1, expected_version=lock.version, release=True)

A held lock renews its lease in a background thread every third of its TTL. If
a renewal fails (the lease ended, or the server could not be reached before it
ran out), the next call on the lock raises :class:`LeaseLost` and sends nothing.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orchestrator_client import _ops
from orchestrator_client._base import (
    DEFAULT_TTL,
    ApprovalBase,
    ClientBase,
    LockBase,
    LockSetBase,
    SetMember,
)
from orchestrator_client._ops import Call, Op, Reply
from orchestrator_client.errors import NameTaken, OrchestratorError

if TYPE_CHECKING:
    from orchestrator_client.models import ApprovalDecision, Resource

T = TypeVar("T")


class Transport(Protocol):
    def send(self, call: Call) -> Reply: ...

    def close(self) -> None: ...


class Client(ClientBase):
    """An agent's connection to the API: ``Client(base_url, token, *, timeout=10.0)``.

    ``base_url`` is the server (``http://127.0.0.1:8000``), ``token`` the agent's bearer
    token; ``timeout`` bounds each request (long polls get their wait on top). Safe to
    share between threads. ``transport`` replaces httpx (see _transport.py)."""

    transport: Transport
    transport_class = "HttpxTransport"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def run(self, op: Op[T]) -> T:
        """Drive one operation of ``_ops`` / ``_base`` to its result."""
        return _ops.run(op, self.transport.send)

    # --- resources ---------------------------------------------------------------------

    def read(self, name: str) -> Resource:
        """The resource's value, version, fence, holders and waiters. ResourceNotFound."""
        return self.run(self._read_op(name))

    def create_resource(
        self, name: str, value: Any = None, *, requires_approval: bool = False
    ) -> Resource:
        """A new resource of the agent's team, at version 0. NameTaken if it exists."""
        return self.run(self._create_op(name, value, requires_approval))

    def ensure_resource(self, name: str, value: Any = None) -> Resource:
        """The resource, created with ``value`` if it does not exist yet."""
        try:
            return self.create_resource(name, value)
        except NameTaken:
            return self.read(name)

    def write(
        self,
        name: str,
        value: Any,
        *,
        expected_version: int | None = None,
        fence: int | None = None,
    ) -> int:
        """Write ``value`` as the next version and return it. Prefer ``Lock.write``,
        which sends the fence. VersionConflict, StaleFence, NotHolder; ApprovalPending
        (with ``.approval`` to wait on) when the write waits for an operator."""
        return self.run(self._write_op(name, value, expected_version, fence))

    def resources(self, prefix: str = "") -> dict[str, Any]:
        """``{"resources": [...], "truncated": bool}``: the resources the agent may use."""
        return self.run(self._resources_op(prefix))

    def whoami(self) -> dict[str, Any]:
        """The agent, its team, whether it is paused, its live locks and queued waits."""
        return self.run(self._whoami_op())

    def conflicts(self, *, kind: str | None = None, status: str | None = None) -> list[Any]:
        return self.run(self._conflicts_op(kind, status))

    # --- locks and approvals -----------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        mode: str = "exclusive",
        wait: bool = True,
        timeout: float | None = None,
        renew: bool = True,
    ) -> Lock:
        """A lock on ``name``, taken when its ``with`` block starts (or by ``acquire()``).

        With ``wait`` the request queues behind the holders and is long-polled until it
        is granted, for at most ``timeout`` seconds (None: as long as it takes), then
        withdrawn (WaitTimeout); without it, a held lock raises Busy at once. A deadlock
        victim's wait raises DeadlockVictim.
        """
        return Lock(self, name, mode=mode, ttl=ttl, wait=wait, timeout=timeout, renew=renew)

    def lock_set(
        self,
        names: list[str],
        *,
        ttl: int = DEFAULT_TTL,
        mode: str = "exclusive",
        wait: bool = True,
        timeout: float | None = None,
        renew: bool = True,
    ) -> LockSet:
        """Several resources locked all or nothing, in the server's one global order
        (``POST /lock-sets``); waits and renews as :meth:`lock` does."""
        return LockSet(self, names, mode=mode, ttl=ttl, wait=wait, timeout=timeout, renew=renew)

    def request_approval(
        self,
        name: str,
        value: Any,
        *,
        expected_version: int | None = None,
        fence: int | None = None,
        reason: str = "",
    ) -> Approval:
        """Ask an operator to approve a write; ``wait()`` on the answer for the decision."""
        return self.run(self._approval_op(name, value, expected_version, fence, reason))

    def approval(self, approval_id: int) -> Approval:
        return Approval(self, approval_id)


class _Held:
    """Acquire, renew in a daemon thread, release: what a lock and a lock set share."""

    client: Client
    info: dict[str, Any] | None
    released: bool
    lease: Any
    renew_interval: float
    renew_in_background: bool

    def acquire(self) -> Any:
        """Take it (see :meth:`Client.lock`) and start renewing it. Idempotent."""
        if self.info is not None and not self.released:
            return self
        sent_at = time.monotonic()
        self._granted(self.client.run(self._acquire_op()), sent_at)  # type: ignore[attr-defined]
        self._stop = threading.Event()
        # Held while a renewal is sent, and by release: a renewal never follows the release
        # (the server would record renewing an ended lock as a lease_lost conflict).
        self._sending = threading.Lock()
        self._thread: threading.Thread | None = None
        if self.renew_in_background:
            self._thread = threading.Thread(
                target=self._renew_loop, name=f"renew {self!r}", daemon=True
            )
            self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_interval):
            if self.lease.lost is not None:
                return
            try:
                with self._sending:
                    if self._stop.is_set():
                        return
                    self.client.run(self._renew_op())  # type: ignore[attr-defined]
            except OrchestratorError:
                self._renewed_in_background()  # type: ignore[attr-defined]
                if self.lease.lost is not None:
                    return

    def renew(self) -> None:
        """Renew the lease now (the background thread does it every ``ttl / 3`` s)."""
        self.client.run(self._renew_op())  # type: ignore[attr-defined]

    def release(self) -> None:
        """Release it. LeaseLost if it had already ended otherwise (expired, revoked,
        force-released): what was done under it may have been overtaken. A no-op once
        it is released (by a write with ``release``, too)."""
        if self.info is None or self.released:
            return
        self._stop_renewing()
        self.client.run(self._release_op())  # type: ignore[attr-defined]

    def _stop_renewing(self) -> None:
        """Stop the renewing thread, after any renewal in flight (none follows this)."""
        with self._sending:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release; then, if the block raised nothing, LeaseLost if the lease was lost
        while it ran (an error of the release itself never hides the block's)."""
        lease = self.lease
        try:
            self.release()
        except OrchestratorError:
            if exc is None:
                raise
        if exc is None and lease is not None and lease.lost is not None:
            raise lease.error()


class _LockCalls(LockBase):
    """Read and write through a lock (its fence sent): a lock's and a set member's calls."""

    client: Client

    def read(self) -> Resource:
        """The resource, read while the lock is held. LeaseLost if it is not."""
        return self.client.run(self._read_op())

    def write(
        self, value: Any, *, expected_version: int | None = None, release: bool = False
    ) -> int:
        """Write with this lock's fence (and ``expected_version`` if given); the new
        version. LeaseLost (nothing is sent) once the lease is lost; StaleFence (a
        LeaseLost) if the server finds the fence stale.

        With ``release`` the server releases the lock in the write's own transaction,
        exactly when the write is applied: then the lock is released here too (its
        renewals stop, a later ``release()`` is a no-op). A refused write
        (VersionConflict, StaleFence) or one that waits for an operator
        (ApprovalPending) keeps the lock."""
        op = self._write_op(value, expected_version, release)
        if not release:
            return self.client.run(op)
        holder = self._lease_holder
        with holder._sending:  # no renewal in flight meanwhile: none of an ended lock
            version = self.client.run(op)
        if holder.released:
            holder._stop_renewing()
        return version

    def request_approval(
        self, value: Any, *, expected_version: int | None = None, reason: str = ""
    ) -> Approval:
        """Ask an operator to approve a write under this lock (its fence is sent)."""
        return self.client.run(self._approval_op(value, expected_version, reason))


class SetLock(_LockCalls, SetMember):
    """One lock of a :class:`LockSet`: ``read()``, ``write()`` with its own fence."""


class Lock(_Held, _LockCalls):
    """An exclusive or shared lock on one resource. Use it as a context manager, or
    ``acquire()`` and ``release()`` it."""

    def acquire(self) -> Lock:
        return super().acquire()

    def __enter__(self) -> Lock:
        return self.acquire()


class LockSet(_Held, LockSetBase):
    """Locks on several resources, taken all or nothing (``DELETE /lock-sets/{id}``
    releases them). ``lock_set["name"]`` is the set's lock on that resource: read and
    write through it."""

    client: Client
    member_class = SetLock

    def acquire(self) -> LockSet:
        return super().acquire()

    def __enter__(self) -> LockSet:
        return self.acquire()


class Approval(ApprovalBase):
    """A write waiting for an operator. ``wait()`` for the decision."""

    client: Client

    def status(self) -> ApprovalDecision:
        """How it stands now (one request)."""
        return self.client.run(self._status_op())

    def wait(self, timeout: float | None = None, *, interval: float = 0.5) -> ApprovalDecision:
        """The decision, once an operator has made it (``.approved``, ``.status``,
        ``.version``); WaitTimeout if none came within ``timeout`` seconds."""
        return self.client.run(self._wait_op(timeout, interval))
