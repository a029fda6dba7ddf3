"""``GET /metrics``: the Prometheus scrape (orchestrator/core/metrics.py), behind a bearer
token.

Off unless ``ORCHESTRATOR_METRICS_TOKEN`` is set: then it answers 404, as for a page
that does not exist. With it, a request must carry ``Authorization: Bearer <token>``
(compared in constant time), else 401. It needs no session and sets no cookie; CSRF
does not apply (GET only, and exempt, so that a stray POST is a plain 405). A scrape
that fails answers 503 with a line of text, never a 500 page.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from orchestrator.core import metrics as core_metrics

logger = logging.getLogger(__name__)


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _text(body: str, status: int) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every process's metrics, added up (Prometheus text, or OpenMetrics if asked)."""
    token = settings.ORCHESTRATOR_METRICS_TOKEN
    if not token:
        return _text("Not found\n", 404)
    if not _authorized(request, token):
        response = _text("A bearer token is required (ORCHESTRATOR_METRICS_TOKEN).\n", 401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    try:
        body, content_type = core_metrics.exposition(request.headers.get("Accept"))
    except Exception:
        logger.exception("the metrics scrape failed")
        return _text("The metrics could not be read; see the server's log.\n", 503)
    return HttpResponse(body, content_type=content_type)
