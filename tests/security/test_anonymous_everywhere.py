"""Every URL of the project refuses anonymous callers, found by walking the URL
configuration, so a page or endpoint added later is covered without a new test."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

# What an anonymous caller may open: the way in, liveness, and Swagger UI's assets.
PUBLIC = [r"^/login/$", r"^/healthz$", r"^/admin/login/$", r"^/static/"]
REFUSALS = {301, 302, 401, 403, 404, 405}


def sample(pattern: str) -> str:
    """A concrete path for a route or regex: every parameter becomes 1."""
    path = re.sub(r"<(?:\w+:)?\w+>", "1", pattern)  # route converters
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "1", path)  # named regex groups
    path = re.sub(r"\([^)]*\)", "1", path)  # other groups
    path = path.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
    return path.replace("?", "").replace("*", "").replace("+", "")


def every_path(patterns=None, prefix: str = "/") -> list[str]:
    found: list[str] = []
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        here = prefix + sample(str(entry.pattern))
        if isinstance(entry, URLResolver):
            found += every_path(entry.url_patterns, here)
        elif isinstance(entry, URLPattern):
            found.append(here)
    return sorted(set(found))


def public(path: str) -> bool:
    return any(re.search(rule, path) for rule in PUBLIC)


def test_no_url_answers_an_anonymous_get_or_post() -> None:
    paths = [path for path in every_path() if not public(path)]
    assert len(paths) > 60  # the walk really found the admin, the API and the dashboard
    assert any(p.startswith("/api/v1/") for p in paths)
    assert any(p.startswith("/admin/core/") for p in paths)
    client = Client()
    for path in paths:
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            assert response.status_code in REFUSALS, (method, path, response.status_code)
            if response.status_code in (301, 302):
                # Wherever it leads, an anonymous caller ends at a sign-in page.
                final = client.get(response["Location"], follow=True)
                last = final.redirect_chain[-1][0] if final.redirect_chain else ""
                assert "login" in response["Location"] + last, (method, path, last)


def test_the_public_urls_are_only_the_way_in() -> None:
    client = Client()
    assert client.get("/login/").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/").status_code == 302  # the dashboard itself is not public


def test_every_operator_action_needs_the_csrf_token() -> None:
    from orchestrator.core.models import Event
    from tests.dashboard import builders

    actions = [path for path in every_path() if path.startswith("/actions/")]
    assert len(actions) >= 8
    client = Client(enforce_csrf_checks=True)
    client.force_login(builders.operator())
    for path in actions:
        response = client.post(path, {"paused": "1", "decision": "approve"})
        assert response.status_code == 403, (path, response.status_code)
    assert not Event.objects.filter(user__isnull=False).exists()


def test_an_agent_token_opens_no_page_and_no_operator_action() -> None:
    """Agents authenticate to /api/v1 only: elsewhere their token is worth nothing."""
    from orchestrator.core.models import Switchboard
    from orchestrator.core.tokens import agent_token_reset
    from tests import factories

    token = agent_token_reset(agent=factories.agent())
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    paths = [p for p in every_path() if not public(p) and not p.startswith("/api/v1/")]
    assert len(paths) > 40
    for path in paths:
        for method in ("get", "post"):
            response = getattr(client, method)(path, {"paused": "1"})
            assert response.status_code in REFUSALS, (method, path, response.status_code)
    assert not Switchboard.objects.filter(paused=True).exists()
