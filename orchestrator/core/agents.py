"""Agent and team records (configuration lives in the admin; this is for scripts)."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from orchestrator.core.events import event_emit, service
from orchestrator.core.models import Agent, Team
from orchestrator.core.operations import CreateResource, checked


@service
def agent_ensure(*, name: str, team_name: str = "default") -> tuple[Agent, bool]:
    """The agent called ``name``, created (with its team if needed) when missing."""
    # Agents' and teams' names follow the rule of resources' names.
    name = checked(CreateResource, name=name)["name"]
    team_name = checked(CreateResource, name=team_name)["name"]
    agent = Agent.objects.select_related("team").filter(name=name).first()
    if agent is not None:
        return agent, False
    team, team_created = Team.objects.get_or_create(name=team_name)
    if team_created:
        event_emit("team.created", team=team, actor="cli", subject=team)
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                name=name,
                team=team,
                config={"script": [{"tool": "finish", "args": {}}]},
            )
    except IntegrityError:  # created concurrently
        return Agent.objects.select_related("team").get(name=name), False
    event_emit("agent.created", agent=agent, actor="cli", subject=agent)
    return agent, True
