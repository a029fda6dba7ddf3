"""A backend that asks any OpenAI-compatible chat-completions endpoint what to do.

Works with OpenAI itself and with the servers that speak its protocol (vLLM,
Ollama, LM Studio, llama.cpp server). One :meth:`OpenAIBackend.decide` call is
one chat-completions request (plus retries): the model sees a system message
with its role and the run's goal, the transcript so far, and the tool specs,
and answers with text and/or tool calls.

Guarantees:

- Model mistakes never raise. Tool calls whose arguments are not a JSON object,
  or that name a tool that does not exist, come back as ``ToolCall`` with
  ``arguments=None`` and a readable ``error`` that the runtime hands back to
  the model.
- Endpoint trouble raises :class:`BackendError` with a message an operator can
  act on. Timeouts, connection failures, HTTP 429 and 5xx are retried with
  exponential backoff (honouring ``Retry-After``) within a bounded number of
  attempts and a bounded total time. A request that cannot succeed fails at
  once, naming the status and the server's own message (cut to a readable
  length): any other 4xx (401 bad key, 404 unknown model, 400 bad request),
  and a 5xx whose body says the request itself is invalid (llama.cpp's server
  answers 500 to a request its schema refuses).
- Every message sent has a string ``content``: an assistant turn made only of
  tool calls is sent with ``""``, never null (llama.cpp's server refuses a
  null, and its chat template needs the field).
- At most ``max_tokens`` tokens are generated per call (512 unless
  configured), so a model that does not stop cannot run until its context
  is full.
- The API key is read from the environment variable named by the config's
  ``api_key_env`` (through :func:`orchestrator.api_keys.secret_from_env`) and
  never appears in an error message.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import openai

from agents import tracing
from agents.backends.base import BackendError, Decision, StepContext, ToolCall
from agents.config import OpenAIConfig
from agents.tools import TOOL_NAMES
from orchestrator.api_keys import secret_from_env
from orchestrator.core.metrics import model_call_timer

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TOTAL_TIMEOUT = 300.0
# How much of a server's error message a step's error shows.
DETAIL_LENGTH = 300
# Sent as the bearer token to a self-hosted endpoint when no key is configured:
# the client insists on some key, and local servers ignore it.
NO_KEY = "no-key"


class OpenAIBackend:
    """Decide an agent's step with a chat-completions call.

    ``config`` is an agent's backend config, read through
    ``agents.config.OpenAIConfig`` (a dict is validated by it; missing optional
    keys get its defaults: ``max_tokens`` 512, ``tool_choice`` "auto", ``timeout``
    120 s, ``extra_body`` none). The keyword arguments set the retry policy:

    - ``attempts``: requests made at most per decision (first try included);
    - ``base_delay`` / ``max_delay``: backoff before retry *n* is
      ``base_delay * 2**(n-1)`` seconds, capped at ``max_delay``, shortened by
      up to ``jitter`` (a fraction) so that many workers do not retry in step;
      a server's ``Retry-After`` lengthens it (never shortens it);
    - ``request_timeout``: seconds one request may take (default: the config's
      ``timeout``);
    - ``total_timeout``: seconds the whole decision may take, retries and
      waits included (default 300, or one request's timeout if longer); no
      retry is started that could not finish in time;
    - ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        config: OpenAIConfig | dict[str, Any],
        *,
        attempts: int = 4,
        base_delay: float = 1.0,
        max_delay: float = 20.0,
        jitter: float = 0.25,
        request_timeout: float | None = None,
        total_timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        config = OpenAIConfig.model_validate(config)
        self.model: str = config.model
        self.base_url: str = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env: str = config.api_key_env
        self.temperature: float = config.temperature
        self.system_prompt: str = config.system_prompt
        self.max_tokens: int = config.max_tokens
        self.tool_choice: str = config.tool_choice
        self.extra_body: dict[str, Any] = dict(config.extra_body)
        if request_timeout is None:
            request_timeout = config.timeout
        if total_timeout is None:
            total_timeout = max(DEFAULT_TOTAL_TIMEOUT, request_timeout)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.request_timeout = request_timeout
        self.total_timeout = total_timeout
        self._sleep = sleep
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._client: openai.OpenAI | None = None

    # --- the interface ---------------------------------------------------------------

    def decide(self, context: StepContext) -> Decision:
        """One chat-completions call (with retries) turned into a :class:`Decision`.

        Raises :class:`BackendError` only for configuration and endpoint
        problems, never for what the model said.
        """
        client = self._get_client()
        request: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(context, system_prompt=self.system_prompt),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if context.tools:  # an empty tools list is rejected by OpenAI
            request["tools"] = context.tools
            request["tool_choice"] = self.tool_choice
        if self.extra_body:
            request["extra_body"] = self.extra_body
        with tracing.model_call(request, endpoint=self.base_url) as traced:  # chat {model}
            response = self._create(client, request)
            traced.response(response)
        return decision_from_response(
            response, endpoint=self.base_url, step_number=context.step_number
        )

    def close(self) -> None:
        """Close the HTTP connection pool (it is also closed when garbage-collected)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- internals ---------------------------------------------------------------------

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            try:
                api_key = secret_from_env(self.api_key_env)
            except ValueError as exc:
                raise BackendError(f"api_key_env: {exc}") from exc
            if api_key is None:
                if self.base_url == DEFAULT_BASE_URL:
                    raise BackendError(
                        f"the environment variable {self.api_key_env} (api_key_env) is not set "
                        f"in the worker; it must hold the API key for {self.base_url}"
                    )
                api_key = NO_KEY
            # max_retries=0: the retry policy is ours (bounded, testable, one message).
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=api_key,
                timeout=self.request_timeout,
                max_retries=0,
            )
        return self._client

    def _create(self, client: openai.OpenAI, request: dict[str, Any]) -> Any:
        deadline = self._clock() + self.total_timeout
        failure: openai.APIError | None = None
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            remaining = deadline - self._clock()
            timeout = max(0.001, min(self.request_timeout, remaining))
            try:
                with model_call_timer():  # orchestrator_model_call_seconds, each request
                    return client.chat.completions.create(**request, timeout=timeout)
            except openai.APIStatusError as exc:
                if not _retryable(exc):
                    raise BackendError(
                        f"model endpoint {self.base_url} refused the request "
                        f"(model {self.model}): {_describe(exc)}"
                    ) from exc
                failure = exc
            except openai.APIConnectionError as exc:  # timeouts included
                failure = exc
            except openai.OpenAIError as exc:  # e.g. a body that is not a chat completion
                raise BackendError(
                    f"model endpoint {self.base_url} gave an unusable answer: {exc}"
                ) from exc
            if attempt == self.attempts:
                break
            delay = self._backoff(attempt, failure)
            if self._clock() + delay >= deadline:
                break
            self._sleep(delay)
        assert failure is not None
        raise self._gave_up(failure, attempt) from failure

    def _backoff(self, attempt: int, failure: openai.APIError) -> float:
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        delay *= 1 - self.jitter * self._random.random()
        if isinstance(failure, openai.APIStatusError):
            retry_after = _retry_after(failure.response.headers)
            if retry_after is not None:
                delay = max(delay, retry_after)
        return delay

    def _gave_up(self, failure: openai.APIError, attempts: int) -> BackendError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(failure, openai.APITimeoutError):
            what = "timed out"
        elif isinstance(failure, openai.APIConnectionError):
            what = "unreachable"
        else:
            what = "kept failing"
        return BackendError(
            f"model endpoint {self.base_url} {what} after {tries}: {_describe(failure)}"
        )


# --- building the request ------------------------------------------------------------


def system_message(context: StepContext, *, system_prompt: str = "") -> str:
    """The system prompt: the configured one, then who the agent is and the run's goal."""
    parts = [system_prompt.strip()] if system_prompt.strip() else []
    parts.append(
        f"You are {context.agent}, one agent of a team that shares resources. "
        f"Your role: {context.role or 'not specified'}."
    )
    parts.append(f"The run's goal: {context.goal}")
    parts.append(
        "Act only through the tools. Lock a resource before you change it (several at once "
        "with acquire_all), pass the version you read when you write, release your locks, "
        "and call finish when you are done."
    )
    return "\n\n".join(parts)


def kickoff_message(context: StepContext) -> str:
    """The user message that opens every conversation."""
    return f"Goal: {context.goal}\nWork toward it using the tools."


def build_messages(context: StepContext, *, system_prompt: str = "") -> list[dict[str, Any]]:
    """The chat messages for one step.

    A system message, then (unless the transcript opens with a user message of
    its own) a user message stating the goal, then the transcript. The opening
    user message is sent on every step, not only the first, so the model sees
    the same conversation prefix throughout (and some chat templates refuse a
    conversation that does not start with a user turn). The transcript is
    repaired by :func:`well_formed_transcript` so that a window cut in the middle
    of a turn does not make the endpoint reject the request.
    """
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_message(context, system_prompt=system_prompt)}
    ]
    transcript = well_formed_transcript(context.transcript)
    if not transcript or transcript[0].get("role") != "user":
        messages.append({"role": "user", "content": kickoff_message(context)})
    messages.extend(transcript)
    return messages


