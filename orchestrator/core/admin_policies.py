"""The admin of approval policies (core/policies.py): policies are edited here; standing
rules are made here (or from an approval on the dashboard) and revoked, never edited
in place, so each one's Events (``rule.created``, each use, ``rule.revoked``) say what
it decided; operators' votes under the two-person rule are shown on their approval.

Imported by core/admin.py, which adds :class:`ApprovalVoteInline` to the Approval admin.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from orchestrator.core.models import ApprovalPolicy, ApprovalVote, StandingRule
from orchestrator.core.policies import rule_create, rule_describe, rule_revoke


def _never(self: Any, request: HttpRequest, obj: Any = None) -> bool:
    return False


class ApprovalPolicyForm(forms.ModelForm):
    """The model's clean() checks the scope and the escalation; these, the numbers, with
    messages an operator reads (the database constraints would say only their names)."""

    class Meta:
        model = ApprovalPolicy
        fields = [
            "team",
            "resource",
            "prefix",
            "deadline_seconds",
            "on_deadline",
            "escalate_to",
            "escalation_seconds",
            "required_approvals",
            "note",
        ]

    def clean_deadline_seconds(self) -> int | None:
        seconds = self.cleaned_data.get("deadline_seconds")
        if seconds is not None and seconds < 1:
            raise forms.ValidationError("At least 1 second; leave empty for no deadline.")
        return seconds

    def clean_escalation_seconds(self) -> int | None:
        seconds = self.cleaned_data.get("escalation_seconds")
        if seconds is not None and seconds < 1:
            raise forms.ValidationError("At least 1 second; leave empty to extend by the deadline.")
        return seconds

    def clean_required_approvals(self) -> int:
        count = self.cleaned_data.get("required_approvals")
        if count is None or not 1 <= count <= 10:
            raise forms.ValidationError("Between 1 and 10 operators (2: the two-person rule).")
        return count


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    """A policy's terms apply to the approvals opened after it is saved."""

    form = ApprovalPolicyForm
    list_display = [
        "id",
        "team",
        "applies_to",
        "deadline_seconds",
        "on_deadline",
        "escalate_to",
        "escalation_seconds",
        "required_approvals",
    ]
    list_filter = ["team", "on_deadline", "required_approvals"]
    search_fields = ["team__name", "prefix", "resource__name", "note"]
    list_select_related = ["team", "resource", "escalate_to"]
    autocomplete_fields = ["resource"]
    fieldsets = [
        (None, {"fields": ["team", "resource", "prefix"]}),
        (
            "Deadline",
            {"fields": ["deadline_seconds", "on_deadline", "escalate_to", "escalation_seconds"]},
        ),
        ("Two-person rule", {"fields": ["required_approvals"]}),
        (None, {"fields": ["note"]}),
    ]

    @admin.display(description="applies to")
    def applies_to(self, policy: ApprovalPolicy) -> str:
        if policy.resource_id:
            return policy.resource.name
        return f"{policy.prefix}*" if policy.prefix else "all the team's resources"


class StandingRuleForm(forms.ModelForm):
    class Meta:
        model = StandingRule
        fields = [
            "team",
            "action",
            "agent",
            "resource",
            "prefix",
            "expires_at",
            "max_uses",
            "reason",
        ]

    def clean_max_uses(self) -> int | None:
        uses = self.cleaned_data.get("max_uses")
        if uses is not None and uses < 1:
            raise forms.ValidationError("At least 1 write; leave empty for no limit.")
        return uses


@admin.register(StandingRule)
class StandingRuleAdmin(admin.ModelAdmin):
    """Rules are added through ``rule_create`` (its ``rule.created`` Event names the
    user, who is the rule's ``created_by``), revoked through ``rule_revoke`` (the
    action), and never edited or deleted: the approvals they decided point to them."""

    form = StandingRuleForm
    list_display = [
        "id",
        "described",
        "team",
        "action",
        "uses",
        "max_uses",
        "expires_at",
        "active",
        "created_by",
        "from_approval",
        "created_at",
    ]
    list_filter = ["active", "action", "team"]
    search_fields = ["agent__name", "resource__name", "prefix", "reason"]
    list_select_related = ["team", "agent", "resource", "created_by"]
    autocomplete_fields = ["agent", "resource"]
    readonly_fields = ["uses", "active", "created_by", "from_approval", "created_at"]
    actions = ["revoke"]
    has_delete_permission = _never

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewing a rule, yes; editing one, no (the list's revoke action needs "change").
        return obj is None and super().has_change_permission(request)

    @admin.display(description="rule")
    def described(self, rule: StandingRule) -> str:
        return rule_describe(rule)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The admin wraps a form's POST in a transaction; adding a rule is the service
        # rule_create, a durable transaction of its own (its row and its Event
        # together), and existing rules are never saved here: so no outer one.
        return self._changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: StandingRule, form: Any, change: bool) -> None:
        # Only ever an addition: has_change_permission refuses a POST to a rule's page.
        rule = rule_create(
            user=request.user,
            action=obj.action,
            team_id=obj.team_id,
            agent_id=obj.agent_id,
            resource_id=obj.resource_id,
            prefix=obj.prefix,
            expires_at=obj.expires_at,
            max_uses=obj.max_uses,
            reason=obj.reason,
        )
        # The admin goes on with ``obj`` (its log entry, the redirect): make it the row.
        for field in StandingRule._meta.concrete_fields:
            setattr(obj, field.attname, getattr(rule, field.attname))
        obj._state.adding, obj._state.db = False, rule._state.db

    @admin.action(description="Revoke the selected rules", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[StandingRule]) -> None:
        revoked = 0
        for rule in queryset.filter(active=True):
            rule_revoke(rule_id=rule.pk, user=request.user)
            revoked += 1
        messages.success(request, f"Revoked {revoked} rule{'s'[: revoked != 1]}.")


class ApprovalVoteInline(admin.TabularInline):
    """Each operator's decision on an approval that needs several (read-only)."""

    model = ApprovalVote
    fields = ["user", "decision", "value", "edited", "counted", "note", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    has_add_permission = has_change_permission = has_delete_permission = _never


@admin.register(ApprovalVote)
class ApprovalVoteAdmin(admin.ModelAdmin):
    list_display = ["id", "approval", "user", "decision", "edited", "counted", "created_at"]
    list_filter = ["decision", "counted"]
    search_fields = ["user__username", "=approval__id"]
    list_select_related = ["approval", "user"]
    has_add_permission = has_change_permission = has_delete_permission = _never
