"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1, with the real client.

The server is a small threaded ``http.server`` that answers chat-completions
requests from a script of replies and records every request it received, so
the tests assert on what went over the wire. It is as strict as llama.cpp's
server (llama-cpp-python's): a message whose ``content`` is not a string, or
a tool parameter without a JSON type, gets the HTTP 500 that server answers,
whatever reply was scripted. No sleeps: the backend's waits between retries go
through an injected ``sleep`` that records them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agents.backends import get_backend
from agents.backends.base import BackendError, Decision, StepContext
from agents.backends.openai_backend import OpenAIBackend, well_formed_transcript
from agents.config import OpenAIConfig, config_dict, config_messages
from agents.tools import TOOL_NAMES, TOOL_SPECS
from orchestrator.api_keys import secret_from_env

KEY_ENV = "ORCH_TEST_MODEL_KEY"
KEY = "sk-test-0123456789"


# --- a scripted OpenAI-compatible server ---------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the test ends)


# Schema keywords that give a value a shape without "type"; anything else without a
# type is what llama.cpp's grammar builder cannot turn into a grammar.
_SHAPED = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref")


def untyped_schema(schema: Any) -> Any:
    """The first (sub)schema of a tool's parameters that has no type, or None."""
    if not isinstance(schema, dict):
        return None
    if not any(key in schema for key in _SHAPED):
        return schema
    for sub in (schema.get("properties") or {}).values():
        found = untyped_schema(sub)
        if found is not None:
            return found
    return untyped_schema(schema["items"]) if isinstance(schema.get("items"), dict) else None


def llama_cpp_refusal(body: Any) -> Reply | None:
    """The HTTP 500 that llama.cpp's server answers to this request body, if any.

    Its request model types every message's ``content`` as a string (a null
    fails validation; a missing one fails in the chat template), and it builds
    a grammar from each tool's parameters, which needs a type for every value.
    """
    for index, message in enumerate(body.get("messages") or []):
        if not isinstance(message.get("content"), str):
            role = message.get("role")
            return Reply(
                500,
                {
                    "error": {
                        "message": (
                            f"1 validation error for ChatCompletionRequest{role.title()}Message\n"
                            f"messages.{index}.content\n  Input should be a valid string "
                            f"[type=string_type, input_value={message.get('content')!r}, "
                            "input_type=NoneType]\n    For further information visit "
                            "https://errors.pydantic.dev/2.12/v/string_type"
                        ),
                        "type": "internal_server_error",
                    }
                },
            )
    for tool in body.get("tools") or []:
        untyped = untyped_schema(tool.get("function", {}).get("parameters"))
        if untyped is not None:
            return Reply(
                500,
                {
                    "error": {
                        "message": f"Unrecognized schema: {untyped}",
                        "type": "internal_server_error",
                    }
                },
            )
    return None


class ModelServer:
    """Answers POSTs with the scripted replies in order; records each request first.

    A request that llama.cpp's server would refuse is refused the same way (and
    recorded in ``refused``) without using up a scripted reply.
    """

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.refused: list[Reply] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.arrived = threading.Condition(self.lock)  # notified on every recorded request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    reply = llama_cpp_refusal(body)
                    if reply is not None:
                        server.refused.append(reply)
                    elif server.replies:
                        reply = server.replies.popleft()
                    server.arrived.notify_all()
                if reply is None:
                    reply = Reply(418, {"error": {"message": "no reply scripted"}})
                if reply.hang:
                    server.release.wait(timeout=30)
                    return
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up already
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval keeps shutdown() quick at teardown.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def bodies(self) -> list[dict[str, Any]]:
        return [request["body"] for request in self.requests]


@pytest.fixture
def server() -> Iterator[ModelServer]:
    model_server = ModelServer()
    model_server.thread.start()
    yield model_server
    model_server.release.set()
    model_server.httpd.shutdown()
    model_server.httpd.server_close()


@pytest.fixture(autouse=True)
def allowed_key_env(settings) -> None:
    """The tests' key variable is one the deployment allows (ORCHESTRATOR_MODEL_KEY_ENVS)."""
    settings.ORCHESTRATOR_MODEL_KEY_ENVS = ["OPENAI_API_KEY", KEY_ENV]


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


class Sleeps(list):
    """A ``sleep`` that records the delay instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- builders ------------------------------------------------------------------------


def openai_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as the admin stores it: validated, with the defaults filled in."""
    return config_dict(OpenAIConfig.model_validate(config))


def config(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "model": "test-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "temperature": 0.3,
        "system_prompt": "You book meeting rooms for the team.",
        "max_steps": 50,
        **overrides,
    }


def backend(base_url: str, sleep: Sleeps | None = None, **policy: Any) -> OpenAIBackend:
    policy = {"attempts": 3, "base_delay": 0.01, "jitter": 0.0, "request_timeout": 5.0, **policy}
    return OpenAIBackend(config(base_url), sleep=Sleeps() if sleep is None else sleep, **policy)


def header(request: dict[str, Any], name: str) -> str:
    """A recorded request's header, whatever case the client spelled it in."""
    return next(value for key, value in request["headers"].items() if key.lower() == name)


def context(transcript: list[dict[str, Any]] | None = None, step: int = 1) -> StepContext:
    return StepContext(
        agent="booker-1",
        role="books rooms",
        goal="Book room 101 for Tuesday 10:00.",
        config={},
        transcript=transcript or [],
        tools=TOOL_SPECS,
        step_number=step,
        seed=7,
    )


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def completion(content: str | None = None, calls: list[dict[str, Any]] | None = None) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "test"}}, headers or {})


