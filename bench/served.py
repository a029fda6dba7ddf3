"""What the benchmarks that time one daphne process share: the server's environment on
a bench database of its own, and one agent with a token and a resource in it."""

from __future__ import annotations

import os
from typing import Any

from locks import bench_database_url


def environment(bench_db: str, redis_url: str) -> dict[str, str]:
    """The environment of a daphne serving orchestrator.asgi on the database ``bench_db``
    (on the server of DATABASE_URL) and Redis ``redis_url``."""
    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(bench_db),
        "REDIS_URL": redis_url,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "PYTHONUNBUFFERED": "1",
    }


def bench_agent(bench_db: str, redis_url: str, resource: str, value: Any) -> str:
    """Set up Django in this process on the bench database and create a team, its agent
    and ``resource`` holding ``value``; the agent's token."""
    os.environ.update(environment(bench_db, redis_url))
    import django

    django.setup()
    from orchestrator.core.models import Agent, Team
    from orchestrator.core.resources import resource_create
    from orchestrator.core.tokens import agent_token_reset

    team = Team.objects.create(name="bench", default_lease_ttl=30)
    agent = Agent.objects.create(name="bench-agent", team=team)
    resource_create(name=resource, value=value, team=team)
    return agent_token_reset(agent=agent)
