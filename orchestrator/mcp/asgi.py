"""The MCP door in the project's ASGI application: ``/mcp/`` (and ``/mcp``), served
by daphne beside Django (orchestrator/asgi.py routes HTTP through :func:`with_mcp`).

Transport: the SDK's Streamable HTTP session manager, stateless (no session is
kept between requests, so any web process can answer any request) and answering
in JSON rather than server-sent events.

Lifespan: daphne does not run the ASGI lifespan protocol (daphne 4.2 sends no
``lifespan`` scope at start-up or shutdown), and the SDK's session manager can
serve a request only while its ``run()`` holds its task group open. So the
manager is started by the first MCP request (:class:`RunningManager`): a task on
daphne's event loop enters ``run()`` and stays in it for the life of that loop,
that is of the process; concurrent first requests wait for the same start. In
stateless mode the manager holds nothing between requests, so there is nothing
to close when daphne stops. A request on another event loop (an in-process test
harness) starts a manager of its own there.

Authentication: every request must carry ``Authorization: Bearer <agent token>``.
Without one, or with a token that names no agent, the answer is 401 with a
``WWW-Authenticate`` challenge and the MCP server never sees the request: no
tool runs. Only POST is served (405 otherwise: a stateless server has no stream to
open and no session to end). The agent rides in the ASGI scope (``server.AGENT_KEY``), where a tool
finds it through ``ctx.request_context.request``. The Host header (and Origin,
when a browser sends one) must be one of ALLOWED_HOSTS, as for Django's pages.

Threads: the token lookup and each tool's database work run in a thread
(channels' ``database_sync_to_async``), the request's own, as Django does for its
own requests, so that a tool's database work never blocks daphne's loop nor another
request. A tool that waits for a lock (up to 25 s) waits on the loop and gives that
thread back meanwhile (core/request_threads.py, server.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse

from orchestrator.core.request_threads import request_thread
from orchestrator.core.tokens import agent_by_token
from orchestrator.mcp.server import AGENT_KEY, build_server

ASGIApp = Callable[..., Any]
PATHS = frozenset({"/mcp", "/mcp/"})
DEFAULT_MAX_BODY_BYTES = 2_621_440  # when DATA_UPLOAD_MAX_MEMORY_SIZE is None


class RunningManager:
    """The SDK's session manager for ``server``, running in a task of the current
    event loop from the first request on (see the module docstring)."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._manager: StreamableHTTPSessionManager | None = None
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _build(self) -> StreamableHTTPSessionManager:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or DEFAULT_MAX_BODY_BYTES
        self.server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            max_request_body_size=limit,
            # Hosts and origins are checked against ALLOWED_HOSTS before (_refusal).
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        return self.server.session_manager

    async def get(self) -> StreamableHTTPSessionManager:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the first request on this loop: start it here
            self._loop = loop
            self._manager = self._build()
            self._started = asyncio.Event()
            self._task = loop.create_task(self._run(self._manager, self._started))
        await self._started.wait()
        assert self._manager is not None
        return self._manager

    @staticmethod
    async def _run(manager: StreamableHTTPSessionManager, started: asyncio.Event) -> None:
        async with manager.run():
            started.set()
            await asyncio.Event().wait()  # until the loop ends


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _allowed(host: str) -> bool:
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as Django's HttpRequest.get_host()
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def _refusal(scope: dict[str, Any]) -> Any:
    """The answer for a request from a host or origin that is not this site's, if it is."""
    if not _allowed(_header(scope, b"host")):
        return _error(400, "invalid_host", "the Host header is not one of this site's hosts")
    origin = _header(scope, b"origin")
    if origin and not _allowed(urlsplit(origin).netloc):
        return _error(403, "invalid_origin", "requests from other sites' pages are refused")
    return None


def _unauthorized(header: str) -> Any:
    challenge = 'Bearer realm="orchestrator"' + (', error="invalid_token"' if header else "")
    return _error(
        401,
        "unauthorized",
        "send a valid agent token as 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": challenge},
    )


class MCPMount:
    """HTTP on PATHS to the MCP server (authenticated), anything else to ``app``."""

    def __init__(self, app: ASGIApp, server: MCPServer | None = None) -> None:
        self.app = app
        self.manager = RunningManager(server or build_server())

    async def __call__(self, scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            return await self.app(scope, receive, send)
        async with request_thread():
            await self._serve(scope, receive, send)

    async def _serve(self, scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        refusal = _refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        header = _header(scope, b"authorization")
        scheme, _, token = header.partition(" ")
        agent = None
        if scheme.lower() == "bearer":
            agent = await database_sync_to_async(agent_by_token)(token.strip())
        if agent is None:
            return await _unauthorized(header)(scope, receive, send)
        if scope["method"] != "POST":
            # Stateless: no session to delete (DELETE) and no stream of server-sent
            # events to open (GET): the transport's spec says 405 for both.
            detail = f"{scope['method']} is not allowed here; allowed: POST"
            refusal = _error(405, "method_not_allowed", detail, headers={"Allow": "POST"})
            return await refusal(scope, receive, send)
        manager = await self.manager.get()
        await manager.handle_request({**scope, AGENT_KEY: agent}, receive, send)


def with_mcp(app: ASGIApp) -> MCPMount:
    """``app`` with the MCP server mounted at ``/mcp/``."""
    return MCPMount(app)