def assistant_message(decision: Decision) -> dict[str, Any]:
    """What the runtime records for a turn (OpenAI chat format)."""
    return {
        "role": "assistant",
        "content": decision.message,
        "tool_calls": [
            call(tool_call.id, tool_call.name, tool_call.arguments)
            for tool_call in decision.tool_calls
        ],
    }


# --- a conversation ------------------------------------------------------------------


def test_multi_turn_conversation_sends_the_right_messages(
    server: ModelServer, api_key: str
) -> None:
    server.reply(
        completion(calls=[call("c1", "acquire", {"resource": "room-101", "mode": "exclusive"})]),
        completion(
            "Room 101 is free; booking it.",
            [
                call(
                    "c2",
                    "write",
                    {
                        "resource": "room-101",
                        "value": {"tue-10": "booker-1"},
                        "expected_version": 3,
                    },
                )
            ],
        ),
        completion(calls=[call("c3", "release", {"resource": "room-101"})]),
        completion("Done.", [call("c4", "finish", {"summary": "booked room 101"})]),
    )
    results = {
        "c1": {"granted": True, "fence": 11},
        "c2": {"ok": True, "version": 4},
        "c3": {"released": True},
        "c4": {"finished": True},
    }
    model = backend(server.url)
    transcript: list[dict[str, Any]] = []
    decisions = []
    for step in range(1, 5):
        decision = model.decide(context(list(transcript), step=step))
        decisions.append(decision)
        transcript.append(assistant_message(decision))
        for tool_call in decision.tool_calls:
            transcript.append(
                {
                    "role": "tool",
                    "tool_call_id": tool_call.id,
                    "content": json.dumps(results[tool_call.id]),
                }
            )

    assert [[c.name for c in d.tool_calls] for d in decisions] == [
        ["acquire"],
        ["write"],
        ["release"],
        ["finish"],
    ]
    assert decisions[0].tool_calls[0].arguments == {"resource": "room-101", "mode": "exclusive"}
    assert decisions[1].message == "Room 101 is free; booking it."
    assert decisions[1].tool_calls[0].arguments == {
        "resource": "room-101",
        "value": {"tue-10": "booker-1"},
        "expected_version": 3,
    }
    assert all(not c.error for d in decisions for c in d.tool_calls)

    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 4
    bodies = server.bodies()
    for number, body in enumerate(bodies):
        assert body["model"] == "test-model"
        assert body["temperature"] == 0.3
        assert body["tools"] == TOOL_SPECS
        assert body["tool_choice"] == "auto"
        system, kickoff, *rest = body["messages"]
        assert system["role"] == "system"
        assert system["content"].startswith("You book meeting rooms for the team.")
        assert "booker-1" in system["content"]
        assert "books rooms" in system["content"]
        assert "Book room 101 for Tuesday 10:00." in system["content"]
        assert kickoff["role"] == "user"
        assert "Book room 101 for Tuesday 10:00." in kickoff["content"]
        # Every prior turn, with its tool results, is sent back as it was recorded.
        assert rest == transcript[: 2 * number]
    # The last request carried the results of acquire, write and release.
    tool_messages = [m for m in bodies[3]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], json.loads(m["content"])) for m in tool_messages] == [
        ("c1", {"granted": True, "fence": 11}),
        ("c2", {"ok": True, "version": 4}),
        ("c3", {"released": True}),
    ]