def well_formed_transcript(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transcript as given, minus what chat-completions endpoints reject.

    Endpoints require every tool message to answer a tool call of the assistant
    message before it, and every tool call to be answered. A transcript window
    can start in the middle of a turn, and a turn can end before all its calls
    ran; so tool messages answering nothing are dropped, and calls without an
    answer get a tool message saying that no result was recorded. A null or
    missing ``content`` (transcripts recorded before the runtime wrote ``""``)
    is sent as ``""``: some servers refuse a null (llama.cpp's: "Input should be
    a valid string") and some chat templates read the field. Messages are
    copied, never modified in place.
    """
    result: list[dict[str, Any]] = []
    unanswered: list[str] = []  # tool call ids of the last assistant message

    def answer_the_rest() -> None:
        for call_id in unanswered:
            result.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": json.dumps({"error": "no result was recorded for this call"}),
                }
            )
        unanswered.clear()

    for message in transcript:
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id in unanswered:
                unanswered.remove(call_id)
                result.append(_with_text(message))
            continue
        answer_the_rest()
        result.append(_with_text(message))
        if role == "assistant":
            unanswered = [call.get("id") for call in message.get("tool_calls") or []]
    answer_the_rest()
    return result


def _with_text(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` whose ``content`` is a string."""
    copy = dict(message)
    if copy.get("content") is None:
        copy["content"] = ""
    return copy


# --- reading the response ------------------------------------------------------------


def decision_from_response(response: Any, *, endpoint: str, step_number: int = 0) -> Decision:
    """The first choice of a chat completion as a :class:`Decision`.

    Raises :class:`BackendError` only if the response has no choice at all.
    """
    choices = getattr(response, "choices", None)
    if not choices:
        raise BackendError(f"model endpoint {endpoint} answered without any choice")
    message = choices[0].message
    calls = [
        tool_call_from(call, fallback_id=f"call_{step_number}_{index}")
        for index, call in enumerate(getattr(message, "tool_calls", None) or [])
    ]
    return Decision(message=message.content or "", tool_calls=calls)


def tool_call_from(call: Any, *, fallback_id: str) -> ToolCall:
    """One tool call of the model; malformed ones carry ``error`` and no arguments."""
    call_id = getattr(call, "id", None) or fallback_id
    function = getattr(call, "function", None)
    name = getattr(function, "name", None) or ""
    raw = getattr(function, "arguments", None)
    if name not in TOOL_NAMES:
        return ToolCall(
            id=call_id,
            name=name,
            arguments=None,
            error=f"there is no tool named {name!r}; the tools are {', '.join(TOOL_NAMES)}",
        )
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        # Models often send "" for a call without arguments (finish).
        return ToolCall(id=call_id, name=name, arguments={})
    if isinstance(raw, str):
        try:
            arguments = json.loads(raw)
        except json.JSONDecodeError as exc:
            return ToolCall(
                id=call_id,
                name=name,
                arguments=None,
                error=(
                    f"the arguments of {name} are not valid JSON ({exc.msg} at character "
                    f"{exc.pos}); send a JSON object with the tool's parameters"
                ),
            )
    else:  # some servers send the object itself
        arguments = raw
    if not isinstance(arguments, dict):
        return ToolCall(
            id=call_id,
            name=name,
            arguments=None,
            error=(
                f"the arguments of {name} must be a JSON object with the tool's parameters, "
                f"not a JSON {_json_kind(arguments)}"
            ),
        )
    return ToolCall(id=call_id, name=name, arguments=arguments)


# --- helpers -------------------------------------------------------------------------


def _retryable(error: openai.APIStatusError) -> bool:
    """429 and 5xx may succeed later; other statuses, and a 5xx that says the request
    itself is invalid, never will."""
    if error.status_code == 429:
        return True
    return error.status_code >= 500 and not _says_invalid(error)


# What servers say when they refuse the request itself with a 5xx: llama.cpp's
# server answers 500 to a body its schema refuses (pydantic: "1 validation error
# for ...", "Input should be a valid string") and to a tool schema it cannot
# build a grammar from ("Unrecognized schema").
_INVALID_REQUEST = (
    "invalid_request",
    "invalid request",
    "validation error",
    "input should be",
    "unrecognized schema",
    "field required",
)


def _says_invalid(error: openai.APIStatusError) -> bool:
    # The client hands over the body's "error" object (or the whole body).
    body = error.body
    if isinstance(body, dict) and body.get("type") == "invalid_request_error":
        return True
    text = _detail(error).lower()
    return any(phrase in text for phrase in _INVALID_REQUEST)


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(error: openai.APIError) -> str:
    """A one-line reason: HTTP status and the server's message, or the network cause."""
    if isinstance(error, openai.APIStatusError):
        detail = _readable(_detail(error))
        return f"HTTP {error.status_code}: {detail}" if detail else f"HTTP {error.status_code}"
    if isinstance(error, openai.APITimeoutError):
        return "no answer in time"
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause) or type(cause).__name__
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return text


def _detail(error: openai.APIStatusError) -> str:
    """The server's own message: the body's error message, or its text."""
    body = error.body
    detail: Any = None
    if isinstance(body, dict):
        detail = body.get("message") or body.get("error") or body.get("detail")
        if isinstance(detail, dict):
            detail = detail.get("message")
    if detail and not isinstance(detail, str):
        detail = json.dumps(detail)
    if not detail:
        try:
            detail = error.response.text
        except Exception:  # a streamed or unread body
            detail = ""
    return detail or ""


def _readable(text: str) -> str:
    """One line of at most ``DETAIL_LENGTH`` characters (servers send whole tracebacks)."""
    text = " ".join(text.split())
    if len(text) > DETAIL_LENGTH:
        text = text[: DETAIL_LENGTH - 1].rstrip() + "…"
    return text


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
