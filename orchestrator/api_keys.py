"""API keys for model endpoints: the one documented exception to "only settings read os.environ".

An agent's backend config names the environment variable that holds its API
key (``api_key_env``, checked by ``agents.config.OpenAIConfig``)
so that keys never sit in the database or the admin. The key must be read when
the step runs, in the worker, so it cannot go through ``orchestrator.config``
at start-up: :func:`secret_from_env` is the single place that does this, and
only for names that look like environment variables and are not the project's
own settings (an operator who may edit agent configs must not be able to send
``SECRET_KEY`` or ``DATABASE_URL`` to an endpoint of their choosing as a
bearer token).
"""

from __future__ import annotations

import os
import re

# Same pattern as agents.config._ENV_NAME (a test keeps them equal).
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")

# Variables the project itself reads (orchestrator/config.py, settings, the run
# scripts): never handed out as API keys.
RESERVED_NAMES = frozenset(
    {
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "DEBUG",
        "ALLOWED_HOSTS",
        "ORCHESTRATOR_DATA_DIR",
        "DJANGO_SETTINGS_MODULE",
    }
)


def secret_from_env(name: str) -> str | None:
    """The value of the environment variable ``name``, stripped, or None if unset or blank.

    Raises ``ValueError`` if ``name`` is not an environment variable name
    (``[A-Z_][A-Z0-9_]*``, at most 128 characters) or is one of the project's
    own settings (:data:`RESERVED_NAMES`). Never logs or echoes the value.
    """
    if not isinstance(name, str) or not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not the name of an environment variable")
    if name in RESERVED_NAMES:
        raise ValueError(f"{name} is one of the project's own settings, not an API key")
    value = os.environ.get(name, "").strip()
    return value or None
