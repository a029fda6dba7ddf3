"""Clients of the agent API, each authenticated as an agent of its own."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from django.http import HttpResponse
from django.test import Client

from orchestrator.core.models import Agent, Team
from orchestrator.core.tokens import agent_token_reset
from tests import factories

API = "/api/v1"


def resource_url(name: str) -> str:
    return f"{API}/resources/{quote(name, safe='')}"


class AgentClient:
    """A django.test.Client that speaks JSON to /api/v1 with an agent's bearer token."""

    def __init__(self, agent: Agent, token: str):
        self.agent = agent
        self.token = token
        self.client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def _body(self, body: Any) -> Any:
        return body if isinstance(body, str | bytes) else json.dumps(body)

    def get(self, path: str, **extra: Any) -> HttpResponse:
        return self.client.get(API + path, **extra)

    def post(self, path: str, body: Any = None, **extra: Any) -> HttpResponse:
        data = "" if body is None else self._body(body)
        return self.client.post(API + path, data, content_type="application/json", **extra)

    def put(self, path: str, body: Any = None, **extra: Any) -> HttpResponse:
        data = "" if body is None else self._body(body)
        return self.client.put(API + path, data, content_type="application/json", **extra)

    def delete(self, path: str, **extra: Any) -> HttpResponse:
        return self.client.delete(API + path, **extra)

    # Shortcuts for the common calls.
    def create(self, name: str, value: Any = None, **fields: Any) -> HttpResponse:
        return self.post("/resources", {"name": name, "value": value, **fields})

    def read(self, name: str) -> HttpResponse:
        return self.client.get(resource_url(name))

    def write(self, name: str, **body: Any) -> HttpResponse:
        return self.client.put(resource_url(name), json.dumps(body), "application/json")

    def acquire(self, resource: str, **body: Any) -> HttpResponse:
        return self.post("/locks", {"resource": resource, **body})


@pytest.fixture
def team() -> Team:
    return factories.team(default_lease_ttl=30)


@pytest.fixture
def make_client(team):
    """``make_client(name=None, team_=None)``: a new agent and its API client."""

    def make(name: str | None = None, team_: Team | None = None) -> AgentClient:
        fields = {"name": name} if name else {}
        agent = factories.agent(team_=team_ or team, **fields)
        return AgentClient(agent, agent_token_reset(agent=agent))

    return make


@pytest.fixture
def alice(make_client) -> AgentClient:
    return make_client("alice")


@pytest.fixture
def bob(make_client) -> AgentClient:
    return make_client("bob")
