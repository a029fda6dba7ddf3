"""`python manage.py agent_token NAME [--team TEAM]`: a fresh API token, alone on the last line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.core.agents import agent_ensure
from orchestrator.core.errors import ProtocolError
from orchestrator.core.tokens import agent_token_reset


class Command(BaseCommand):
    help = "Create the agent if needed and print a new API token (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--team", default="default", help="team of a new agent")

    def handle(self, *args: Any, name: str, team: str, **options: Any) -> None:
        try:
            agent, created = agent_ensure(name=name, team_name=team)
        except ProtocolError as exc:
            raise CommandError(exc.detail) from exc
        if created:
            self.stderr.write(f"created agent {agent.name} in team {agent.team.name}")
        elif agent.team.name != team and team != "default":
            self.stderr.write(f"agent {agent.name} already exists in team {agent.team.name}")
        token = agent_token_reset(agent=agent, actor="cli")
        self.stdout.write(token)
