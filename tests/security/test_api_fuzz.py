"""Fuzzing the agent API with schemathesis against a running server (daphne, on the
test database): whatever a client sends, no answer is a 5xx, every answer matches
the OpenAPI document (status codes, content types, headers, bodies), and invalid
requests are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from orchestrator.core.resources import resource_create
from orchestrator.core.tokens import agent_token_reset
from tests import factories
from tests.dashboard import servers

ROOT = Path(__file__).resolve().parents[2]
ACCEPTS_VALID_DATA = schemathesis.checks.positive_data_acceptance
EXAMPLES = 30  # per operation; derandomized, so every run sends the same requests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def live_api(django_db_setup, django_db_blocker) -> Iterator[str]:
    with servers.live_app(ROOT / "build" / "logs" / "fuzz") as base:
        yield base


@pytest.fixture(scope="module")
def api_schema(live_api: str, django_db_blocker) -> Any:
    with django_db_blocker.unblock():  # an agent to read the (authenticated) document
        token = agent_token_reset(agent=factories.agent(name="schema-reader"))
    return schemathesis.openapi.from_url(
        f"{live_api}/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
def token() -> str:
    """An agent with a token, and resources for the fuzzer's requests to find."""
    agent = factories.agent(name="fuzzer")
    for name in ("doc", "0", "string"):
        resource_create(team=agent.team, name=name, value={"text": "x"})
    return agent_token_reset(agent=agent)


def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    api_schema: Any, token: str
) -> None:
    """Every operation of the document, EXAMPLES generated requests each (bodies, path
    and query parameters, valid and not), checked by all of schemathesis's checks."""
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    covered = {f"{operation.method.upper()} {operation.path}" for operation in operations}
    assert len(operations) >= 12
    assert {
        "POST /api/v1/approvals",
        "GET /api/v1/approvals/{approval_id}",
        "GET /api/v1/resources",
        "GET /api/v1/whoami",
        "POST /api/v1/lock-sets",
        "GET /api/v1/lock-sets/{lock_set_id}",
        "DELETE /api/v1/lock-sets/{lock_set_id}",
    } <= covered
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            # Not "schema-valid data is accepted": a name may be refused for what a JSON
            # schema cannot say (a control character inside it), with a documented 400.
            case.call_and_validate(headers=headers, excluded_checks=[ACCEPTS_VALID_DATA])

        check()
