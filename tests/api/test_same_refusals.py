"""The same bad input gets the same refusal, code and text, over the HTTP API and
from the runtime's tools: both validate with the operations' models
(core/operations.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.steps import run_tool
from orchestrator.core.models import Lock, Step
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

# (tool, its arguments, the API call's method and path, its body): the same request.
SAME = [
    ("acquire", {"resource": "doc", "ttl": 0}, "post", "/locks", None),
    ("acquire", {"resource": "doc", "ttl": "5"}, "post", "/locks", None),
    ("acquire", {"resource": "doc", "ttl": 86401}, "post", "/locks", None),
    ("acquire", {"resource": "doc", "mode": "upgradable"}, "post", "/locks", None),
    ("acquire", {"resource": "doc", "lease": 5}, "post", "/locks", None),
    ("acquire", {"ttl": 5}, "post", "/locks", None),
    ("acquire", {"resource": 7}, "post", "/locks", None),
    ("write", {"resource": "doc", "value": 1, "expected_version": -1},
     "put", "/resources/doc", {"value": 1, "expected_version": -1}),
    ("write", {"resource": "doc", "value": 1, "expected_version": "0"},
     "put", "/resources/doc", {"value": 1, "expected_version": "0"}),
    ("write", {"resource": "doc", "value": 1, "expected_verison": 0},
     "put", "/resources/doc", {"value": 1, "expected_verison": 0}),
    ("write", {"resource": "doc"}, "put", "/resources/doc", {}),
    ("write", {"resource": "doc", "value": "a\x00b"}, "put", "/resources/doc", {"value": "a\x00b"}),
    ("write", {"resource": "doc", "value": "x" * 2000},
     "put", "/resources/doc", {"value": "x" * 2000}),
]  # fmt: skip


@pytest.fixture
def step(alice) -> Step:
    run = factories.run(team=alice.agent.team)
    return Step.objects.create(run=run, agent=alice.agent, number=1, attempts=1)


@pytest.mark.parametrize(("tool", "arguments", "method", "path", "body"), SAME)
def test_the_api_and_the_tools_refuse_alike(
    alice, step, settings, tool: str, arguments: dict[str, Any], method: str, path: str, body: Any
) -> None:
    settings.ORCHESTRATOR_MAX_VALUE_BYTES = 1000
    alice.create("doc", "v0")

    response = getattr(alice, method)(path, arguments if body is None else body)
    result = run_tool(alice.agent, step, tool, arguments)

    assert response.status_code in (400, 413)
    assert result == {"ok": False, **response.json()}
    assert alice.read("doc").json()["version"] == 0
    assert not Lock.objects.exists()
