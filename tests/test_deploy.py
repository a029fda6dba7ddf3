"""The production settings pass Django's deployment checklist."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.databases import database_url

ROOT = Path(__file__).resolve().parent.parent


def production_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    return {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DEBUG": "0",
        "HTTPS": "1",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "orchestrator.example.com",
        "DATABASE_URL": database_url(db),
        "REDIS_URL": settings.REDIS_URL,
    }


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"), [("HTTPS", "maybe"), ("HSTS_SECONDS", "-1"), ("HSTS_SECONDS", "a")]
)
def test_a_bad_security_setting_stops_the_start(variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT, env={**production_env(), variable: value}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert variable in result.stderr
