"""A Python client for the Orchestrator agent API (docs/api.md), and the
``orchestrator-guard`` command for coding agents' hooks (docs/guard.md).

    from orchestrator_client import Client, LeaseLost

    client = Client("http://127.0.0.1:8000", token)
    with client.lock("report", ttl=30) as lock:
        state = lock.read()
        lock.write({"text": "hello"}, expected_version=state.version)

Every refusal is an exception of :mod:`orchestrator_client.errors`, one class
per error code, all under :class:`OrchestratorError` (``.code``, ``.detail``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator_client.aio import AsyncApproval, AsyncClient, AsyncLock, AsyncLockSet
    from orchestrator_client.client import Approval, Client, Lock, LockSet
    from orchestrator_client.errors import (
        AlreadyWaiting,
        ApprovalPending,
        Busy,
        Conflict,
        DeadlockVictim,
        Forbidden,
        InvalidRequest,
        LeaseLost,
        NameTaken,
        NotFound,
        NotHolder,
        OrchestratorError,
        RequestCancelled,
        ResourceNotFound,
        StaleFence,
        TooManyWaits,
        Unauthorized,
        Unreachable,
        VersionConflict,
        WaitTimeout,
    )
    from orchestrator_client.models import ApprovalDecision, Resource

# Imported on first use, so that the guard (a process per edit) does not pay for asyncio.
_HOMES = {
    "aio": ("AsyncApproval", "AsyncClient", "AsyncLock", "AsyncLockSet"),
    "client": ("Approval", "Client", "Lock", "LockSet"),
    "models": ("ApprovalDecision", "Resource"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    import importlib

    module = _HOME.get(name, "errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'orchestrator_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"orchestrator_client.{module}"), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AlreadyWaiting",
    "Approval",
    "ApprovalDecision",
    "ApprovalPending",
    "ApprovalRejected",
    "AsyncApproval",
    "AsyncClient",
    "AsyncLock",
    "AsyncLockSet",
    "Busy",
    "Client",
    "Conflict",
    "DeadlockVictim",
    "Forbidden",
    "InvalidRequest",
    "LeaseLost",
    "Lock",
    "LockSet",
    "NameTaken",
    "NotFound",
    "NotHolder",
    "OrchestratorError",
    "RequestCancelled",
    "Resource",
    "ResourceNotFound",
    "StaleFence",
    "TooManyWaits",
    "Unauthorized",
    "Unreachable",
    "VersionConflict",
    "WaitTimeout",
]
