"""The MCP server as clients reach it: the SDK's own client (streamable HTTP and a
ClientSession) against a real daphne process serving orchestrator.asgi, on the
test database (tests/dashboard/servers.py starts it, as for the browser tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from orchestrator.core.models import Agent, Team
from orchestrator.core.tokens import agent_token_reset
from tests import factories
from tests.dashboard import servers

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker) -> Iterator[str]:
    """The base URL of a daphne process serving the project's ASGI application."""
    with servers.live_app(ROOT / "build" / "logs" / "mcp") as base:
        yield base


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@asynccontextmanager
async def mcp_session(
    base: str, token: str | None, statuses: list[int] | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session with ``token`` as its bearer token; the HTTP
    status of each response is appended to ``statuses``, if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    async with (
        httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(30, read=60),
            event_hooks={"response": [record]},
        ) as http,
        streamable_http_client(f"{base}/mcp/", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's answer (its structured content); AssertionError if it is a tool error."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


async def refused(session: ClientSession, tool: str, **arguments: Any) -> tuple[str, dict]:
    """A tool error's text and structured content; AssertionError if the call succeeded."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text, result.structured_content


class Agents:
    """Agents of one team, each with its token."""

    def __init__(self) -> None:
        self.team: Team = factories.team(default_lease_ttl=30)
        self.tokens: dict[str, str] = {}

    def make(self, name: str) -> tuple[Agent, str]:
        agent = factories.agent(team_=self.team, name=name)
        self.tokens[name] = agent_token_reset(agent=agent)
        return agent, self.tokens[name]


@pytest.fixture
def agents() -> Agents:
    return Agents()
