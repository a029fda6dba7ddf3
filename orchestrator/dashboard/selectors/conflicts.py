"""The conflicts list, filtered by kind, status, team and agent."""

from __future__ import annotations

from django.db.models import QuerySet

from orchestrator.core.models import Agent, Conflict, Team


def conflicts_filtered(
    *,
    kind: str | None = None,
    status: str | None = None,
    team: Team | None = None,
    agent: Agent | None = None,
) -> QuerySet[Conflict]:
    """Conflicts newest first, with their team, agents, resources and resolver loaded."""
    queryset = Conflict.objects.all()
    if kind:
        queryset = queryset.filter(kind=kind)
    if status:
        queryset = queryset.filter(status=status)
    if team is not None:
        queryset = queryset.filter(team=team)
    if agent is not None:
        queryset = queryset.filter(agents=agent)
    return (
        queryset.select_related("team", "resolved_by")
        .prefetch_related("agents", "resources")
        .order_by("-created_at", "-pk")
    )
