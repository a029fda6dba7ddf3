"""The MCP server: the tools of tools.py on the official SDK's ``MCPServer``.

Each tool's arguments reach the operation's model as the client sent them (the
SDK's own argument model is a pass-through, so that the one validation layer,
core/operations.py, refuses bad input with the protocol's codes and texts); the
input schema the client is shown is generated from the same model
(``agents.tools.tool_parameters``, as the runtime's tool specs are).

A tool's answer is a ``CallToolResult`` with the JSON text of its answer and the
same as structured content. A refusal is a tool error (``isError``) whose text is
``code: detail`` (``stale_fence: ...``), with ``{"error": code, "detail": ...}``
and the refusal's other fields (``conflict_id``, ``current_version``) as
structured content: the codes and fields of the HTTP API's JSON errors.
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import ConfigDict

from agents.tools import tool_parameters
from orchestrator.core.errors import ProtocolError
from orchestrator.core.models import Agent
from orchestrator.core.operations import parsed
from orchestrator.mcp.tools import TOOLS, ToolSpec, Waiting

AGENT_KEY = "orchestrator.agent"  # where the ASGI scope carries the authenticated agent

INSTRUCTIONS = (
    "Coordinate with other agents on shared resources. Before changing a resource: "
    "acquire it (exclusive): the grant carries its value and version. Write it with the "
    "fence of your lock and that version as expected_version; on the last write, pass "
    "release: true, which releases the lock with the write (else call release). If "
    "acquire answers 'waiting', call wait until "
    "granted; never write without the lock. A failed call is a tool error whose text "
    "starts with a code (stale_fence, version_conflict, not_holder, lease_lost, "
    "resource_not_found, forbidden, invalid_request, ...): each tool's description says "
    "what to do about each. Writes that need a human go through request_approval."
)


class VerbatimArguments(ArgModelBase):
    """A tool's arguments as the client sent them: the operation's model validates them."""

    model_config = ConfigDict(extra="allow")

    def model_dump_one_level(self) -> dict[str, Any]:
        return {"arguments": dict(self.model_extra or {})}


def as_json(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``data`` as JSON text, and as the plain JSON object that text decodes to."""
    text = json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False)
    return text, json.loads(text)


def refused(error: ProtocolError) -> CallToolResult:
    """The tool error for a refusal: ``code: detail``, and the API's error body."""
    _, body = as_json(error.as_dict())
    return CallToolResult(
        content=[TextContent(type="text", text=f"{error.code}: {error.detail}")],
        structured_content=body,
        is_error=True,
    )


def agent_of(context: Context) -> Agent:
    """The agent that the request of this tool call authenticated as (see asgi.py)."""
    request = context.request_context.request
    agent = request.scope.get(AGENT_KEY) if request is not None else None
    if agent is None:  # asgi.py authenticates every request: this is a wiring error
        raise RuntimeError("an MCP tool call without an authenticated agent")
    return agent


def _run(spec: ToolSpec, agent: Agent, arguments: dict[str, Any]) -> dict[str, Any] | Waiting:
    return spec.run(agent, parsed(spec.model, arguments))


def build_tool(name: str, spec: ToolSpec) -> Tool:
    """The SDK's Tool for ``spec``: its schema from the operation's model, its
    arguments validated by that model, its work done in a thread; a wait (tools.Waiting)
    awaited on the event loop, holding no thread."""
    run = database_sync_to_async(_run)

    async def call(context: Context, arguments: dict[str, Any]) -> CallToolResult:
        agent = agent_of(context)
        try:
            answer = await run(spec, agent, arguments)
            if isinstance(answer, Waiting):
                answer = await answer.poll.wait_async(answer.answer)
        except ProtocolError as error:
            return refused(error)
        text, body = as_json(answer)
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=body
        )

    return Tool(
        fn=call,
        name=name,
        description=spec.description,
        parameters=tool_parameters(spec.model),
        fn_metadata=FuncMetadata(arg_model=VerbatimArguments),
        is_async=True,
        context_kwarg="context",
        annotations=ToolAnnotations(read_only_hint=spec.read_only, open_world_hint=False),
    )


def build_server() -> MCPServer:
    """The orchestrator's MCP server, with every tool of tools.TOOLS."""
    return MCPServer(
        name="orchestrator",
        title="Orchestrator",
        instructions=INSTRUCTIONS,
        version="1",
        tools=[build_tool(name, spec) for name, spec in TOOLS.items()],
    )