def test_the_factory_builds_this_backend(server: ModelServer, api_key: str) -> None:
    server.reply(completion("hello"))
    decision = get_backend("openai", config(server.url)).decide(context())
    assert decision == Decision(message="hello", tool_calls=[])


def test_an_answer_without_text_or_calls_is_an_empty_decision(
    server: ModelServer, api_key: str
) -> None:
    server.reply(completion(None))
    assert backend(server.url).decide(context()) == Decision(message="", tool_calls=[])


# --- what the model gets wrong ---------------------------------------------------------


def test_malformed_tool_calls_come_back_with_an_error_not_an_exception(
    server: ModelServer, api_key: str
) -> None:
    server.reply(
        completion(
            calls=[
                call("bad-json", "write", '{"resource": "room-101", "value": '),
                call("array", "acquire", '["room-101", "exclusive"]'),
                call("unknown", "book_room", {"room": "101"}),
                call("good", "read", {"resource": "room-101"}),
                call("empty", "finish", ""),
            ]
        )
    )
    calls = {c.id: c for c in backend(server.url).decide(context()).tool_calls}

    assert calls["bad-json"].arguments is None
    assert calls["bad-json"].name == "write"
    assert "not valid JSON" in calls["bad-json"].error
    assert calls["array"].arguments is None
    assert "must be a JSON object" in calls["array"].error
    assert "array" in calls["array"].error
    assert calls["unknown"].arguments is None
    assert calls["unknown"].name == "book_room"
    assert "no tool named 'book_room'" in calls["unknown"].error
    assert all(name in calls["unknown"].error for name in TOOL_NAMES)
    assert calls["good"].arguments == {"resource": "room-101"}
    assert calls["good"].error == ""
    assert calls["empty"].arguments == {}
    assert list(calls) == ["bad-json", "array", "unknown", "good", "empty"]


def test_a_tool_call_without_an_id_gets_one(server: ModelServer, api_key: str) -> None:
    server.reply(completion(calls=[call("", "read", {"resource": "a"})]))
    (tool_call,) = backend(server.url).decide(context(step=9)).tool_calls
    assert tool_call.id == "call_9_0"


# --- retries ---------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(server: ModelServer, api_key: str) -> None:
    server.reply(
        error(429, "Rate limit reached", {"Retry-After": "0.5"}),
        completion(calls=[call("c1", "read", {"resource": "room-101"})]),
    )
    sleeps = Sleeps()
    decision = backend(server.url, sleeps).decide(context())
    assert [c.name for c in decision.tool_calls] == ["read"]
    assert len(server.requests) == 2
    assert sleeps == [0.5]  # Retry-After wins over the 0.01 s backoff


def test_500s_are_retried_with_exponential_backoff(server: ModelServer, api_key: str) -> None:
    server.reply(error(500, "boom"), error(502, "bad gateway"), completion("ok"))
    sleeps = Sleeps()
    decision = backend(server.url, sleeps).decide(context())
    assert decision.message == "ok"
    assert len(server.requests) == 3
    assert sleeps == [0.01, 0.02]
    # The same request each time.
    assert server.bodies()[0] == server.bodies()[1] == server.bodies()[2]


def test_persistent_5xx_gives_up_after_the_attempts(server: ModelServer, api_key: str) -> None:
    server.reply(*[error(503, "model is loading")] * 5)
    with pytest.raises(BackendError) as failure:
        backend(server.url).decide(context())
    assert len(server.requests) == 3
    assert str(failure.value) == (
        f"model endpoint {server.url} kept failing after 3 attempts: HTTP 503: model is loading"
    )


