"""OpenTelemetry spans of the agent runtime: steps, model calls and tool calls.

Off unless ``settings.ORCHESTRATOR_OTEL`` (``ORCHESTRATOR_OTEL=1``) and the ``otel`` extra is
installed. :func:`configure` chooses once per process (``AgentsConfig.ready``) what the three
span functions are. While tracing is off they return one shared object whose ``with`` does
nothing, and opentelemetry's tracing API is never imported.

The spans follow the OpenTelemetry GenAI semantic conventions v1.41.0 (status Development):
``gen_ai.provider.name`` (the older ``gen_ai.system`` is not emitted), the agent spans of
gen-ai-agent-spans.md and the inference and tool spans of gen-ai-spans.md:

- :func:`agent_step`: ``invoke_agent {agent name}``, kind INTERNAL (the agent runs in this
  process), one per step that runs (``run_step``): ``gen_ai.operation.name``
  ``invoke_agent``, ``gen_ai.provider.name``, ``gen_ai.agent.name``, ``gen_ai.agent.id``,
  ``gen_ai.conversation.id`` (the agent's transcript in its run: ``{run id}:{agent id}``),
  ``gen_ai.request.model`` for a model-backed agent, and ``orchestrator.run.id``,
  ``orchestrator.step.id``, ``orchestrator.step.number``, ``orchestrator.step.attempt``,
  ``orchestrator.backend``, ``orchestrator.step.status`` (the status the job left it in).
- :func:`model_call`: ``chat {model}``, kind CLIENT, a child of the step's span, over the whole
  call with its retries: ``gen_ai.operation.name`` ``chat``, ``gen_ai.provider.name``
  ``openai`` (the protocol spoken; ``server.address`` and ``server.port`` say which server),
  ``gen_ai.request.model``, ``gen_ai.request.max_tokens``, ``gen_ai.request.temperature``,
  then ``gen_ai.response.model``, ``gen_ai.response.id``, ``gen_ai.response.finish_reasons``,
  ``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens`` when the response has them.
- :func:`tool_call`: ``execute_tool {tool}``, kind INTERNAL, a child of the step's span:
  ``gen_ai.operation.name`` ``execute_tool``, ``gen_ai.tool.name``, ``gen_ai.tool.call.id``,
  ``gen_ai.tool.type`` ``function``, ``orchestrator.tool.outcome`` (the result's status, or
  its error code).

A failure sets the span's status to ERROR with a low-cardinality ``error.type``: a tool's
error code (``not_holder``, ``version_conflict``, ``bad_arguments``), the HTTP status of a model
endpoint's refusal (``401``) or the exception's class (``APITimeoutError``), ``backend_failed``
for a step whose backend failed. No content is recorded, by design: no prompt, completion,
tool arguments or results, and no exception messages (a model endpoint's error can quote the
prompt). Transcripts stay in the database, where the dashboard shows them to operators.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

SCOPE = "orchestrator.agents"  # the instrumentation scope of every span here
SEMCONV_VERSION = "1.41.0"
SEMCONV_SCHEMA = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
DEFAULT_SERVICE_NAME = "orchestrator"  # unless OTEL_SERVICE_NAME names another
# The SDK's BatchSpanProcessor exports from a thread; a forked RQ horse exits without
# running atexit, so a step ending in one flushes its spans (waiting at most this long).
HORSE_FLUSH_MILLIS = 5000


class Off:
    """What the span functions return while tracing is off: one object for every span,
    whose ``with`` and recording methods do nothing."""

    __slots__ = ()

    def __enter__(self) -> Off:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def ended(self, status: str) -> None:
        """Record the status a step's job left it in."""

    def response(self, response: Any) -> None:
        """Record a chat completion's model, id, finish reasons and token usage."""

    def result(self, result: dict[str, Any]) -> None:
        """Record a tool call's outcome (its error code if it failed)."""


OFF = Off()


def _off(*args: Any, **kwargs: Any) -> Off:
    return OFF


# The three span functions; configure() rebinds them. Callers look them up on the module
# at each call (``tracing.agent_step(...)``), so the choice made at start-up is what runs.
#
# agent_step(step, agent): the span of one step of ``agent`` (a Step with its run loaded).
# model_call(request, endpoint=...): the span of one chat-completions call; ``request`` is
#     its body (only the model, max_tokens and temperature are read from it).
# tool_call(name, call_id): the span of one tool call.
agent_step: Any = _off
model_call: Any = _off
tool_call: Any = _off


def enabled() -> bool:
    """Whether spans are emitted in this process."""
    return agent_step is not _off


def configure(on: bool, *, tracer_provider: Any = None) -> bool:
    """Choose what the span functions do in this process; returns whether spans are emitted.

    Off (``on`` false): the no-op functions, and nothing is imported. On: spans go to
    ``tracer_provider`` if given (tests), else to the process's global provider if one was
    set (by ``opentelemetry-instrument`` or the deployment's own code), else to a new SDK
    provider that exports over OTLP/HTTP in batches, set as the global one; its exporter and
    resource read the standard variables themselves (OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES...). Without the
    ``otel`` extra installed, on is logged as a warning and stays off: tracing never stops
    a worker."""
    global agent_step, model_call, tool_call
    agent_step = model_call = tool_call = _off
    if not on:
        return False
    try:
        spans = _Spans(tracer_provider or _global_provider())
    except ImportError as exc:
        logger.warning(
            "ORCHESTRATOR_OTEL is on but %s is not installed (pip install 'orchestrator[otel]'):"
            " no spans are emitted",
            exc.name,
        )
        return False
    agent_step, model_call, tool_call = spans.agent_step, spans.model_call, spans.tool_call
    return True


