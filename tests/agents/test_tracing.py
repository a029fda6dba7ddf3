"""OpenTelemetry spans of the runtime (agents/tracing.py), from real steps on RQ.

In-process: the SDK's InMemorySpanExporter behind a TracerProvider given to
``tracing.configure``, steps drained by a burst SimpleWorker, the openai backend against
the OpenAI-compatible test server of test_openai_backend.py. In worker processes: that
tracing off imports no tracing API, and that on, a worker exports its spans over OTLP/HTTP
to a server in the test, configured by the standard OTEL_* variables only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import django_rq
import pytest
from django.conf import settings
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agents import tracing
from agents.backends import Decision, StepContext, ToolCall
from agents.runtime import run_start
from agents.scenarios import increment_script
from orchestrator import config
from orchestrator.core.models import Agent, Run, Step, Team
from orchestrator.core.resources import resource_create
from tests import factories
from tests.agents.test_openai_backend import ModelServer, Reply, call, completion, error
from tests.databases import database_url
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
TRACING_SDK = ("opentelemetry.sdk.trace", "opentelemetry.exporter")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.configure(True, tracer_provider=provider)
    yield exporter
    tracing.configure(settings.ORCHESTRATOR_OTEL)
    provider.shutdown()


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    server.thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def children(of: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    """The spans whose parent is ``of``, in the order they ended."""
    return [
        span
        for span in finished
        if span.parent is not None and span.parent.span_id == of.context.span_id
    ]


def roots(finished: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [span for span in finished if span.parent is None]


def step_attributes(step: Step, agent: Agent, provider: str, **extra: Any) -> dict[str, Any]:
    """What an ``invoke_agent`` span of ``step`` carries (a done step's)."""
    return {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": provider,
        "gen_ai.agent.name": agent.name,
        "gen_ai.agent.id": str(agent.pk),
        "gen_ai.conversation.id": f"{step.run_id}:{agent.pk}",
        "orchestrator.run.id": step.run_id,
        "orchestrator.step.id": step.pk,
        "orchestrator.step.number": step.number,
        "orchestrator.step.attempt": 1,
        "orchestrator.backend": agent.backend,
        "orchestrator.step.status": "done",
        **extra,
    }


def tool_attributes(recorded: dict[str, Any], outcome: str, **extra: Any) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": recorded["tool"],
        "gen_ai.tool.call.id": recorded["id"],
        "gen_ai.tool.type": "function",
        "orchestrator.tool.outcome": outcome,
        **extra,
    }


# --- settings --------------------------------------------------------------------------


def test_tracing_is_off_unless_orchestrator_otel_says_on() -> None:
    assert config.load({}).otel is False
    assert config.load({"ORCHESTRATOR_OTEL": "1"}).otel is True
    with pytest.raises(config.ConfigError, match="ORCHESTRATOR_OTEL"):
        config.load({"ORCHESTRATOR_OTEL": "maybe"})
    assert settings.ORCHESTRATOR_OTEL is False  # the test run sets nothing
    assert not tracing.enabled()
    assert tracing.agent_step(None, None) is tracing.OFF  # one shared no-op, no arguments read


# --- a scripted agent ------------------------------------------------------------------


def test_a_scripted_step_is_an_invoke_agent_span_over_its_tool_call(
    spans: InMemorySpanExporter, redis_conn: Any
) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    agent = factories.agent(
        team_=team, name="inc", backend="scripted", config={"script": increment_script("counter")}
    )
    run = run_start(team=team, goal="count", seed=1)
    drain()
    steps = list(Step.objects.filter(run=run).order_by("number"))
    # acquire, write (which releases the lock), finish
    assert [step.status for step in steps] == ["done"] * 3
    finished = spans.get_finished_spans()
    steps_spans = roots(finished)
    assert [span.name for span in steps_spans] == ["invoke_agent inc"] * 3
    outcomes = ["granted", "applied", "finished"]
    for step, step_span, outcome in zip(steps, steps_spans, outcomes, strict=True):
        assert step_span.kind == SpanKind.INTERNAL
        assert dict(step_span.attributes) == step_attributes(step, agent, "orchestrator.scripted")
        assert step_span.status.status_code == StatusCode.UNSET
        (recorded,) = step.tool_calls
        (tool_span,) = children(step_span, finished)  # no chat span: no model was called
        assert tool_span.name == f"execute_tool {recorded['tool']}"
        assert tool_span.kind == SpanKind.INTERNAL
        assert tool_span.context.trace_id == step_span.context.trace_id
        assert dict(tool_span.attributes) == tool_attributes(recorded, outcome)
        assert tool_span.status.status_code == StatusCode.UNSET
    assert len(finished) == 6


def refused_calls(context: StepContext) -> Decision:
    """A python backend's turn: a release of nothing held, a call whose arguments could
    not be read, and finish."""
    return Decision(
        tool_calls=[
            ToolCall("c1", "release", {"resource": "never-locked"}),
            ToolCall("c2", "write", None, error="the arguments of write are not valid JSON"),
            ToolCall("c3", "finish", {"summary": "secret summary"}),
        ]
    )


