"""The dashboard's pages and operator actions (mounted at the site root)."""

from __future__ import annotations

from django.urls import path

from orchestrator.dashboard.views import actions, pages

app_name = "dashboard"

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("resources/", pages.resources, name="resources"),
    path("graph/", pages.graph, name="graph"),
    path("approvals/", pages.approvals_view, name="approvals"),
    path("conflicts/", pages.conflicts_view, name="conflicts"),
    path("timeline/", pages.timeline_view, name="timeline"),
    path("runs/<int:run_id>/", pages.run_view, name="run"),
    path("runs/new/", actions.run_new, name="run-new"),
    # Operator actions: POST only, operators only.
    path("actions/pause-everything", actions.system_pause, name="system-pause"),
    path("actions/teams/<int:team_id>/pause", actions.team_pause, name="team-pause"),
    path("actions/agents/<int:agent_id>/pause", actions.agent_pause, name="agent-pause"),
    path("actions/runs/<int:run_id>/pause", actions.run_pause, name="run-pause"),
    path("actions/runs/<int:run_id>/cancel", actions.run_cancel_view, name="run-cancel"),
    path("actions/locks/<int:lock_id>/release", actions.lock_release, name="lock-release"),
    path(
        "actions/deadlocks/<int:conflict_id>/break",
        actions.deadlock_break_view,
        name="deadlock-break",
    ),
    path(
        "actions/approvals/<int:approval_id>/decide",
        actions.approval_decide_view,
        name="approval-decide",
    ),
    path(
        "actions/approvals/<int:approval_id>/rule",
        actions.approval_rule_create,
        name="approval-rule",
    ),
    path("actions/rules/<int:rule_id>/revoke", actions.rule_revoke_view, name="rule-revoke"),
]