def test_a_retry_after_beyond_the_time_budget_is_not_waited_for(
    server: ModelServer, api_key: str
) -> None:
    server.reply(error(429, "slow down", {"Retry-After": "120"}), completion("never"))
    sleeps = Sleeps()
    with pytest.raises(BackendError, match="kept failing after 1 attempt: HTTP 429: slow down"):
        backend(server.url, sleeps, total_timeout=10.0).decide(context())
    assert sleeps == []
    assert len(server.requests) == 1


def test_unreachable_endpoint_fails_readably_in_bounded_time() -> None:
    # A port that is bound but not listening refuses connections, and nobody else can take it.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{reserved.getsockname()[1]}/v1"
        sleeps = Sleeps()
        started = time.monotonic()
        with pytest.raises(BackendError) as failure:
            backend(url, sleeps).decide(context())
        elapsed = time.monotonic() - started
    assert str(failure.value) == f"model endpoint {url} unreachable after 3 attempts: " + (
        "Connection refused"
    )
    assert len(sleeps) == 2
    assert elapsed < 5


def test_a_silent_endpoint_times_out_within_the_total_budget(
    server: ModelServer, api_key: str
) -> None:
    server.reply(*[Reply(hang=True)] * 10)
    started = time.monotonic()
    with pytest.raises(BackendError) as failure:
        backend(server.url, attempts=10, request_timeout=0.2, total_timeout=0.5).decide(context())
    elapsed = time.monotonic() - started
    message = str(failure.value)
    prefix = f"model endpoint {server.url} timed out after "
    assert message.startswith(prefix)
    made = int(message[len(prefix) :].split(" ", 1)[0])
    # How many attempts fit depends on how fast this machine is (the first request
    # also builds the client's request machinery), so the test checks what holds on
    # any machine: each request's timeout is the request timeout cut to what is
    # left of the budget, so together they never exceed it, and at most three fit.
    with server.arrived:  # the last request may still be on its way to the server
        server.arrived.wait_for(lambda: len(server.requests) >= made, timeout=10)
    assert 1 <= len(server.requests) == made <= 3  # 10 attempts were allowed
    timeouts = [float(header(request, "x-stainless-read-timeout")) for request in server.requests]
    assert all(0 < timeout <= 0.2 for timeout in timeouts)
    assert sum(timeouts) <= 0.5 + 1e-6
    assert elapsed < 5  # liveness only: 0.5 s of budget, with a wide margin for a busy machine


def test_a_request_that_times_out_is_retried(server: ModelServer, api_key: str) -> None:
    server.reply(Reply(hang=True), completion("ok"))
    sleeps = Sleeps()
    decision = backend(server.url, sleeps, request_timeout=0.2, total_timeout=60).decide(context())
    assert decision.message == "ok"
    assert len(server.requests) == 2
    assert sleeps == [0.01]
    assert server.bodies()[0] == server.bodies()[1]


def test_401_fails_at_once_without_retries(server: ModelServer, api_key: str) -> None:
    server.reply(error(401, "Incorrect API key provided"), completion("never"))
    sleeps = Sleeps()
    with pytest.raises(BackendError) as failure:
        backend(server.url, sleeps).decide(context())
    assert str(failure.value) == (
        f"model endpoint {server.url} refused the request (model test-model): "
        "HTTP 401: Incorrect API key provided"
    )
    assert len(server.requests) == 1
    assert sleeps == []
    assert KEY not in str(failure.value)


def test_404_names_the_model(server: ModelServer, api_key: str) -> None:
    server.reply(error(404, "model 'test-model' not found, try pulling it first"))
    with pytest.raises(BackendError, match=r"\(model test-model\): HTTP 404: model 'test-model'"):
        backend(server.url).decide(context())
    assert len(server.requests) == 1


# --- the API key -----------------------------------------------------------------------


