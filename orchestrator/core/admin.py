"""The Django admin: configure teams, agents and resources; inspect everything else.

Locks, lock requests, events and resource history are read-only here: they
change only through the coordination protocol. Pausing, resuming and token
resets are services, so they leave Events naming the operator.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from orchestrator.core.backends import validate_backend_config
from orchestrator.core.control import agents_set_paused, teams_set_paused
from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    Event,
    Lock,
    LockRequest,
    Resource,
    ResourceVersion,
    Run,
    Step,
    Switchboard,
    Team,
)
from orchestrator.core.tokens import agent_token_reset

admin.site.site_header = "Orchestrator administration"
admin.site.site_title = "Orchestrator"
admin.site.index_title = "Teams, agents and shared resources"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only the protocol writes: visible, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "deadlock_policy",
        "conflict_policy",
        "default_lease_ttl",
        "paused",
        "created_at",
    ]
    list_filter = ["paused", "deadlock_policy", "conflict_policy"]
    search_fields = ["name", "description"]
    readonly_fields = ["paused", "created_at"]
    actions = ["pause", "resume"]

    @admin.action(description="Pause selected teams", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        changed = teams_set_paused(teams=queryset, paused=True, user=request.user)
        self.message_user(request, f"Paused {changed} team(s).", messages.SUCCESS)

    @admin.action(description="Resume selected teams", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        changed = teams_set_paused(teams=queryset, paused=False, user=request.user)
        self.message_user(request, f"Resumed {changed} team(s).", messages.SUCCESS)


class PrettyJSONWidget(forms.Textarea):
    def format_value(self, value: Any) -> str | None:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return value
        return json.dumps(value, indent=2, ensure_ascii=False)


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name", "team", "role", "backend", "config"]
        widgets = {"config": PrettyJSONWidget(attrs={"rows": 14, "cols": 90})}
        help_texts = {
            "config": (
                'scripted: {"script": [{"tool": "acquire", "args": {...}}, ...], "seed": 1}; '
                'openai: {"model": "...", "base_url": "...", "api_key_env": "OPENAI_API_KEY"}; '
                'python: {"callable": "package.module.function"}'
            )
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        backend = cleaned.get("backend")
        if backend and "config" in cleaned:
            try:
                cleaned["config"] = validate_backend_config(backend, cleaned["config"])
            except ValidationError as exc:
                self.add_error("config", exc)
        return cleaned


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["name", "team", "backend", "status", "paused", "has_token", "created_at"]
    list_filter = ["team", "backend", "status", "paused"]
    search_fields = ["name", "role", "team__name"]
    readonly_fields = ["status", "paused", "token_created_at", "created_at"]
    list_select_related = ["team"]
    actions = ["pause", "resume", "reset_token"]

    @admin.display(boolean=True, description="API token")
    def has_token(self, agent: Agent) -> bool:
        return bool(agent.token_hash)

    @admin.action(description="Pause selected agents", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        changed = agents_set_paused(agents=queryset, paused=True, user=request.user)
        self.message_user(request, f"Paused {changed} agent(s).", messages.SUCCESS)

    @admin.action(description="Resume selected agents", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        changed = agents_set_paused(agents=queryset, paused=False, user=request.user)
        self.message_user(request, f"Resumed {changed} agent(s).", messages.SUCCESS)

    @admin.action(description="Reset API token (shown once)", permissions=["change"])
    def reset_token(self, request: HttpRequest, queryset: QuerySet[Agent]) -> HttpResponse:
        # The new tokens are rendered into this one response and stored nowhere
        # (not in a message, which would sit in a cookie or the session).
        issued = [
            (agent, agent_token_reset(agent=agent, user=request.user))
            for agent in queryset.order_by("name")
        ]
        response = TemplateResponse(
            request,
            "admin/core/agent/tokens.html",
            {
                **self.admin_site.each_context(request),
                "title": "New API tokens",
                "issued": issued,
                "opts": self.model._meta,
            },
        )
        response["Cache-Control"] = "no-store"
        return response


class ResourceForm(forms.ModelForm):
    class Meta:
        model = Resource
        fields = ["name", "team", "value", "requires_approval"]
        widgets = {"value": PrettyJSONWidget(attrs={"rows": 10, "cols": 90})}


@admin.register(Resource)
class ResourceAdmin(admin.ModelAdmin):
    form = ResourceForm
    list_display = ["name", "team", "version", "fence", "requires_approval", "updated_at"]
    list_filter = ["team", "requires_approval"]
    search_fields = ["name"]
    list_select_related = ["team"]

    def get_readonly_fields(self, request: HttpRequest, obj: Resource | None = None) -> list[str]:
        # After creation the value changes only through versioned, fenced writes.
        base = ["version", "fence", "created_at", "updated_at"]
        return [*base, "value"] if obj is not None else base


@admin.register(ResourceVersion)
class ResourceVersionAdmin(ReadOnlyAdmin):
    list_display = ["resource", "version", "agent", "user", "fence", "created_at"]
    list_filter = ["resource"]
    search_fields = ["resource__name", "agent__name"]
    list_select_related = ["resource", "agent", "user"]


@admin.register(Lock)
class LockAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "resource",
        "agent",
        "mode",
        "token",
        "acquired_at",
        "expires_at",
        "released_at",
        "end",
    ]
    list_filter = ["mode", "end", ("released_at", admin.EmptyFieldListFilter)]
    search_fields = ["resource__name", "agent__name"]
    list_select_related = ["resource", "agent"]
    date_hierarchy = "acquired_at"


@admin.register(LockRequest)
class LockRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "resource", "agent", "mode", "status", "requested_at", "resolved_at"]
    list_filter = ["status", "mode"]
    search_fields = ["resource__name", "agent__name", "reason"]
    list_select_related = ["resource", "agent"]


class StepInline(admin.TabularInline):
    model = Step
    fields = ["agent", "number", "status", "attempts", "started_at", "finished_at", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    """Runs are read-only here: a run starts through the runtime's ``run_start`` (it
    enqueues the first steps), so "Add run" opens the dashboard's New run form, and
    pausing or cancelling is on the run's dashboard page."""

    list_display = ["id", "team", "status", "paused", "created_by", "created_at", "finished_at"]
    list_filter = ["status", "paused", "team"]
    search_fields = ["goal", "team__name"]
    inlines = [StepInline]
    list_select_related = ["team", "created_by"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin.ModelAdmin.has_add_permission(self, request)

    def add_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return redirect("dashboard:run-new")


@admin.register(Step)
class StepAdmin(ReadOnlyAdmin):
    list_display = ["id", "run", "agent", "number", "status", "attempts", "started_at"]
    list_filter = ["status"]
    search_fields = ["agent__name", "error", "job_id"]
    list_select_related = ["run", "agent"]


@admin.register(Conflict)
class ConflictAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "status", "team", "created_at", "resolved_by", "resolved_at"]
    list_filter = ["kind", "status", "team"]
    search_fields = ["detail", "resolution", "agents__name", "resources__name"]
    list_select_related = ["team", "resolved_by"]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["id", "resource", "agent", "reason", "status", "decided_by", "created_at"]
    list_filter = ["status", "reason", "team"]
    search_fields = ["resource__name", "agent__name", "note", "decision_note"]
    list_select_related = ["resource", "agent", "decided_by"]


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "actor", "team", "subject_type", "subject_id", "created_at"]
    list_filter = ["kind", "team"]
    search_fields = ["kind", "actor", "=subject_id"]
    list_select_related = ["team"]
    date_hierarchy = "created_at"


@admin.register(Switchboard)
class SwitchboardAdmin(ReadOnlyAdmin):
    list_display = ["id", "paused", "updated_at"]
