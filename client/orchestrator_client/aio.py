"""The asyncio twin of client.py: ``AsyncClient``, ``AsyncLock``, ``AsyncLockSet``,
``AsyncApproval``. The same operations (they are written once, in _ops.py and
_base.py), awaited on ``httpx.AsyncClient``; a held lock renews its lease in a task.

    async with AsyncClient("http://127.0.0.1:8000", token) as client:
        async with client.lock("report", ttl=30) as lock:
            state = await lock.read()
            await lock.write({"text": "hello"}, expected_version=state.version)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from orchestrator_client._base import (
    DEFAULT_TTL,
    ApprovalBase,
    ClientBase,
    LockBase,
    LockSetBase,
    SetMember,
)
from orchestrator_client._ops import Call, Op, Reply, Sleep
from orchestrator_client.errors import NameTaken, OrchestratorError
from orchestrator_client.models import ApprovalDecision, Resource

T = TypeVar("T")


class AsyncTransport(Protocol):
    async def send(self, call: Call) -> Reply: ...

    async def close(self) -> None: ...


async def arun(op: Op[T], send: Callable[[Call], Awaitable[Reply]]) -> T:
    """Drive ``op`` to its result, awaiting each call and sleep."""
    reply: Reply | None = None
    while True:
        try:
            step = op.send(reply)
        except StopIteration as done:
            return done.value
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            reply = None
        else:
            reply = await send(step)


class AsyncClient(ClientBase):
    """:class:`~orchestrator_client.Client`, for asyncio: every call is awaited."""

    transport: AsyncTransport
    transport_class = "AsyncHttpxTransport"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def run(self, op: Op[T]) -> T:
        return await arun(op, self.transport.send)

    async def read(self, name: str) -> Resource:
        return await self.run(self._read_op(name))

    async def create_resource(
        self, name: str, value: Any = None, *, requires_approval: bool = False
    ) -> Resource:
        return await self.run(self._create_op(name, value, requires_approval))

    async def ensure_resource(self, name: str, value: Any = None) -> Resource:
        try:
            return await self.create_resource(name, value)
        except NameTaken:
            return await self.read(name)

    async def write(
        self,
        name: str,
        value: Any,
        *,
        expected_version: int | None = None,
        fence: int | None = None,
    ) -> int:
        return await self.run(self._write_op(name, value, expected_version, fence))

    async def resources(self, prefix: str = "") -> dict[str, Any]:
        return await self.run(self._resources_op(prefix))

    async def whoami(self) -> dict[str, Any]:
        return await self.run(self._whoami_op())

    async def conflicts(self, *, kind: str | None = None, status: str | None = None) -> list[Any]:
        return await self.run(self._conflicts_op(kind, status))

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        mode: str = "exclusive",
        wait: bool = True,
        timeout: float | None = None,
        renew: bool = True,
    ) -> AsyncLock:
        return AsyncLock(self, name, mode=mode, ttl=ttl, wait=wait, timeout=timeout, renew=renew)

    def lock_set(
        self,
        names: list[str],
        *,
        ttl: int = DEFAULT_TTL,
        mode: str = "exclusive",
        wait: bool = True,
        timeout: float | None = None,
        renew: bool = True,
    ) -> AsyncLockSet:
        return AsyncLockSet(
            self, names, mode=mode, ttl=ttl, wait=wait, timeout=timeout, renew=renew
        )

    async def request_approval(
        self,
        name: str,
        value: Any,
        *,
        expected_version: int | None = None,
        fence: int | None = None,
        reason: str = "",
    ) -> AsyncApproval:
        return await self.run(self._approval_op(name, value, expected_version, fence, reason))

    def approval(self, approval_id: int) -> AsyncApproval:
        return AsyncApproval(self, approval_id)


class _AsyncHeld:
    """Acquire, renew in a task, release: what an async lock and an async set share."""

    client: AsyncClient
    info: dict[str, Any] | None
    released: bool
    lease: Any
    renew_interval: float
    renew_in_background: bool

    async def acquire(self) -> Any:
        if self.info is not None and not self.released:
            return self
        sent_at = time.monotonic()
        self._granted(await self.client.run(self._acquire_op()), sent_at)  # type: ignore[attr-defined]
        self._task: asyncio.Task[None] | None = None
        # Held while a renewal is sent, and by release: no renewal follows the release.
        self._sending = asyncio.Lock()
        if self.renew_in_background:
            self._task = asyncio.get_running_loop().create_task(self._renew_loop())
        return self

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                async with self._sending:
                    if self.lease.lost is not None or self.released:
                        return
                    await self.client.run(self._renew_op())  # type: ignore[attr-defined]
            except OrchestratorError:
                self._renewed_in_background()  # type: ignore[attr-defined]
                if self.lease.lost is not None:
                    return

    async def renew(self) -> None:
        await self.client.run(self._renew_op())  # type: ignore[attr-defined]

    async def release(self) -> None:
        if self.info is None or self.released:
            return
        await self._stop_renewing()
        await self.client.run(self._release_op())  # type: ignore[attr-defined]

    async def _stop_renewing(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and task is not asyncio.current_task():
            async with self._sending:  # after any renewal in flight; none after this
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Any:
        return await self.acquire()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        lease = self.lease
        try:
            await self.release()
        except OrchestratorError:
            if exc is None:
                raise
        if exc is None and lease is not None and lease.lost is not None:
            raise lease.error()


class _AsyncLockCalls(LockBase):
    client: AsyncClient

    async def read(self) -> Resource:
        return await self.client.run(self._read_op())

    async def write(
        self, value: Any, *, expected_version: int | None = None, release: bool = False
    ) -> int:
        """As :meth:`orchestrator_client.Lock.write`: with ``release``, the lock ends with
        the applied write, here too (its renewal task stops)."""
        op = self._write_op(value, expected_version, release)
        if not release:
            return await self.client.run(op)
        holder = self._lease_holder
        async with holder._sending:  # no renewal in flight meanwhile
            version = await self.client.run(op)
        if holder.released:
            await holder._stop_renewing()
        return version

    async def request_approval(
        self, value: Any, *, expected_version: int | None = None, reason: str = ""
    ) -> AsyncApproval:
        return await self.client.run(self._approval_op(value, expected_version, reason))


class AsyncSetLock(_AsyncLockCalls, SetMember):
    """One lock of an :class:`AsyncLockSet`."""


class AsyncLock(_AsyncHeld, _AsyncLockCalls):
    """:class:`~orchestrator_client.Lock`, awaited; its lease is renewed in a task."""


class AsyncLockSet(_AsyncHeld, LockSetBase):
    """``lock_set["name"]`` is the set's lock on that resource (``await ....write(v)``)."""

    client: AsyncClient
    member_class = AsyncSetLock


class AsyncApproval(ApprovalBase):
    client: AsyncClient

    async def status(self) -> ApprovalDecision:
        return await self.client.run(self._status_op())

    async def wait(
        self, timeout: float | None = None, *, interval: float = 0.5
    ) -> ApprovalDecision:
        return await self.client.run(self._wait_op(timeout, interval))
