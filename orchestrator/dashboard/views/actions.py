"""Operator actions: POST, CSRF, operators only; each calls one service with ``user=``.

The services leave the Event naming the user and raise ProtocolError for
what they refuse (already decided, already resolved, lock already ended):
that becomes a clear message, as JSON for fetch() callers (status of the
error) or as a message on the page the form came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from agents.runtime import run_cancel, run_start
from orchestrator.core.approvals import approval_decide
from orchestrator.core.control import (
    agents_set_paused,
    runs_set_paused,
    system_set_paused,
    teams_set_paused,
)
from orchestrator.core.deadlocks import deadlock_break
from orchestrator.core.errors import ProtocolError
from orchestrator.core.locks import lock_force_release
from orchestrator.core.policies import rule_create, rule_describe, rule_revoke
from orchestrator.dashboard.forms import (
    BreakDeadlockForm,
    DecisionForm,
    ForceReleaseForm,
    PauseForm,
    RuleFromApprovalForm,
    RunStartForm,
)
from orchestrator.dashboard.selectors import lookups
from orchestrator.dashboard.views.access import operator_form, operator_required
from orchestrator.dashboard.views.errors import refuse, wants_json
from orchestrator.dashboard.views.pages import approvals_page


def _back(request: HttpRequest) -> str:
    """Where a form goes back to: its ``next`` field or the referring page, if on this site."""
    for target in (request.POST.get("next"), request.headers.get("Referer")):
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return target
    return reverse("dashboard:overview")


def answer(request: HttpRequest, *, detail: str, ok: bool = True, **extra: Any) -> HttpResponse:
    """A done action: JSON for fetch(), otherwise a message on the page the form came from."""
    if wants_json(request):
        return JsonResponse({"ok": ok, "detail": detail, **extra})
    messages.add_message(request, messages.SUCCESS if ok else messages.INFO, detail)
    return redirect(_back(request))


def refused(request: HttpRequest, exc: ProtocolError) -> HttpResponse:
    """A refusal by a service: JSON with its status for fetch(); for a form, the page it
    came from with the reason when the state moved under the operator (already decided,
    already ended), or an error page for a request that could never work (unknown id,
    invalid choice)."""
    if wants_json(request):
        return JsonResponse({"ok": False, **exc.as_dict()}, status=exc.status)
    if exc.status in (400, 404):
        return refuse(request, exc.status, exc.code, exc.detail)
    messages.error(request, exc.detail)
    return redirect(_back(request))


def invalid(request: HttpRequest, form: forms.Form) -> HttpResponse:
    errors = {field: [str(e) for e in errs] for field, errs in form.errors.items()}
    if wants_json(request):
        return JsonResponse(
            {"ok": False, "error": "invalid", "detail": "invalid input", "errors": errors},
            status=400,
        )
    text = "; ".join(f"{field}: {' '.join(errs)}" for field, errs in errors.items())
    return refuse(request, 400, "invalid", f"This action's input is not valid ({text}).")


def perform(
    request: HttpRequest, form: forms.Form, act: Callable[[dict[str, Any]], str]
) -> HttpResponse:
    """Validate ``form``, run ``act`` with its cleaned data, and answer."""
    if not form.is_valid():
        return invalid(request, form)
    try:
        detail = act(form.cleaned_data)
    except ProtocolError as exc:
        return refused(request, exc)
    return answer(request, detail=detail)


def _paused_text(what: str, paused: bool, changed: bool) -> str:
    if not changed:
        return f"{what} was already {'paused' if paused else 'running'}."
    if paused:
        return f"Paused {what}: agents stop before their next step."
    return f"Resumed {what}."


@operator_required
def system_pause(request: HttpRequest) -> HttpResponse:
    """The emergency stop: pause (or resume) every agent of every team."""

    def act(data: dict[str, Any]) -> str:
        changed = system_set_paused(paused=data["paused"], user=request.user)
        return _paused_text("everything", data["paused"], changed)

    return perform(request, PauseForm(request.POST), act)


@operator_required
def team_pause(request: HttpRequest, team_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        team = lookups.team_get(team_id=team_id)
        changed = teams_set_paused(teams=[team], paused=data["paused"], user=request.user)
        return _paused_text(f"team {team.name}", data["paused"], bool(changed))

    return perform(request, PauseForm(request.POST), act)


@operator_required
def agent_pause(request: HttpRequest, agent_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        agent = lookups.agent_get(agent_id=agent_id)
        changed = agents_set_paused(agents=[agent], paused=data["paused"], user=request.user)
        return _paused_text(f"agent {agent.name}", data["paused"], bool(changed))

    return perform(request, PauseForm(request.POST), act)


@operator_required
def run_pause(request: HttpRequest, run_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        run = lookups.run_get(run_id=run_id)
        changed = runs_set_paused(runs=[run], paused=data["paused"], user=request.user)
        return _paused_text(f"run #{run.pk}", data["paused"], bool(changed))

    return perform(request, PauseForm(request.POST), act)


@operator_required
def run_cancel_view(request: HttpRequest, run_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        before = lookups.run_get(run_id=run_id)
        if before.status in ("finished", "failed", "cancelled"):
            return f"Run #{run_id} had already ended ({before.status})."
        run = run_cancel(run_id=run_id, user=request.user)
        return f"Run #{run.pk} cancelled: its agents' locks and waits are released."

    return perform(request, forms.Form(request.POST), act)


@operator_form
def run_new(request: HttpRequest) -> HttpResponse:
    """Start a run of a team: its agents' first steps are enqueued when it commits. A
    refusal (an agent still busy in another run) is shown on the form, like its errors."""
    if request.method == "GET":
        form = RunStartForm(initial={"team": request.GET.get("team")})
        return _run_form(request, form)
    form = RunStartForm(request.POST)
    if not form.is_valid():
        return invalid(request, form) if wants_json(request) else _run_form(request, form, 400)
    data = form.cleaned_data
    try:
        run = run_start(
            team=data["team"],
            goal=data["goal"],
            agents=list(data["agents"]) or None,
            max_steps=data["max_steps"],
            seed=data["seed"],
            user=request.user,
        )
    except ProtocolError as exc:
        if wants_json(request):
            return refused(request, exc)
        form.add_error(None, exc.detail)
        return _run_form(request, form, exc.status)
    agents = run.steps.count()
    detail = f"Run #{run.pk} started: {agents} agent{'s'[: agents != 1]}, first steps queued."
    if wants_json(request):
        return JsonResponse({"ok": True, "detail": detail, "run": run.pk}, status=201)
    messages.success(request, detail)
    return redirect("dashboard:run", run_id=run.pk)


def _run_form(request: HttpRequest, form: RunStartForm, status: int = 200) -> HttpResponse:
    return render(request, "dashboard/run_new.html", {"form": form}, status=status)


@operator_required
def lock_release(request: HttpRequest, lock_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        lock = lookups.lock_get(lock_id=lock_id)
        lock_force_release(lock_id=lock_id, user=request.user, reason=data["reason"])
        return (
            f"Released {lock.agent.name}'s {lock.mode} lock on {lock.resource.name}; "
            "its fencing token no longer writes, and the next waiters were granted."
        )

    return perform(request, ForceReleaseForm(request.POST), act)


@operator_required
def deadlock_break_view(request: HttpRequest, conflict_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        lookups.deadlock_get(conflict_id=conflict_id)
        conflict = deadlock_break(
            conflict_id=conflict_id,
            victim_id=data["victim"],
            action=data["action"],
            user=request.user,
        )
        return f"Deadlock #{conflict.pk} broken: {conflict.resolution}"

    return perform(request, BreakDeadlockForm(request.POST), act)


def decide(request: HttpRequest, approval_id: int, form: DecisionForm) -> str:
    """Run a valid decision through the service; ProtocolError goes up."""
    data = form.cleaned_data
    extra = {"value": data["parsed_value"]} if data["decision"] == DecisionForm.EDIT else {}
    result = approval_decide(
        approval_id=approval_id,
        decision="reject" if data["decision"] == DecisionForm.REJECT else "approve",
        note=data["note"],
        user=request.user,
        **extra,
    )
    return f"Approval #{result.approval.pk} {result.approval.status}: {result.detail}"


@operator_required
def approval_decide_view(request: HttpRequest, approval_id: int) -> HttpResponse:
    """Approve, reject, or edit and approve. Two operators at once: the first one wins,
    the other is told who decided."""
    form = DecisionForm(request.POST)
    if not form.is_valid():
        if wants_json(request):
            return invalid(request, form)
        return approvals_page(request, bound={approval_id: form}, status=400)
    try:
        detail = decide(request, approval_id, form)
    except ProtocolError as exc:
        return refused(request, exc)
    return answer(request, detail=detail)


@operator_required
def approval_rule_create(request: HttpRequest, approval_id: int) -> HttpResponse:
    """A standing rule from an approval ("always approve" / "always reject" its agent's,
    or any agent's, writes to its resource). It decides the writes that come after;
    the approval it was made from stays pending, for the operator to decide on its
    own merits (it may be a contested write, which a rule about future writes says
    nothing about)."""
    form = RuleFromApprovalForm(request.POST)
    if not form.is_valid():
        if wants_json(request):
            return invalid(request, form)
        return approvals_page(request, rule_forms={approval_id: form}, status=400)
    data = form.cleaned_data
    try:
        rule = rule_create(
            user=request.user,
            action=data["action"],
            approval_id=approval_id,
            any_agent=data["any_agent"],
            expires_at=data["expires_at"],
            max_uses=data["max_uses"],
            reason=data["reason"],
        )
    except ProtocolError as exc:
        return refused(request, exc)
    detail = (
        f"Created {rule_describe(rule)}. It decides the writes that come after; "
        f"approval #{approval_id} still waits for your decision."
    )
    return answer(request, detail=detail, rule=rule.pk)


@operator_required
def rule_revoke_view(request: HttpRequest, rule_id: int) -> HttpResponse:
    def act(data: dict[str, Any]) -> str:
        before = lookups.rule_get(rule_id=rule_id)
        if not before.active:
            return f"Rule #{rule_id} was already revoked."
        rule_revoke(rule_id=rule_id, user=request.user)
        return f"Revoked rule #{rule_id}: it decides no more writes."

    return perform(request, forms.Form(request.POST), act)
