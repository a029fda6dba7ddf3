"""Forms: every operator action and every filter is validated here first.

Bad input becomes form errors (a 400 with the errors as JSON, or the page with
the errors shown), never an exception in a service.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from orchestrator.core.deadlocks import BreakAction
from orchestrator.core.models import (
    NAME_MAX_LENGTH,
    TEAM_SEPARATOR,
    Agent,
    ConflictKind,
    ConflictStatus,
    RuleAction,
    Team,
)

NOTE_MAX = 5000
EDITED_VALUE_MAX = 1_000_000
GOAL_MAX = 5000
RUN_STEPS_MAX = 1_000_000


class PauseForm(forms.Form):
    """``paused=1`` pauses, ``paused=0`` resumes."""

    paused = forms.TypedChoiceField(
        choices=[("1", "pause"), ("0", "resume")], coerce=lambda value: value == "1"
    )


class ForceReleaseForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)


class BreakDeadlockForm(forms.Form):
    victim = forms.IntegerField(min_value=1, max_value=2**63 - 1)
    action = forms.ChoiceField(
        choices=[
            (BreakAction.ABORT, "abort (cancel its wait and revoke its locks in the cycle)"),
            (BreakAction.CANCEL_WAIT, "cancel its wait only"),
            (BreakAction.REVOKE, "revoke its locks only"),
        ],
        initial=BreakAction.ABORT,
    )


class DecisionForm(forms.Form):
    """Approve, reject, or edit and approve (``value`` is the edited value as JSON)."""

    APPROVE, REJECT, EDIT = "approve", "reject", "edit"

    decision = forms.ChoiceField(
        choices=[(APPROVE, "approve"), (REJECT, "reject"), (EDIT, "edit and approve")]
    )
    value = forms.CharField(
        required=False,
        strip=False,
        max_length=EDITED_VALUE_MAX,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text="The value to write instead, as JSON (text in double quotes).",
    )
    note = forms.CharField(required=False, max_length=NOTE_MAX)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("decision") == self.EDIT:
            raw = cleaned.get("value", "")
            if not raw.strip():
                self.add_error("value", "Give the value to write (JSON).")
            else:
                try:
                    cleaned["parsed_value"] = json.loads(raw)
                except ValueError as exc:
                    self.add_error("value", f"This is not valid JSON: {exc}")
        return cleaned


# How long a standing rule made from an approval lasts; "never": until revoked.
RULE_DURATIONS = {
    "1h": timedelta(hours=1),
    "8h": timedelta(hours=8),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "never": None,
}
RULE_USES_MAX = 1_000_000


class RuleFromApprovalForm(forms.Form):
    """A standing rule made from an approval: always approve, or always reject, the
    writes of its agent (or of any agent) to its resource, for a while or a number of
    writes. The defaults are this agent, this resource, for 24 hours: a rule that
    outlives the operator's attention is the risk; no end and no limit is allowed,
    and the page says what it means."""

    THIS_AGENT, ANY_AGENT = "this", "any"

    action = forms.ChoiceField(choices=RuleAction.choices)
    agents = forms.ChoiceField(
        choices=[(THIS_AGENT, "this agent"), (ANY_AGENT, "any agent of the team")],
        initial=THIS_AGENT,
        widget=forms.RadioSelect,
    )
    until = forms.ChoiceField(
        choices=[
            ("1h", "for 1 hour"),
            ("8h", "for 8 hours"),
            ("24h", "for 24 hours"),
            ("7d", "for 7 days"),
            ("30d", "for 30 days"),
            ("never", "no end date (until revoked)"),
        ],
        initial="24h",
    )
    max_uses = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=RULE_USES_MAX,
        label="For this many writes",
        help_text="Empty: no limit on the number of writes.",
    )
    reason = forms.CharField(
        required=False,
        max_length=NOTE_MAX,
        help_text="Told to the agent whose write the rule decides.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        cleaned["any_agent"] = cleaned.get("agents") == self.ANY_AGENT
        duration = RULE_DURATIONS.get(cleaned.get("until") or "never")
        expires: datetime | None = None if duration is None else timezone.now() + duration
        cleaned["expires_at"] = expires
        return cleaned


class RunStartForm(forms.Form):
    """A new run of a team toward a goal. No agent ticked means every agent of the team."""

    team = forms.ModelChoiceField(queryset=Team.objects.order_by("name"), empty_label=None)
    goal = forms.CharField(
        max_length=GOAL_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What the agents work toward; each agent sees it at every step.",
    )
    max_steps = forms.IntegerField(
        label="Step limit",
        min_value=1,
        max_value=RUN_STEPS_MAX,
        initial=50,
        help_text="Steps per agent; an agent that reaches it fails. An agent's own max_steps "
        "(its backend config) applies when smaller.",
    )
    agents = forms.ModelMultipleChoiceField(
        queryset=Agent.objects.order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to run every agent of the team.",
    )
    seed = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=2**63 - 1,
        help_text="Seeds scripted agents' random choices, to replay a run; empty for none.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        team, chosen = cleaned.get("team"), cleaned.get("agents")
        if team is None or chosen is None:
            return cleaned
        strangers = [agent.name for agent in chosen if agent.team_id != team.pk]
        if strangers:
            self.add_error(
                "agents", f"Not agents of team {team.name}: {', '.join(sorted(strangers))}."
            )
        elif not chosen and not team.agents.exists():
            self.add_error(
                "team", f"Team {team.name} has no agents yet: add them in the admin first."
            )
        return cleaned


class AgentField(forms.CharField):
    """An agent by its name (or its id, as older links give it): a text box, not a list
    of every agent (a thousand options in every filter form)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", NAME_MAX_LENGTH)
        kwargs.setdefault("widget", forms.TextInput(attrs={"placeholder": "agent name"}))
        super().__init__(**kwargs)

    def clean(self, value: Any) -> Agent | None:
        text = super().clean(value)
        if not text:
            return None
        agent = Agent.objects.filter(name=text).first()
        if agent is None and text.isdigit() and int(text) < 2**63:
            agent = Agent.objects.filter(pk=int(text)).first()
        if agent is None:
            raise forms.ValidationError("No agent has that name.", code="invalid_choice")
        return agent