def _global_provider() -> Any:
    """The process's tracer provider; a new OTLP-exporting SDK one if none was set."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider):
        return provider  # configured already, e.g. by opentelemetry-instrument
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


class _Spans:
    """The span functions while tracing is on, bound to one tracer."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._provider = provider
        self._tracer = provider.get_tracer(SCOPE, schema_url=SEMCONV_SCHEMA)
        self._pid = os.getpid()

    def _span(self, name: str, kind: Any, attributes: dict[str, Any]) -> Any:
        # Exceptions are not recorded by the SDK (their messages may quote content);
        # _failed() sets the status and error.type instead.
        return self._tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    @contextmanager
    def agent_step(self, step: Any, agent: Any) -> Iterator[_Recorder]:
        provider = "openai" if agent.backend == "openai" else f"orchestrator.{agent.backend}"
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": provider,
            "gen_ai.agent.name": agent.name,
            "gen_ai.agent.id": str(agent.pk),
            "gen_ai.conversation.id": f"{step.run_id}:{agent.pk}",
            "orchestrator.run.id": step.run_id,
            "orchestrator.step.id": step.pk,
            "orchestrator.step.number": step.number,
            "orchestrator.step.attempt": step.attempts,
            "orchestrator.backend": agent.backend,
        }
        model = (agent.config or {}).get("model") if agent.backend == "openai" else None
        if isinstance(model, str) and model:
            attributes["gen_ai.request.model"] = model
        try:
            with self._span(
                f"invoke_agent {agent.name}", self._trace.SpanKind.INTERNAL, attributes
            ) as span:
                yield from self._recording(span)
        finally:
            if os.getpid() != self._pid and hasattr(self._provider, "force_flush"):
                self._provider.force_flush(HORSE_FLUSH_MILLIS)  # a forked horse (see above)

    @contextmanager
    def model_call(self, request: dict[str, Any], *, endpoint: str) -> Iterator[_Recorder]:
        model = str(request.get("model") or "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
        }
        for key in ("max_tokens", "temperature"):
            if request.get(key) is not None:
                attributes[f"gen_ai.request.{key}"] = request[key]
        where = urlsplit(endpoint)
        if where.hostname:
            attributes["server.address"] = where.hostname
            attributes["server.port"] = where.port or (443 if where.scheme == "https" else 80)
        name = f"chat {model}" if model else "chat"
        with self._span(name, self._trace.SpanKind.CLIENT, attributes) as span:
            yield from self._recording(span)

    @contextmanager
    def tool_call(self, name: str, call_id: str) -> Iterator[_Recorder]:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
        }
        with self._span(f"execute_tool {name}", self._trace.SpanKind.INTERNAL, attributes) as span:
            yield from self._recording(span)

    def _recording(self, span: Any) -> Iterator[_Recorder]:
        """Yield the span's recorder; an exception out of the block marks it failed."""
        try:
            yield _Recorder(span, self._trace)
        except BaseException as exc:
            cause = exc.__cause__ or exc  # a BackendError raised from the client's error
            status = getattr(cause, "status_code", None)
            _failed(span, self._trace, str(status) if status else type(cause).__qualname__)
            raise


def _failed(span: Any, trace: Any, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))


class _Recorder:
    """What a ``with`` of a span function gives while tracing is on (see :class:`Off`)."""

    __slots__ = ("_span", "_trace")

    def __init__(self, span: Any, trace: Any) -> None:
        self._span = span
        self._trace = trace

    def ended(self, status: str) -> None:
        self._span.set_attribute("orchestrator.step.status", status)
        if status == "failed":  # the only way run_step fails a step: its backend failed
            _failed(self._span, self._trace, "backend_failed")

    def response(self, response: Any) -> None:
        span = self._span
        model = getattr(response, "model", None)
        if model:
            span.set_attribute("gen_ai.response.model", str(model))
        response_id = getattr(response, "id", None)
        if response_id:
            span.set_attribute("gen_ai.response.id", str(response_id))
        reasons = [
            str(choice.finish_reason)
            for choice in getattr(response, "choices", None) or []
            if getattr(choice, "finish_reason", None)
        ]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        usage = getattr(response, "usage", None)
        for name, field in (
            ("input_tokens", "prompt_tokens"),
            ("output_tokens", "completion_tokens"),
        ):
            count = getattr(usage, field, None)
            if isinstance(count, int):
                span.set_attribute(f"gen_ai.usage.{name}", count)

    def result(self, result: dict[str, Any]) -> None:
        ok = bool(result.get("ok"))
        error = str(result.get("error") or "_OTHER")
        outcome = result.get("status") or ("ok" if ok else error)
        self._span.set_attribute("orchestrator.tool.outcome", str(outcome))
        if not ok:
            _failed(self._span, self._trace, error)
