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
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from orchestrator.core.admin_policies import ApprovalVoteInline  # and the policies' admin
from orchestrator.core.control import teams_set_paused
from orchestrator.core.deliveries import new_secret
from orchestrator.core.models import (
    Approval,
    Conflict,
    Delivery,
    Event,
    Incident,
    IncidentKind,
    Lock,
    LockRequest,
    LockSet,
    Resource,
    ResourceGrant,
    ResourceVersion,
    Run,
    Step,
    Switchboard,
    Team,
    Webhook,
)

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


class WebhookForm(forms.ModelForm):
    # A receiver's address is typed in full: no scheme guessed.
    url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        help_text="http:// or https://. Redirects are not followed.",
    )
    kinds = forms.MultipleChoiceField(
        choices=IncidentKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The incidents it is told about; none ticked: all of them.",
    )

    class Meta:
        model = Webhook
        fields = ["url", "audience", "kinds", "active", "note"]

    def save(self, commit: bool = True) -> Webhook:
        webhook = super().save(commit=False)
        self.created_secret = ""
        if not webhook.secret:
            webhook.secret = self.created_secret = new_secret()
        if commit:
            webhook.save()
        return webhook


def _show_secret(request: HttpRequest, webhook: Webhook, secret: str) -> None:
    """Show a webhook's new secret, this once (it is masked everywhere afterwards)."""
    messages.warning(
        request,
        f"The signing secret of the webhook to {webhook.url} is {secret} . Copy it now: "
        "it will not be shown again (rotate it to get a new one).",
    )


def _masked(webhook: Webhook) -> str:
    return f"{webhook.secret[:6]}…{webhook.secret[-4:]}" if webhook.secret else "(when saved)"


class WebhookInline(admin.StackedInline):
    """A team's webhooks (docs/notifications.md); the secret is shown once, when made."""

    model = Webhook
    form = WebhookForm
    fields = ["url", "audience", "kinds", "active", "note", "secret_hint"]
    readonly_fields = ["secret_hint"]
    extra = 0

    @admin.display(description="secret")
    def secret_hint(self, obj: Webhook) -> str:
        return _masked(obj)


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
    filter_horizontal = ["operators"]
    inlines = [WebhookInline]
    actions = ["pause", "resume"]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for each in formset.forms:
            if getattr(each, "created_secret", ""):
                _show_secret(request, each.instance, each.created_secret)

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
        # After creation the value changes only through versioned, fenced writes, and
        # the owner stays (agents name the resource within its team): share it instead.
        base = ["version", "fence", "created_at", "updated_at"]
        return [*base, "value", "team"] if obj is not None else base


@admin.register(ResourceGrant)
class ResourceGrantAdmin(admin.ModelAdmin):
    """A team's resource, or its resources under a prefix, shared with another team
    (core/tenancy.py): its agents name them ``owner::name``."""

    list_display = ["owner", "team", "resource", "prefix", "access", "created_at"]
    list_filter = ["access", "owner", "team"]
    search_fields = ["owner__name", "team__name", "resource__name", "prefix"]
    list_select_related = ["owner", "team", "resource"]
    autocomplete_fields = ["resource"]


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


@admin.register(LockSet)
class LockSetAdmin(ReadOnlyAdmin):
    list_display = ["id", "agent", "mode", "status", "requested_at", "resolved_at"]
    list_filter = ["status", "mode"]
    search_fields = ["resources__name", "agent__name", "reason"]
    list_select_related = ["agent"]


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
    inlines = [ApprovalVoteInline]


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


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["url", "team", "audience", "active", "secret_hint", "created_at"]
    list_filter = ["active", "audience", "team"]
    search_fields = ["url", "team__name", "note"]
    list_select_related = ["team"]
    fields = ["team", "url", "audience", "kinds", "active", "note", "secret_hint"]
    readonly_fields = ["secret_hint"]
    actions = ["rotate_secret"]

    @admin.display(description="secret")
    def secret_hint(self, obj: Webhook) -> str:
        return _masked(obj)

    def save_model(self, request: HttpRequest, obj: Webhook, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if getattr(form, "created_secret", ""):
            _show_secret(request, obj, form.created_secret)

    @admin.action(description="Rotate the signing secret", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for webhook in queryset:
            webhook.secret = new_secret()
            webhook.save(update_fields=["secret"])
            _show_secret(request, webhook, webhook.secret)


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = [
        "created_at",
        "channel",
        "recipients",
        "attempt",
        "outcome",
        "status_code",
        "error",
        "response_excerpt",
        "next_retry_at",
    ]
    readonly_fields = fields
    ordering = ["created_at", "pk"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    """What operators were told about, once each, with every delivery attempt."""

    list_display = ["id", "kind", "team", "title", "created_at"]
    list_filter = ["kind", "team"]
    search_fields = ["title", "detail", "key"]
    list_select_related = ["team"]
    inlines = [DeliveryInline]
    date_hierarchy = "created_at"


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    """The delivery history: one row per attempt, with its status code."""

    list_display = [
        "id",
        "incident",
        "channel",
        "recipients",
        "attempt",
        "outcome",
        "status_code",
        "created_at",
        "next_retry_at",
    ]
    list_filter = ["outcome", "channel", "status_code"]
    search_fields = ["recipients", "error", "=incident__id"]
    list_select_related = ["incident"]
    date_hierarchy = "created_at"
