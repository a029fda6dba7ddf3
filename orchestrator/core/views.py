"""Views of the core app: health only (the pages are the dashboard's)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from orchestrator.core import sql


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: answers without authentication, reveals nothing."""
    sql.ping()
    return JsonResponse({"status": "ok"})