def test_a_refused_tool_call_is_an_error_span_with_its_code(
    spans: InMemorySpanExporter, redis_conn: Any
) -> None:
    team = factories.team()
    agent = factories.agent(
        team_=team,
        name="clumsy",
        backend="python",
        config={"callable": "tests.agents.test_tracing.refused_calls"},
    )
    run = run_start(team=team, goal="fail", agents=[agent])
    drain()
    step = Step.objects.get(run=run)
    finished = spans.get_finished_spans()
    (step_span,) = roots(finished)
    assert dict(step_span.attributes) == step_attributes(step, agent, "orchestrator.python")
    release, write, finish = children(step_span, finished)
    recorded = step.tool_calls
    assert dict(release.attributes) == tool_attributes(
        recorded[0], "not_holder", **{"error.type": "not_holder"}
    )
    assert (release.status.status_code, release.status.description) == (
        StatusCode.ERROR,
        "not_holder",
    )
    assert dict(write.attributes) == tool_attributes(
        recorded[1], "bad_arguments", **{"error.type": "bad_arguments"}
    )
    assert write.status.status_code == StatusCode.ERROR
    assert dict(finish.attributes) == tool_attributes(recorded[2], "finished")
    assert finish.status.status_code == StatusCode.UNSET
    # The step itself went fine: its calls' refusals are the model's to handle.
    assert step_span.status.status_code == StatusCode.UNSET
    # No content: neither arguments nor results (the summary) nor details.
    text = json.dumps([dict(span.attributes) for span in finished])
    assert "secret summary" not in text and "never-locked" not in text and "JSON" not in text


# --- the openai backend ----------------------------------------------------------------


def openai_agent(team: Team, server: ModelServer) -> Agent:
    return factories.agent(
        team_=team,
        name="booker",
        backend="openai",
        config={"model": "test-model", "base_url": server.url, "temperature": 0.3},
    )


def with_response(reply: Reply, *, model: str, usage: tuple[int, int]) -> Reply:
    """``reply`` as served by ``model``, with that token usage."""
    reply.body["model"] = model
    reply.body["usage"] = {
        "prompt_tokens": usage[0],
        "completion_tokens": usage[1],
        "total_tokens": sum(usage),
    }
    return reply


def test_an_openai_step_has_a_chat_span_then_its_tool_spans(
    spans: InMemorySpanExporter, model_server: ModelServer, redis_conn: Any
) -> None:
    team = factories.team()
    resource_create(team=team, name="room-101", value={})
    agent = openai_agent(team, model_server)
    model_server.reply(
        with_response(
            completion(None, [call("c1", "acquire", {"resource": "room-101"})]),
            model="test-model-0613",
            usage=(17, 5),
        ),
        with_response(completion("Done."), model="test-model-0613", usage=(40, 3)),
        completion(None, [call("c2", "finish", {"summary": "booked"})]),
    )
    run = run_start(team=team, goal="Book room 101.", agents=[agent], max_steps=5)
    drain()
    assert Run.objects.get(pk=run.pk).status == Run.Status.FINISHED
    steps = list(Step.objects.filter(run=run).order_by("number"))
    finished = spans.get_finished_spans()
    step_spans = roots(finished)
    assert [span.name for span in step_spans] == ["invoke_agent booker"] * 3
    port = model_server.httpd.server_address[1]
    expected = [
        # (the chat span's response attributes, the tool spans' names and outcomes)
        (
            {
                "gen_ai.response.model": "test-model-0613",
                "gen_ai.usage.input_tokens": 17,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.response.finish_reasons": ("tool_calls",),
            },
            [("execute_tool acquire", "granted")],
        ),
        (
            {
                "gen_ai.response.model": "test-model-0613",
                "gen_ai.usage.input_tokens": 40,
                "gen_ai.usage.output_tokens": 3,
                "gen_ai.response.finish_reasons": ("stop",),
            },
            [],  # a turn without a tool call
        ),
        (
            {
                "gen_ai.response.model": "test-model",
                "gen_ai.usage.input_tokens": 1,
                "gen_ai.usage.output_tokens": 1,
                "gen_ai.response.finish_reasons": ("tool_calls",),
            },
            [("execute_tool finish", "finished")],
        ),
    ]
    for step, step_span, (response, tools) in zip(steps, step_spans, expected, strict=True):
        assert dict(step_span.attributes) == step_attributes(
            step, agent, "openai", **{"gen_ai.request.model": "test-model"}
        )
        chat, *tool_spans = children(step_span, finished)
        assert chat.name == "chat test-model"
        assert chat.kind == SpanKind.CLIENT
        assert dict(chat.attributes) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "test-model",
            "gen_ai.request.max_tokens": 512,
            "gen_ai.request.temperature": 0.3,
            "server.address": "127.0.0.1",
            "server.port": port,
            "gen_ai.response.id": "chatcmpl-test",
            **response,
        }
        assert chat.status.status_code == StatusCode.UNSET
        assert chat.end_time <= min((span.start_time for span in tool_spans), default=chat.end_time)
        assert [
            (span.name, span.attributes["orchestrator.tool.outcome"]) for span in tool_spans
        ] == tools
    assert len(finished) == 3 + 3 + 2


