"""The dashboard's pages. Thin: check access, validate filters, call selectors, render.

Overview, Resources and Graph are drawn in the browser from the live board
(static/orchestrator/*.js); the other pages are rendered here and marked
live by the same feed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from orchestrator.core.errors import NotFound
from orchestrator.core.kinds import FILTERS
from orchestrator.core.models import ConflictKind
from orchestrator.core.queue import db_now
from orchestrator.dashboard.forms import (
    WINDOWS,
    BreakDeadlockForm,
    ConflictFilterForm,
    DecisionForm,
    GanttForm,
    RuleFromApprovalForm,
    TimelineFilterForm,
)
from orchestrator.dashboard.gantt import gantt_chart
from orchestrator.dashboard.selectors import approvals, conflicts, lookups, runs, timeline
from orchestrator.dashboard.selectors.board import system_state
from orchestrator.dashboard.views.access import watcher_required
from orchestrator.dashboard.views.errors import refuse

CONFLICTS_PER_PAGE = 50
APPROVALS_SHOWN = approvals.PENDING_LIMIT  # the oldest pending ones: the queue's head
RESOURCE_NAMES_SHOWN = 500  # the Gantt picker's suggestions (any name may be typed)


@require_GET
@watcher_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", {"system": system_state()})


@require_GET
@watcher_required
def resources(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/resources.html")


@require_GET
@watcher_required
def graph(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/graph.html", {"break_form": BreakDeadlockForm()})


def approvals_page(
    request: HttpRequest,
    *,
    bound: dict[int, DecisionForm] | None = None,
    rule_forms: dict[int, RuleFromApprovalForm] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The approvals queue, the recent decisions and the standing rules in force;
    ``bound`` and ``rule_forms`` hold forms with errors to show again, by approval."""
    bound, rule_forms = bound or {}, rule_forms or {}
    now = db_now()  # the clock deadlines run on; the page's countdowns start from it
    pending = approvals.approvals_pending(now=now, viewer=request.user, limit=APPROVALS_SHOWN)
    items = []
    for view in pending:
        pk = view.approval.pk
        rule_form = rule_forms.get(pk) or RuleFromApprovalForm()
        rule_form.auto_id = f"rule-{pk}-%s"  # one page, many cards: ids of their own
        form = bound.get(pk) or DecisionForm(
            initial={"decision": "edit", "value": view.proposed_json}
        )
        items.append({"view": view, "form": form, "rule_form": rule_form})
    return render(
        request,
        "dashboard/approvals.html",
        {
            "items": items,
            "decided": approvals.approvals_decided(),
            "rules": approvals.rules_in_force(now=now),
            "server_now": now,
        },
        status=status,
    )


@require_GET
@watcher_required
def approvals_view(request: HttpRequest) -> HttpResponse:
    return approvals_page(request)


@require_GET
@watcher_required
def conflicts_view(request: HttpRequest) -> HttpResponse:
    form = ConflictFilterForm(request.GET or None)
    filters: dict[str, Any] = {}
    status = 200
    if form.is_bound:
        if form.is_valid():
            filters = {k: v for k, v in form.cleaned_data.items() if v}
        else:
            status = 400
    page = Paginator(conflicts.conflicts_filtered(**filters), CONFLICTS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "dashboard/conflicts.html",
        {"form": form, "page": page, "query": query.urlencode(), "kinds": ConflictKind},
        status=status,
    )


@require_GET
@watcher_required
def timeline_view(request: HttpRequest) -> HttpResponse:
    filters_form = TimelineFilterForm(request.GET or None)
    filters: dict[str, Any] = {}
    status = 200
    if filters_form.is_bound:
        if filters_form.is_valid():
            filters = {
                k: v
                for k, v in filters_form.cleaned_data.items()
                if v and k in ("kind", "team", "agent", "actor")
            }
        else:
            status = 400
    gantt_form = GanttForm(request.GET or None)
    chart = gantt_error = subject = None
    if gantt_form.is_bound and gantt_form.is_valid() and gantt_form.cleaned_data["resource"]:
        subject = timeline.gantt_subject(name=gantt_form.cleaned_data["resource"])
        if subject is None:
            gantt_error = "No resource has that name."
        else:
            seconds = WINDOWS[gantt_form.cleaned_data["window"] or "fit"]
            window = None if seconds is None else timedelta(seconds=seconds)
            chart = gantt_chart(timeline.lock_history(subject=subject, now=db_now(), window=window))
    live_filter = {
        "kind": filters.get("kind", ""),
        "team": filters["team"].pk if "team" in filters else None,
        "agent": filters["agent"].pk if "agent" in filters else None,
        "actor": filters.get("actor", ""),
    }
    return render(
        request,
        "dashboard/timeline.html",
        {
            "form": filters_form,
            "gantt_form": gantt_form,
            "events": timeline.events_filtered(**filters),
            "chart": chart,
            "gantt_error": gantt_error,
            "gantt_is_path": subject is not None and subject.is_path,
            "gantt_is_folder": subject is not None and subject.name.endswith("/"),
            "gantt_resource": gantt_form.cleaned_data.get("resource")
            if gantt_form.is_bound and gantt_form.is_valid()
            else "",
            "resource_names": timeline.resource_names(limit=RESOURCE_NAMES_SHOWN),
            "event_kinds": FILTERS,
            "live_filter": live_filter,
        },
        status=status,
    )


@require_GET
@watcher_required
def run_view(request: HttpRequest, run_id: int) -> HttpResponse:
    try:
        run = lookups.run_get(run_id=run_id)
    except NotFound as exc:
        return refuse(request, 404, exc.code, exc.detail)
    return render(request, "dashboard/run.html", {"detail": runs.run_detail(run=run)})
