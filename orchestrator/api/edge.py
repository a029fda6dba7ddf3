"""What every agent API response shares: authentication and JSON errors.

Every refusal is a 4xx with the body ``{"error": code, "detail": text}``,
the shape of :meth:`ProtocolError.as_dict`. That covers django-ninja's own
refusals (validation, unparsable bodies, missing tokens) and the ones Django
would answer with HTML: unknown paths, wrong methods, oversized bodies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import URLPattern, URLResolver, re_path
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from orchestrator.core import wakeups
from orchestrator.core.errors import ProtocolError, Throttled
from orchestrator.core.models import Agent
from orchestrator.core.operations import refusal
from orchestrator.core.tokens import agent_by_token

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Used when DATA_UPLOAD_MAX_MEMORY_SIZE is None (no Django limit): values are
# capped far below this by the services anyway.
FALLBACK_MAX_BODY_BYTES = 2_621_440


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status, headers=headers)


class AgentToken(HttpBearer):
    """``Authorization: Bearer <agent token>``; ``request.auth`` is the Agent."""

    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        return agent_by_token(token.strip())


def max_body_bytes() -> int:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return FALLBACK_MAX_BODY_BYTES if limit is None else limit


def _content_length(request: HttpRequest) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0


def _body_too_large(request: HttpRequest, limit: int) -> bool:
    """Whether the body is larger than ``limit`` bytes: by its Content-Length, unread,
    else by reading it as the view would. A chunked body has no Content-Length, and
    Django's RequestDataTooBig, raised inside the view, would be an HTML 400 and a
    logged traceback."""
    if _content_length(request) > limit:
        return True
    try:
        return len(request.body) > limit
    except RequestDataTooBig:
        return True


def _operation_errors(errors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """ninja's errors with each location relative to the operation's fields: without
    the source (body, path, query) and the body's parameter name."""
    relative = []
    for error in errors:
        loc = list(error.get("loc", ()))[1:]
        if loc[:1] == ["payload"]:  # the body's parameter name means the body itself
            loc = loc[1:]
        relative.append({**error, "loc": tuple(loc)})
    return relative


def install_error_handlers(api: NinjaAPI) -> None:
    """Map every exception the API can see on a client's input to a JSON 4xx."""

    @api.exception_handler(ProtocolError)
    def protocol_error(request: HttpRequest, exc: ProtocolError) -> HttpResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
        return JsonResponse(exc.as_dict(), status=exc.status, headers=headers)

    @api.exception_handler(ValidationError)
    def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        # The refusal that the runtime's tools and the services give for the same input.
        refused = refusal(_operation_errors(exc.errors))
        return JsonResponse(refused.as_dict(), status=refused.status)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        challenge = 'Bearer realm="orchestrator"'
        if request.headers.get("Authorization"):
            challenge += ', error="invalid_token"'
        return error_response(
            401,
            "unauthorized",
            "send a valid agent token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": challenge},
        )

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        # ninja raises these itself; 400 means the body is not JSON.
        code = "invalid_request" if exc.status_code == 400 else f"http_{exc.status_code}"
        detail = "the request body is not valid JSON" if exc.status_code == 400 else str(exc)
        return error_response(exc.status_code, code, detail)

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error_response(404, "not_found", "no such API endpoint")


def long_poll_answer(
    api: NinjaAPI,
    request: HttpRequest,
    poll: wakeups.LongPoll[T],
    answer: Callable[[T], dict[str, Any]],
    schema: type[Schema],
) -> Any:
    """The 200 answer of a long poll: ``answer(result)``, shaped by ``schema``.

    Decided already (or no wait asked): answered now. Under the project's ASGI handler
    (core/request_threads.py), a poll that waits takes its slot now (429 otherwise) and
    is answered by a streaming response whose body waits on the event loop, holding no
    thread (``LongPoll.wait_async``); the last read and ``answer`` run in a read
    thread, and the body is what ninja would render for ``schema``. Elsewhere (the
    test client, WSGI) it waits in this thread. The status (200) is sent before the
    wait: a read that fails meanwhile ends the wait early with the last state read
    (still waiting), and the client's next poll gets the refusal.
    """
    if not poll.deferred():
        return answer(poll.result)

    def rendered(result: T) -> str:
        data = schema.model_validate(answer(result)).model_dump()
        return api.renderer.render(request, data, response_status=200)

    async def body() -> AsyncIterator[str]:
        try:
            yield await poll.wait_async(rendered)
        except Exception:  # a read failed (the database): answer what was last read
            logger.exception("long poll of agent %s ended by an error", poll.agent_id)
            yield await wakeups.in_thread(rendered, poll.result)

    return StreamingHttpResponse(body(), content_type=api.get_content_type())


def json_edges(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Wrap a URL's view: refuse oversized bodies, and answer 404/405 in JSON, not HTML."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        limit = max_body_bytes()
        if _body_too_large(request, limit):
            return error_response(
                413, "request_too_large", f"the request body is larger than {limit} bytes"
            )
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            return endpoint_not_found(request)
        if response.status_code == 405 and not _is_json(response):
            allowed = response.get("Allow", "")
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        return response

    # Agents authenticate with bearer tokens, never cookies: CSRF does not apply, and
    # Django's CSRF refusal would be an HTML page.
    wrapper.csrf_exempt = True  # type: ignore[attr-defined]
    return wrapper


def _is_json(response: HttpResponseBase) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def endpoint_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(404, "not_found", f"no API endpoint at {request.path}")


def docs_access(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """The API's docs page and OpenAPI document: for signed-in users and agents only.

    A browser without a session is sent to the login page; any other caller gets
    the JSON 401 of the API (agents fetch the document with their bearer token).
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = getattr(request, "user", None)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if (user is not None and user.is_authenticated) or (
            scheme.lower() == "bearer" and agent_by_token(token.strip()) is not None
        ):
            return view(request, *args, **kwargs)
        if request.path.endswith(".json") or header:
            return error_response(
                401,
                "unauthorized",
                "sign in, or send an agent token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
            )
        return redirect_to_login(request.get_full_path())

    return wrapper


class AgentAPI(NinjaAPI):
    """A NinjaAPI whose URLs never answer in HTML (see :func:`json_edges`)."""

    @property
    def urls(self) -> tuple[list[URLPattern | URLResolver], str, str]:
        patterns, app_name, namespace = super().urls
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                pattern.callback = json_edges(pattern.callback)
        # Last: anything else under the API prefix, including trailing-slash variants.
        patterns.append(re_path(r"^.*$", json_edges(endpoint_not_found)))
        return patterns, app_name, namespace