def test_the_api_key_comes_from_the_named_variable_as_a_bearer_token(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-wrong-one")
    server.reply(completion("ok"))
    backend(server.url).decide(context())
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-from-the-environment"


def test_a_self_hosted_endpoint_needs_no_key(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.reply(completion("ok"))
    assert backend(server.url).decide(context()).message == "ok"


def test_openai_itself_without_a_key_fails_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    model = OpenAIBackend(config(""))
    with pytest.raises(BackendError, match=f"environment variable {KEY_ENV} .* is not set"):
        model.decide(context())


def test_a_variable_no_longer_allowed_is_not_read_at_call_time(
    server: ModelServer, api_key: str, settings
) -> None:
    """A config saved while its api_key_env was allowed: the allow-list is checked again
    when the key is read, and nothing is sent."""
    model = OpenAIBackend(config(server.url))
    settings.ORCHESTRATOR_MODEL_KEY_ENVS = ["OPENAI_API_KEY"]
    with pytest.raises(BackendError, match=f"'{KEY_ENV}' is not one of the environment variab"):
        model.decide(context())
    assert server.requests == []


def test_secret_from_env_reads_only_allowed_variables(
    monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    from agents.config import _ENV_NAME
    from orchestrator.api_keys import ENV_NAME

    assert ENV_NAME.pattern == _ENV_NAME.pattern
    monkeypatch.setenv(KEY_ENV, "  sk-padded \n")
    assert secret_from_env(KEY_ENV) == "sk-padded"
    monkeypatch.setenv(KEY_ENV, " ")
    assert secret_from_env(KEY_ENV) is None
    monkeypatch.setenv("SECRET_KEY", "the-django-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-cloud-key")
    for bad in ("sk-live-123", "lower_case", "", "A" * 129, "SECRET_KEY", "AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(ValueError, match="ORCHESTRATOR_MODEL_KEY_ENVS"):
            secret_from_env(bad)
    settings.ORCHESTRATOR_MODEL_KEY_ENVS = []
    with pytest.raises(ValueError, match=r"ORCHESTRATOR_MODEL_KEY_ENVS: none\)"):
        secret_from_env(KEY_ENV)


# --- the transcript a window cut --------------------------------------------------------


def test_a_transcript_cut_mid_turn_is_repaired_before_sending(
    server: ModelServer, api_key: str
) -> None:
    transcript = [
        # The window starts after an assistant message: its results answer nothing.
        {"role": "tool", "tool_call_id": "old", "content": '{"ok": true}'},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("a", "read", {"resource": "x"})],
        },
        {"role": "tool", "tool_call_id": "a", "content": '{"value": 1}'},
        # A turn whose second call never ran.
        {
            "role": "assistant",
            "content": "two things",
            "tool_calls": [call("b", "acquire", {"resource": "x"}), call("c", "read", {})],
        },
        {"role": "tool", "tool_call_id": "b", "content": '{"granted": true}'},
    ]
    original = json.loads(json.dumps(transcript))
    server.reply(completion("ok"))
    backend(server.url).decide(context(transcript))

    assert server.refused == []
    sent = server.bodies()[0]["messages"][2:]
    placeholder = json.dumps({"error": "no result was recorded for this call"})
    # The null content recorded by older runtimes goes out as "".
    assert sent == [
        *[{**m, "content": m["content"] or ""} for m in transcript[1:]],
        {"role": "tool", "tool_call_id": "c", "content": placeholder},
    ]
    assert transcript == original  # not modified in place
    assert well_formed_transcript(sent) == sent


def test_a_transcript_that_opens_with_a_user_message_gets_no_second_one(
    server: ModelServer, api_key: str
) -> None:
    server.reply(completion("ok"))
    backend(server.url).decide(context([{"role": "user", "content": "Operator: hurry."}]))
    roles = [m["role"] for m in server.bodies()[0]["messages"]]
    assert roles == ["system", "user"]


# --- what llama.cpp's server refuses ----------------------------------------------------


def test_the_test_server_refuses_what_llama_cpps_server_refuses(server: ModelServer) -> None:
    """The strictness the other tests rely on: a null content and an untyped parameter."""
    import httpx

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server.url}/chat/completions", json=body, timeout=5)

    server.reply(completion("ok"), completion("ok"))
    tool = {"type": "function", "function": {"name": "write", "parameters": {}}}
    null_content = post({"messages": [{"role": "assistant", "content": None}]})
    assert null_content.status_code == 500
    assert "Input should be a valid string" in null_content.text
    missing_content = post({"messages": [{"role": "assistant", "tool_calls": []}]})
    assert missing_content.status_code == 500
    untyped_parameters = {
        "type": "object",
        "properties": {"value": {"description": "The new JSON value."}},
    }
    untyped = post(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{**tool, "function": {**tool["function"], "parameters": untyped_parameters}}],
        }
    )
    assert untyped.status_code == 500
    assert "Unrecognized schema" in untyped.text
    assert len(server.refused) == 3
    accepted = post({"messages": [{"role": "assistant", "content": ""}], "tools": TOOL_SPECS})
    assert accepted.status_code == 200


