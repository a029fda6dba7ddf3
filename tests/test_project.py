"""The project is consistent: checks pass, migrations match the models."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command


def test_system_checks_pass() -> None:
    out = StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()


@pytest.mark.django_db
def test_migrations_match_models() -> None:
    # Raises SystemExit(1) if a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_daphne_is_first_and_asgi_routes_websockets() -> None:
    from channels.routing import ProtocolTypeRouter
    from django.conf import settings

    from orchestrator.asgi import application

    assert settings.INSTALLED_APPS[0] == "daphne"
    assert isinstance(application, ProtocolTypeRouter)
    assert set(application.application_mapping) == {"http", "websocket"}


def test_rq_commits_on_db_commit_and_queues_use_redis_url() -> None:
    from django.conf import settings

    assert settings.RQ["COMMIT_MODE"] == "on_db_commit"
    assert settings.RQ_QUEUES["steps"]["URL"] == settings.REDIS_URL
    assert settings.RQ_QUEUES["default"]["URL"] == settings.REDIS_URL
    assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] == [settings.REDIS_URL]


def test_the_agents_app_registers_the_runtimes_wake_up_handler() -> None:
    from django.apps import apps

    from agents import steps
    from orchestrator.core import wakeups

    assert apps.get_app_config("agents").name == "agents"
    assert steps._wake in wakeups._handlers


def test_each_command_lives_in_the_app_whose_code_it_drives() -> None:
    from django.core.management import get_commands

    commands = get_commands()
    for name in ("scenario", "demo", "check_run", "monitor"):
        assert commands[name] == "agents", name
    assert commands["operator_account"] == "orchestrator.dashboard"
    assert commands["agent_token"] == "orchestrator.core"


def test_the_layers_hold() -> None:
    """The import-linter contracts of pyproject.toml (make test also runs lint-imports)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout
