"""A body sent with ``Transfer-Encoding: chunked`` has no Content-Length to check up
front: past the limit it still gets the API's JSON 413, from a real daphne, and the
server logs no traceback for it."""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.api.edge import max_body_bytes
from orchestrator.core.models import Resource
from orchestrator.core.tokens import agent_token_reset
from orchestrator.processes import Helper, free_port, http_ok
from tests import factories
from tests.dashboard import servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHUNK = b"x" * 65536


@pytest.fixture
def daphne(django_db_setup, tmp_path: Path) -> Iterator[tuple[int, Helper]]:
    port = free_port()
    web = Helper(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "orchestrator.asgi:application"],
        name="daphne", ready=http_ok(f"http://127.0.0.1:{port}/healthz"),
        log=tmp_path / "daphne.log", env=servers.environment(), cwd=ROOT,
    )  # fmt: skip
    with web:
        yield port, web


def chunked_put(port: int, path: str, token: str, body: Iterator[bytes]) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "PUT",
            path,
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.getheader("Content-Type", "").startswith("application/json")
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_an_over_limit_chunked_body_is_a_json_413_without_a_traceback(daphne) -> None:
    port, web = daphne
    agent = factories.agent(name="chunker")
    token = agent_token_reset(agent=agent)
    Resource.objects.create(name="doc", value="before", team=agent.team)
    chunks = max_body_bytes() // len(CHUNK) + 2  # the server's settings are the same

    def over_limit() -> Iterator[bytes]:
        yield b'{"value": "'
        for _ in range(chunks):
            yield CHUNK
        yield b'"}'

    status, body = chunked_put(port, "/api/v1/resources/doc", token, over_limit())
    # A small chunked body is read and applied as usual.
    small_status, _ = chunked_put(
        port, "/api/v1/resources/doc", token, iter([b'{"value": ', b'"after"}'])
    )
    web.stop()  # the log is complete once the server has exited
    log = web.log_tail(size=100_000)

    assert status == 413
    assert body["error"] == "request_too_large"
    assert isinstance(body["detail"], str) and body["detail"]
    assert small_status == 200
    assert Resource.objects.get(name="doc").value == "after"
    assert "Traceback" not in log
    assert "RequestDataTooBig" not in log
