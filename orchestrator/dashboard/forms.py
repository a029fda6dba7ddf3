"""Forms: every operator action and every filter is validated here first.

Bad input becomes form errors (a 400 with the errors as JSON, or the page with
the errors shown), never an exception in a service.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms

from orchestrator.core.deadlocks import BreakAction
from orchestrator.core.models import Agent, ConflictKind, ConflictStatus, Team

NOTE_MAX = 5000
EDITED_VALUE_MAX = 1_000_000


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


class ConflictFilterForm(forms.Form):
    kind = forms.ChoiceField(choices=[("", "any kind"), *ConflictKind.choices], required=False)
    status = forms.ChoiceField(
        choices=[("", "any status"), *ConflictStatus.choices], required=False
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.order_by("name"), required=False, empty_label="any team"
    )
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.order_by("name"), required=False, empty_label="any agent"
    )


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
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.order_by("name"), required=False, empty_label="any agent"
    )
    actor = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "user:alice"}),
    )


# Seconds shown by the Gantt chart; "fit" spans the holds of the last day, up to now.
WINDOWS = {"fit": None, "10m": 600, "1h": 3600, "24h": 86400}


class GanttForm(forms.Form):
    resource = forms.CharField(
        required=False, max_length=200, widget=forms.TextInput(attrs={"list": "resource-names"})
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
