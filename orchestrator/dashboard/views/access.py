"""Who gets in: watchers see the pages, operators act. Everyone else is told why."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods, require_POST

from orchestrator.dashboard.permissions import can_operate, can_watch
from orchestrator.dashboard.views.errors import refuse, wants_json

View = Callable[..., HttpResponse]


def _login_or_refuse(request: HttpRequest) -> HttpResponse:
    if wants_json(request):
        return refuse(request, 401, "login_required", "Sign in first.")
    return redirect_to_login(request.get_full_path())


def watcher_required(view: View) -> View:
    """Signed-in users allowed to watch (viewers, operators); anonymous users sign in first."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _login_or_refuse(request)
        if not can_watch(request.user):
            return refuse(
                request,
                403,
                "not_allowed",
                "Your account may not see the dashboard. Ask an administrator to add it "
                'to the "viewers" or "operators" group.',
            )
        return view(request, *args, **kwargs)

    return wrapped


def _operators_only(view: View) -> View:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _login_or_refuse(request)
        if not can_operate(request.user):
            return refuse(
                request,
                403,
                "operators_only",
                "Only operators can do this: your account may watch but not act. Ask an "
                'administrator to add it to the "operators" group.',
            )
        return view(request, *args, **kwargs)

    return wrapped


def operator_required(view: View) -> View:
    """POST only, signed in, in the operators group; viewers get a 403 that says why."""
    return require_POST(_operators_only(view))


def operator_form(view: View) -> View:
    """A page with an operator's form: GET shows it, POST acts; operators only."""
    return require_http_methods(["GET", "POST"])(_operators_only(view))
