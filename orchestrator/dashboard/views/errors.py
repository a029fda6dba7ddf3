"""Refusals as clear pages for browsers and as JSON for fetch() callers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def wants_json(request: HttpRequest) -> bool:
    """Whether the caller asked for JSON (the dashboard's fetch() calls do)."""
    return "application/json" in request.headers.get("Accept", "")


def refuse(request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
    """An error answer in the form the caller reads."""
    if wants_json(request):
        return JsonResponse({"error": code, "detail": detail}, status=status)
    return render(
        request,
        "dashboard/error.html",
        {"code": code, "detail": detail, "status": status},
        status=status,
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the form or request lacked a valid CSRF token."""
    return refuse(
        request,
        403,
        "csrf_failed",
        "This action was refused because its security token was missing or stale. "
        "Reload the page and try again.",
    )
