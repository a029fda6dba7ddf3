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
