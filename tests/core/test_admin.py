"""The admin: every model renders for a superuser and refuses anonymous users."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from orchestrator.core.models import Agent, Event, Team
from orchestrator.core.tokens import agent_by_token, token_hash
from tests import factories

pytestmark = pytest.mark.django_db

CORE_MODELS = [m for m in admin.site._registry if m._meta.app_label == "core"]


def test_every_core_model_is_registered() -> None:
    from django.apps import apps

    assert set(apps.get_app_config("core").get_models()) == set(CORE_MODELS)


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(factories.superuser())
    return client


@pytest.mark.parametrize("model", CORE_MODELS, ids=lambda m: m._meta.model_name)
def test_changelist_renders_for_superuser_and_refuses_anonymous(
    model, operator_client: Client
) -> None:
    url = reverse(f"admin:core_{model._meta.model_name}_changelist")
    assert operator_client.get(url).status_code == 200
    assert operator_client.get(url, {"q": "x"}).status_code == 200
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("admin:login"))


def test_change_pages_render_with_data(operator_client: Client) -> None:
    from orchestrator.core.control import agents_set_paused

    team = factories.team()
    agent = factories.agent(team_=team)
    res = factories.resource(team=team, value={"a": 1})
    agents_set_paused(agents=[agent], paused=True)
    event = Event.objects.latest("id")
    for obj in (team, agent, res, event):
        url = reverse(f"admin:core_{obj._meta.model_name}_change", args=[obj.pk])
        assert operator_client.get(url).status_code == 200, url
    for name in ("team", "agent", "resource"):
        assert operator_client.get(reverse(f"admin:core_{name}_add")).status_code == 200


def test_protocol_tables_are_read_only(operator_client: Client) -> None:
    for name in ("lock", "lockrequest", "event", "resourceversion"):
        assert operator_client.get(reverse(f"admin:core_{name}_add")).status_code == 403


def test_admin_index_links_to_rq_queues(operator_client: Client) -> None:
    page = operator_client.get(reverse("admin:index")).content.decode()
    assert "/admin/django_rq/dashboard/" in page
    assert operator_client.get("/admin/django_rq/dashboard/").status_code == 200


def test_agent_form_validates_backend_config(operator_client: Client) -> None:
    team = factories.team()
    url = reverse("admin:core_agent_add")
    bad = operator_client.post(
        url,
        {
            "name": "m1",
            "team": team.pk,
            "backend": "openai",
            "config": '{"model": "x", "api_key_env": "sk-live-123"}',
        },
    )
    assert bad.status_code == 200
    assert "NAME of an environment variable" in bad.content.decode()
    assert not Agent.objects.filter(name="m1").exists()

    not_json = operator_client.post(
        url, {"name": "m1", "team": team.pk, "backend": "scripted", "config": "{nope"}
    )
    assert not_json.status_code == 200
    assert not Agent.objects.filter(name="m1").exists()

    good = operator_client.post(
        url,
        {
            "name": "m1",
            "team": team.pk,
            "backend": "openai",
            "config": '{"model": "llama3.1", "base_url": "http://127.0.0.1:11434/v1"}',
        },
    )
    assert good.status_code == 302
    created = Agent.objects.get(name="m1")
    assert created.config["api_key_env"] == "OPENAI_API_KEY"
    assert created.config["temperature"] == 0.2


def test_pause_and_resume_actions_leave_events_naming_the_user(operator_client: Client) -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    url = reverse("admin:core_agent_changelist")
    operator_client.post(url, {"action": "pause", "_selected_action": [agent.pk]})
    agent.refresh_from_db()
    assert agent.paused is True
    operator_client.post(url, {"action": "resume", "_selected_action": [agent.pk]})
    agent.refresh_from_db()
    assert agent.paused is False
    kinds = list(Event.objects.filter(agent=agent).values_list("kind", "actor"))
    assert kinds == [("agent.paused", "user:root"), ("agent.resumed", "user:root")]

    operator_client.post(
        reverse("admin:core_team_changelist"), {"action": "pause", "_selected_action": [team.pk]}
    )
    assert Team.objects.get(pk=team.pk).paused is True


def test_reset_token_shows_it_once_and_stores_only_its_hash(operator_client: Client) -> None:
    agent = factories.agent()
    response = operator_client.post(
        reverse("admin:core_agent_changelist"),
        {"action": "reset_token", "_selected_action": [agent.pk]},
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = re.search(r'class="api-token">([^<]+)<', response.content.decode()).group(1)
    agent.refresh_from_db()
    assert agent.token_hash == token_hash(token)
    assert token not in str(Agent.objects.filter(pk=agent.pk).values().get())
    assert agent_by_token(token) == agent
    assert agent_by_token(token + "x") is None
    # Nothing about the token lingers for the next page.
    follow = operator_client.get(reverse("admin:core_agent_changelist")).content.decode()
    assert token not in follow