def test_a_model_endpoint_refusal_fails_the_chat_and_the_step_spans(
    spans: InMemorySpanExporter, model_server: ModelServer, redis_conn: Any
) -> None:
    team = factories.team()
    agent = openai_agent(team, model_server)
    model_server.reply(error(401, "invalid key for the prompt 'Book room 101'"))
    run = run_start(team=team, goal="Book room 101.", agents=[agent])
    drain()
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    finished = spans.get_finished_spans()
    (step_span,) = roots(finished)
    (chat,) = children(step_span, finished)
    assert chat.attributes["error.type"] == "401"
    assert (chat.status.status_code, chat.status.description) == (StatusCode.ERROR, "401")
    assert "gen_ai.response.model" not in chat.attributes
    assert step_span.attributes["orchestrator.step.status"] == "failed"
    assert step_span.attributes["error.type"] == "backend_failed"
    assert step_span.status.status_code == StatusCode.ERROR
    # The endpoint's message (which may quote the prompt) is recorded nowhere.
    assert all(span.events == () for span in finished)
    text = json.dumps([dict(span.attributes) for span in finished]) + repr(
        [span.status.description for span in finished]
    )
    assert "invalid key" not in text and "Book room" not in text


# --- worker processes ------------------------------------------------------------------

# A worker process draining the steps queue. It prints every import of opentelemetry that
# the project's own code (agents/, orchestrator/) made, as (module, importer), and the
# opentelemetry modules loaded by the end. Imports are watched at __import__, which every
# import statement calls even for a module some dependency loaded first.
WORKER = """
import builtins, json, os, sys
OURS = tuple(os.path.join(os.getcwd(), part) + os.sep for part in ("agents", "orchestrator"))
ours = []
real_import = builtins.__import__

def watched(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__file__") or ""
    if level == 0 and name.split(".")[0] == "opentelemetry" and importer.startswith(OURS):
        ours.append([name, os.path.relpath(importer)])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watched
import django
django.setup()
import django_rq
from agents.worker import SimpleStepWorker
django_rq.get_worker("steps", worker_class=SimpleStepWorker).work(burst=True)
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
print(json.dumps({"ours": ours, "loaded": loaded}))
"""


def worker_imports(**environ: str) -> dict[str, list[Any]]:
    """Drain the queue in a worker process with ``environ``: the opentelemetry imports of
    the project's code (``ours``) and the opentelemetry modules loaded by the end."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "ORCHESTRATOR_OTEL"))
    }
    env = {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": database_url(settings.DATABASES["default"]),
        "REDIS_URL": settings.REDIS_URL,
        **environ,
    }
    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class Collector:
    """An OTLP/HTTP traces endpoint: records each export request it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.requests: list[Any] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                collector.requests.append((self.path, request))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        found = []
        for _, request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found += [(resource, span) for span in scope_spans.spans]
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    receiver.thread.start()
    yield receiver
    receiver.httpd.shutdown()
    receiver.httpd.server_close()


def one_step_run(team: Team, name: str) -> Run:
    agent = factories.agent(team_=team, name=name, backend="scripted")  # finish at once
    return run_start(team=team, goal="finish", agents=[agent])


def test_off_a_worker_never_imports_opentelemetry_and_on_it_exports_over_otlp(
    collector: Collector, redis_conn: Any
) -> None:
    team = factories.team()
    run = one_step_run(team, "quiet")
    imports = worker_imports()
    assert Step.objects.get(run=run).status == "done"
    assert imports["ours"] == []
    # redis-py imports opentelemetry's metrics API (and the SDK's metrics, which import the
    # trace API) whenever they are installed, so opentelemetry modules may be loaded;
    # the tracing SDK and its exporter, which only agents/tracing.py imports, are not.
    assert not [name for name in imports["loaded"] if name.startswith(TRACING_SDK)]
    assert collector.requests == []

    run = one_step_run(team, "traced")
    imports = worker_imports(ORCHESTRATOR_OTEL="1", OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
    assert Step.objects.get(run=run).status == "done"
    # So the checks above can fail:
    assert {importer for _, importer in imports["ours"]} == {"agents/tracing.py"}
    assert [name for name in imports["loaded"] if name.startswith(TRACING_SDK)]
    # Flushed at exit, before the process ended.
    assert {path for path, _ in collector.requests} == {"/v1/traces"}
    received = collector.spans()
    assert sorted(span.name for _, span in received) == [
        "execute_tool finish",
        "invoke_agent traced",
    ]
    assert {resource["service.name"] for resource, _ in received} == {"orchestrator"}
    tool = next(span for _, span in received if span.name == "execute_tool finish")
    agent = next(span for _, span in received if span.name == "invoke_agent traced")
    assert tool.parent_span_id == agent.span_id and tool.trace_id == agent.trace_id
