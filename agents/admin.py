"""The admin of agents: their backend config is validated as it is saved, with its
backend's pydantic model (agents/config.py): each refusal is a form error that
names the config's key, and nothing is saved. Operators pause, resume and reset
their API tokens from the list. Registered by the agents app, which owns the
backends and their configs."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from pydantic import ValidationError

from agents.config import BACKEND_CONFIGS, backend_config, config_dict, config_messages
from orchestrator.core.admin import PrettyJSONWidget
from orchestrator.core.control import agents_set_paused
from orchestrator.core.models import Agent
from orchestrator.core.tokens import agent_token_reset


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
                cleaned["config"] = config_dict(backend_config(backend, cleaned["config"]))
            except ValidationError as exc:  # first: pydantic's ValidationError is a ValueError
                self.add_error("config", config_messages(exc, BACKEND_CONFIGS[backend]))
            except ValueError as exc:  # an unknown backend (the field's choices refuse it)
                self.add_error("backend", str(exc))
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