def test_every_tool_parameter_has_a_json_type() -> None:
    for spec in TOOL_SPECS:
        assert untyped_schema(spec["function"]["parameters"]) is None, spec["function"]["name"]
    (write,) = [s["function"] for s in TOOL_SPECS if s["function"]["name"] == "write"]
    assert set(write["parameters"]["properties"]["value"]["type"]) == {
        "string",
        "number",
        "integer",
        "boolean",
        "object",
        "array",
        "null",
    }


def test_a_500_that_says_the_request_is_invalid_fails_at_once_with_a_readable_message(
    server: ModelServer, api_key: str
) -> None:
    sleeps = Sleeps()
    with pytest.raises(BackendError) as failure:
        # The backend never sends a null content, so the server refuses the tools.
        untyped = {"type": "object", "properties": {"summary": {"description": "untyped"}}}
        tools = [{"type": "function", "function": {"name": "finish", "parameters": untyped}}]
        OpenAIBackend(config(server.url), sleep=sleeps, attempts=4).decide(
            StepContext(
                agent="a",
                role="",
                goal="g",
                config={},
                transcript=[],
                tools=tools,
                step_number=1,
                seed=0,
            )
        )
    assert len(server.requests) == 1  # never retried: it cannot succeed
    assert sleeps == []
    message = str(failure.value)
    assert message.startswith(
        f"model endpoint {server.url} refused the request (model test-model): "
        "HTTP 500: Unrecognized schema: {'description': 'untyped'}"
    )


def test_a_pydantic_refusal_is_cut_to_one_readable_line(server: ModelServer, api_key: str) -> None:
    validation = llama_cpp_refusal({"messages": [{"role": "assistant", "content": None}]})
    assert validation is not None
    long = {"error": {"message": validation.body["error"]["message"] + " trace" * 200}}
    server.reply(Reply(500, long), completion("never"))
    sleeps = Sleeps()
    with pytest.raises(BackendError) as failure:
        backend(server.url, sleeps).decide(context())
    assert len(server.requests) == 1
    assert sleeps == []
    message = str(failure.value)
    detail = message.split("HTTP 500: ", 1)[1]
    assert "\n" not in message
    assert detail.startswith("1 validation error for ChatCompletionRequestAssistantMessage ")
    assert "Input should be a valid string" in detail
    assert len(detail) <= 300
    assert detail.endswith("…")


def test_a_long_400_is_not_retried_and_is_cut(server: ModelServer, api_key: str) -> None:
    server.reply(error(400, "Requested tokens exceed context window of 2048. " + "x" * 5000))
    with pytest.raises(BackendError) as failure:
        backend(server.url).decide(context())
    assert len(server.requests) == 1
    assert "HTTP 400: Requested tokens exceed context window of 2048. xxx" in str(failure.value)
    assert len(str(failure.value)) < 450


def test_a_500_that_does_not_say_the_request_is_invalid_is_still_retried(
    server: ModelServer, api_key: str
) -> None:
    server.reply(error(500, "CUDA error: out of memory"), completion("ok"))
    assert backend(server.url).decide(context()).message == "ok"
    assert len(server.requests) == 2


# --- the optional config keys -----------------------------------------------------------


def test_max_tokens_tool_choice_and_the_default_timeout_are_sent(
    server: ModelServer, api_key: str
) -> None:
    server.reply(completion("ok"))
    OpenAIBackend(openai_config(config(server.url)), sleep=Sleeps()).decide(context())
    (request,) = server.requests
    assert request["body"]["max_tokens"] == 512
    assert request["body"]["tool_choice"] == "auto"
    assert float(header(request, "x-stainless-read-timeout")) == 120


