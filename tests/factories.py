"""Small builders for test data (no fixture files)."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model

from orchestrator.core.models import Agent, Resource, Run, Team

_seq = itertools.count(1)


def team(**fields: Any) -> Team:
    fields.setdefault("name", f"team-{next(_seq)}")
    return Team.objects.create(**fields)


def agent(*, team_: Team | None = None, **fields: Any) -> Agent:
    fields.setdefault("name", f"agent-{next(_seq)}")
    fields.setdefault("config", {"script": [{"tool": "finish", "args": {}}]})
    return Agent.objects.create(team=team_ or team(), **fields)


def resource(**fields: Any) -> Resource:
    fields.setdefault("name", f"resource-{next(_seq)}")
    if "team" not in fields and "team_id" not in fields:
        fields["team"] = team()
    return Resource.objects.create(**fields)


def superuser(username: str = "root") -> Any:
    return get_user_model().objects.create_superuser(username, f"{username}@example.com", "pw")


def run(*, team: Team, **fields: Any) -> Run:
    fields.setdefault("goal", "test")
    return Run.objects.create(team=team, **fields)
