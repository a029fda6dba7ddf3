"""API keys for model endpoints: the one documented exception to "only settings read os.environ".

An agent's backend config names the environment variable that holds its API
key (``api_key_env``, checked by ``agents.config.OpenAIConfig`` when the admin
saves the agent) so that keys never sit in the database or the admin. The key
must be read when the step runs, in the worker, so it cannot go through
``orchestrator.config`` at start-up: :func:`secret_from_env` is the single place
that does this, and only for the names the deployment allows
(``ORCHESTRATOR_MODEL_KEY_ENVS``, :func:`model_key_envs`). An operator who may
edit agent configs must not be able to send any other variable of the worker's
environment (``SECRET_KEY``, ``DATABASE_URL``, a cloud credential) to an
endpoint of their choosing as a bearer token.
"""

from __future__ import annotations

import os
import re

from django.conf import settings

# Same pattern as agents.config._ENV_NAME (a test keeps them equal).
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


def model_key_envs() -> list[str]:
    """The environment variables that may hold a model's API key (the setting
    ``ORCHESTRATOR_MODEL_KEY_ENVS``)."""
    return list(settings.ORCHESTRATOR_MODEL_KEY_ENVS)


def not_allowed(name: object) -> str:
    """Why ``name`` may not be read as an API key, naming the allowed ones."""
    allowed = ", ".join(model_key_envs()) or "none"
    return (
        f"{name!r} is not one of the environment variables allowed to hold a model's API key "
        f"(ORCHESTRATOR_MODEL_KEY_ENVS: {allowed})"
    )


def secret_from_env(name: str) -> str | None:
    """The value of the environment variable ``name``, stripped, or None if unset or blank.

    Raises ``ValueError`` unless ``name`` is one of :func:`model_key_envs`, checked
    again here, when the key is read, whatever the config's validation said when it
    was saved (the setting may have changed since). Never logs or echoes the value.
    """
    if not isinstance(name, str) or name not in model_key_envs():
        raise ValueError(not_allowed(name))
    value = os.environ.get(name, "").strip()
    return value or None