class ConflictFilterForm(forms.Form):
    kind = forms.ChoiceField(choices=[("", "any kind"), *ConflictKind.choices], required=False)
    status = forms.ChoiceField(
        choices=[("", "any status"), *ConflictStatus.choices], required=False
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.order_by("name"), required=False, empty_label="any team"
    )
    agent = AgentField(required=False)


class TimelineFilterForm(forms.Form):
    kind = forms.CharField(
        required=False,
        max_length=64,
        help_text='A prefix: "lock." is every lock event.',
        widget=forms.TextInput(attrs={"placeholder": "lock.", "list": "event-kinds"}),
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.order_by("name"), required=False, empty_label="any team"
    )
    agent = AgentField(required=False)
    actor = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "user:alice"}),
    )


# Seconds shown by the Gantt chart; "fit" spans the holds of the last day, up to now.
WINDOWS = {"fit": None, "10m": 600, "1h": 3600, "24h": 86400}


class GanttForm(forms.Form):
    # team::name, or a name only one team has (timeline.resource_by_name).
    resource = forms.CharField(
        required=False,
        max_length=2 * NAME_MAX_LENGTH + len(TEAM_SEPARATOR),
        widget=forms.TextInput(attrs={"list": "resource-names"}),
    )
    window = forms.ChoiceField(
        choices=[
            ("fit", "fit the holds"),
            ("10m", "last 10 minutes"),
            ("1h", "last hour"),
            ("24h", "last 24 hours"),
        ],
        required=False,
        initial="fit",
    )


BOARD_VIEWS = ("nav", "overview", "resources", "graph")
BOARD_PAGE_SIZE = 50
BOARD_PAGE_SIZE_MAX = 100
BOARD_PAGE_MAX = 1_000_000
AGENT_STATUSES = ("running", "idle", "waiting_lock", "waiting_human", "paused", "failed", "done")


class BoardViewForm(forms.Form):
    """What one live page shows (selectors/views.py): the page, its filters and its page
    of rows. From the WebSocket's query string or a browser's snapshot message."""

    view = forms.ChoiceField(choices=[(name, name) for name in BOARD_VIEWS])
    q = forms.CharField(max_length=NAME_MAX_LENGTH, required=False, strip=True)
    team = forms.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    agent = forms.CharField(max_length=NAME_MAX_LENGTH, required=False, strip=True)
    status = forms.ChoiceField(
        choices=[("", "all"), *((s, s) for s in AGENT_STATUSES)], required=False
    )
    contested = forms.TypedChoiceField(
        choices=[("", "no"), ("0", "no"), ("1", "yes")],
        coerce=lambda value: value == "1",
        required=False,
        empty_value=False,
    )
    page = forms.IntegerField(min_value=1, max_value=BOARD_PAGE_MAX, required=False)
    size = forms.IntegerField(min_value=1, max_value=BOARD_PAGE_SIZE_MAX, required=False)
