"""Backend configs are pydantic models (agents/config.py): the admin refuses a bad
one with form errors that name the key, saves a good one with its defaults, and a
backend reads its config through the same model."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from agents.backends import BackendError, get_backend
from agents.backends.scripted import ScriptedBackend
from orchestrator.core.models import Agent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(factories.superuser())
    return client


def add_agent(client: Client, backend: str, config: Any) -> tuple[int, str]:
    response = client.post(
        reverse("admin:core_agent_add"),
        {
            "name": "m1",
            "team": factories.team().pk,
            "backend": backend,
            "config": config if isinstance(config, str) else json.dumps(config),
        },
    )
    return response.status_code, html.unescape(response.content.decode())


@pytest.mark.parametrize(
    ("backend", "config", "message"),
    [
        ("scripted", {}, "'script' is required: a non-empty list of tool calls."),
        ("scripted", {"script": []}, "'script' must be a non-empty list of tool calls."),
        ("scripted", {"script": [{"tool": "fly"}]},
         "script[0].tool must be one of acquire, acquire_all, read, write, release, "
         "request_approval, finish."),
        ("scripted", {"script": [{"tool": "read", "retries": 21}]},
         "script[0].retries must be a whole number from 0 to 20."),
        ("scripted", {"script": [{"tool": "read", "on_refused": 2}]},
         'script[0].on_refused must be "finish" or a number of entries to go on by, from 1 to 1'),
        ("scripted", {"script": [{"tool": "read", "on_refuse": 1}]},
         "script[0] has unknown key(s) on_refuse; allowed: tool, args, retries, on_refused."),
        ("scripted", {"script": [{"tool": "read"}], "think": [3, 1]},
         "'think' must be [min, max] seconds, from 0 to 60, in that order."),
        ("scripted", {"script": [{"tool": "read"}], "loop": "yes"},
         "'loop' must be true or false."),
        ("scripted", {"script": [{"tool": "read"}], "colour": "red"},
         "Unknown key(s) colour; allowed: "),
        ("scripted", [1, 2], "The backend config must be a JSON object."),
        ("openai", {"model": "x", "api_key_env": "sk-live-123"},
         "'api_key_env' is the NAME of an environment variable (like OPENAI_API_KEY), "
         "never the key itself."),
        ("openai", {"model": "x", "temperature": 3},
         "'temperature' must be a number from 0.0 to 2.0."),
        ("openai", {"model": "x", "max_tokens": "64"},
         "'max_tokens' must be a whole number from 1 to 1000000."),
        ("openai", {"model": "x", "base_url": "ftp://host"},
         "'base_url' must start with http:// or https://."),
        ("openai", {"model": "x", "extra_body": {"model": "y"}}, "'extra_body' may not set model"),
        ("openai", {"base_url": "http://h"}, "'model' is required"),
        ("python", {"callable": "nodots"},
         "'callable' must be a dotted path such as mypkg.agents.step."),
        ("python", {"callable": "a.b", "max_steps": 0},
         "'max_steps' must be a whole number from 1 to 1000000."),
    ],
)  # fmt: skip
def test_a_bad_config_is_a_form_error_naming_the_key(
    operator_client: Client, backend: str, config: Any, message: str
) -> None:
    status, page = add_agent(operator_client, backend, config)
    assert status == 200
    assert message in page
    assert not Agent.objects.filter(name="m1").exists()


def test_every_refusal_of_a_config_is_shown(operator_client: Client) -> None:
    status, page = add_agent(
        operator_client, "openai", {"model": "", "timeout": 0, "tool_choice": "any"}
    )
    assert status == 200
    for key in ("'model'", "'timeout'", "'tool_choice'"):
        assert f"{key} must be" in page


def test_a_good_config_is_saved_with_its_defaults(operator_client: Client) -> None:
    status, _ = add_agent(operator_client, "scripted", {"script": [{"tool": "finish"}]})
    assert status == 302
    assert Agent.objects.get(name="m1").config == {
        "script": [{"tool": "finish", "args": {}, "on_refused": "finish"}],
        "seed": 0,
        "think": [0.0, 0.0],
        "loop": False,
        "retries": 3,
        "backoff": [0.05, 1.0],
    }


def test_a_backend_reads_its_config_through_the_model() -> None:
    backend = get_backend("scripted", {"script": [{"tool": "read", "args": {"resource": "r"}}]})
    assert isinstance(backend, ScriptedBackend)
    assert (backend.retries, backend.backoff, backend.think) == (3, (0.05, 1.0), [0.0, 0.0])
    with pytest.raises(BackendError, match=r"config is invalid: 'retries' must be a whole number"):
        get_backend("scripted", {"script": [{"tool": "read"}], "retries": 99})
    with pytest.raises(BackendError, match="unknown backend 'carrier-pigeon'"):
        get_backend("carrier-pigeon", {})


# --- api_key_env: an allow-list (ORCHESTRATOR_MODEL_KEY_ENVS) ----------------------------


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "HOME"])
def test_api_key_env_must_be_an_allowed_variable(operator_client: Client, name: str) -> None:
    status, page = add_agent(operator_client, "openai", {"model": "x", "api_key_env": name})

    assert status == 200
    assert (
        "'api_key_env' must be one of the environment variables allowed to hold a model's "
        "API key: OPENAI_API_KEY, VLLM_API_KEY (the setting ORCHESTRATOR_MODEL_KEY_ENVS)."
    ) in page
    assert not Agent.objects.filter(name="m1").exists()


def test_an_allowed_api_key_env_is_saved(operator_client: Client, settings) -> None:
    settings.ORCHESTRATOR_MODEL_KEY_ENVS = ["TEAM_MODEL_KEY"]

    status, _ = add_agent(
        operator_client, "openai", {"model": "x", "api_key_env": "TEAM_MODEL_KEY"}
    )

    assert status == 302
    assert Agent.objects.get(name="m1").config["api_key_env"] == "TEAM_MODEL_KEY"