def test_configured_keys_and_extra_body_are_sent(server: ModelServer, api_key: str) -> None:
    server.reply(completion("ok"))
    cleaned = openai_config(
        config(
            server.url,
            max_tokens=64,
            tool_choice="required",
            timeout=7.5,
            extra_body={"top_k": 40, "cache_prompt": True},
        )
    )
    OpenAIBackend(cleaned, sleep=Sleeps()).decide(context())
    (request,) = server.requests
    body = request["body"]
    assert (body["max_tokens"], body["tool_choice"]) == (64, "required")
    assert (body["top_k"], body["cache_prompt"]) == (40, True)
    assert body["model"] == "test-model"
    assert float(header(request, "x-stainless-read-timeout")) == 7.5


def test_the_openai_config_fills_defaults_and_refuses_bad_values() -> None:
    from pydantic import ValidationError

    cleaned = openai_config({"model": "m"})
    assert (cleaned["max_tokens"], cleaned["tool_choice"], cleaned["timeout"]) == (512, "auto", 120)
    assert cleaned["extra_body"] == {}
    assert "max_steps" not in cleaned  # optional, no default
    for bad, key in (
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"tool_choice": "any"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"extra_body": []}, "extra_body"),
        ({"extra_body": {"messages": []}}, "messages"),
        ({"extra_body": {"max_tokens": 9}}, "max_tokens"),
    ):
        with pytest.raises(ValidationError) as refused:
            openai_config({"model": "m", **bad})
        assert key in " ".join(config_messages(refused.value, OpenAIConfig)), bad


# --- through the runtime -----------------------------------------------------------------


def run_openai_agent(server: ModelServer, *replies: Reply) -> Any:
    """A run of one openai agent against ``server``, drained by an in-process RQ worker."""
    import django_rq

    from agents.runtime import run_start
    from orchestrator.core.tenancy import default_team
    from tests import factories
    from tests.workers import SimpleWorker

    server.reply(*replies)
    # The team of resources created without one: the tests' resource_create calls.
    team = default_team()
    factories.agent(
        team_=team,
        name="booker-1",
        backend="openai",
        config=openai_config({"model": "test-model", "base_url": server.url}),
    )
    run = run_start(team=team, goal="Book room 101.", max_steps=5)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)
    run.refresh_from_db()
    return run


@pytest.mark.django_db(transaction=True)
def test_a_turn_of_tool_calls_only_is_sent_back_with_empty_content(
    server: ModelServer, redis_conn: Any
) -> None:
    from orchestrator.core.models import Run, Step
    from orchestrator.core.resources import resource_create

    resource_create(name="room-101", value={})
    run = run_openai_agent(
        server,
        completion(None, [call("c1", "acquire", {"resource": "room-101"})]),
        completion(None, [call("c2", "release", {"resource": "room-101"})]),
        completion(None, [call("c3", "finish", {"summary": "done"})]),
    )
    assert server.refused == []
    assert run.status == Run.Status.FINISHED
    assert len(server.requests) == 3
    steps = list(Step.objects.filter(run=run).order_by("number"))
    assert [step.status for step in steps] == ["done"] * 3
    assert steps[0].transcript[0]["content"] == ""
    sent = server.bodies()[2]["messages"]
    assert [m["content"] for m in sent if m["role"] == "assistant"] == ["", ""]


@pytest.mark.django_db(transaction=True)
def test_a_turn_without_a_tool_call_is_noted_plainly(server: ModelServer, redis_conn: Any) -> None:
    from orchestrator.core.models import Run, Step

    run = run_openai_agent(
        server,
        completion("I will book room 101 now."),
        completion(None, [call("c1", "finish", {})]),
    )
    assert run.status == Run.Status.FINISHED
    first = Step.objects.get(run=run, number=1)
    said, note = first.transcript
    assert said == {"role": "assistant", "content": "I will book room 101 now."}
    assert note["role"] == "user"
    assert note["content"].startswith("You called no tool in that turn, so nothing was done.")
    # The model sees the note on its next step.
    assert server.bodies()[1]["messages"][-2:] == [said, note]
