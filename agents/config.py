"""Validation of an agent's backend configuration (the JSON edited in the admin,
agents/admin.py).

Each backend has a small, explicit schema. Validation returns the config
with defaults filled in, or raises ``ValidationError`` naming the field, so
the admin shows a form error and nothing is saved.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

from agents.tools import TOOL_NAMES as TOOLS
from orchestrator.core.models import Backend

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def _require_dict(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ValidationError("The backend config must be a JSON object.")
    return config


def _unknown_keys(config: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValidationError(
            "Unknown key(s) %(keys)s; allowed: %(allowed)s.",
            params={"keys": ", ".join(unknown), "allowed": ", ".join(sorted(allowed))},
        )


def _number(config: dict[str, Any], key: str, low: float, high: float, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValidationError(f"{key!r} must be a number from {low} to {high}.")
    return value


def _integer(config: dict[str, Any], key: str, low: int, high: int, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{key!r} must be a whole number from {low} to {high}.")
    return value


def _text(config: dict[str, Any], key: str, default: str = "", max_length: int = 20000) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or len(value) > max_length:
        raise ValidationError(f"{key!r} must be text of at most {max_length} characters.")
    return value


def _optional_max_steps(config: dict[str, Any], cleaned: dict[str, Any]) -> dict[str, Any]:
    """``max_steps``, when given, caps the agent's steps in any run (the run's own limit
    still applies: the smaller one wins). Left out, only the run's limit counts."""
    if "max_steps" in config:
        cleaned["max_steps"] = _integer(config, "max_steps", 1, 1_000_000, 50)
    else:
        cleaned.pop("max_steps", None)
    return cleaned


def validate_scripted(config: dict[str, Any]) -> dict[str, Any]:
    """``{"script": [{"tool", "args"?, "retries"?, "on_refused"?}, ...], "seed"?,
    "think": [lo, hi]?, "loop"?, "retries"?, "backoff": [base, cap]?, "max_steps"?}``
    (agents/backends/scripted.py says what each does)."""
    _unknown_keys(config, {"script", "seed", "think", "max_steps", "loop", "retries", "backoff"})
    script = config.get("script")
    if not isinstance(script, list) or not script:
        raise ValidationError("'script' must be a non-empty list of tool calls.")
    for index, call in enumerate(script):
        if not isinstance(call, dict) or call.get("tool") not in TOOLS:
            raise ValidationError(
                f"script[{index}] must be an object whose 'tool' is one of {', '.join(TOOLS)}."
            )
        unknown = sorted(set(call) - {"tool", "args", "retries", "on_refused"})
        if unknown:
            raise ValidationError(
                f"script[{index}] has unknown key(s) {', '.join(unknown)}; "
                "allowed: tool, args, retries, on_refused."
            )
        if not isinstance(call.get("args", {}), dict):
            raise ValidationError(f"script[{index}].args must be an object.")
        retries = call.get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
            raise ValidationError(f"script[{index}].retries must be a whole number from 0 to 20.")
        fallback = call.get("on_refused", "finish")
        ahead = len(script) - index  # a fallback goes forward, at most just past the end
        if fallback != "finish" and (
            isinstance(fallback, bool)
            or not isinstance(fallback, int)
            or not 1 <= fallback <= ahead
        ):
            raise ValidationError(
                f'script[{index}].on_refused must be "finish" or a number of entries to go '
                f"on by, from 1 to {ahead} (fallbacks only go forward)."
            )
    for key, shape in (("think", "[min, max]"), ("backoff", "[base, cap]")):
        pair = config.get(key, [0, 0])
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
            or not 0 <= pair[0] <= pair[1] <= 60
        ):
            raise ValidationError(f"{key!r} must be {shape} seconds, from 0 to 60, in that order.")
    cleaned = dict(config)
    cleaned["seed"] = _integer(config, "seed", 0, 2**63 - 1, 0)
    _integer(config, "retries", 0, 20, 0)
    _optional_max_steps(config, cleaned)
    if not isinstance(config.get("loop", False), bool):
        raise ValidationError("'loop' must be true or false.")
    return cleaned


TOOL_CHOICES = ("auto", "required", "none")
# Request fields the backend sets itself, from its own config keys: extra_body may
# not override them (it would silently win over the validated key).
_OWN_REQUEST_FIELDS = (
    "model",
    "messages",
    "tools",
    "tool_choice",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "stream",
)


def validate_openai(config: dict[str, Any]) -> dict[str, Any]:
    """Any OpenAI-compatible endpoint. The API key comes from a named env variable.

    Optional keys for the request: ``max_tokens`` (default 512, so a model that
    will not stop cannot fill its context), ``tool_choice`` (``auto``, the
    default, ``required`` or ``none``; some servers refuse ``required``),
    ``timeout`` (seconds one request may take, default 120) and ``extra_body``
    (a JSON object merged into the request body as it is, for a server's own
    options, such as ``{"top_k": 40}``).
    """
    _unknown_keys(
        config,
        {
            "base_url",
            "model",
            "api_key_env",
            "temperature",
            "system_prompt",
            "max_steps",
            "max_tokens",
            "tool_choice",
            "timeout",
            "extra_body",
        },
    )
    model = _text(config, "model", max_length=200)
    if not model:
        raise ValidationError("'model' is required (for example gpt-4o-mini or llama3.1).")
    base_url = _text(config, "base_url", max_length=500)
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ValidationError("'base_url' must start with http:// or https://.")
    api_key_env = _text(config, "api_key_env", default="OPENAI_API_KEY", max_length=128)
    if not _ENV_NAME.match(api_key_env):
        raise ValidationError(
            "'api_key_env' is the NAME of an environment variable (like OPENAI_API_KEY), "
            "never the key itself."
        )
    tool_choice = config.get("tool_choice", "auto")
    if tool_choice not in TOOL_CHOICES:
        raise ValidationError(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)}.")
    extra_body = config.get("extra_body", {})
    if not isinstance(extra_body, dict):
        raise ValidationError("'extra_body' must be a JSON object.")
    overridden = sorted(set(extra_body) & set(_OWN_REQUEST_FIELDS))
    if overridden:
        raise ValidationError(
            "'extra_body' may not set %(keys)s: the backend sets them (use the config's own "
            "keys: model, temperature, max_tokens, tool_choice).",
            params={"keys": ", ".join(overridden)},
        )
    cleaned = {
        "model": model,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "temperature": _number(config, "temperature", 0.0, 2.0, 0.2),
        "system_prompt": _text(config, "system_prompt"),
        "max_tokens": _integer(config, "max_tokens", 1, 1_000_000, 512),
        "tool_choice": tool_choice,
        "timeout": _number(config, "timeout", 1, 3600, 120),
        "extra_body": extra_body,
    }
    return _optional_max_steps(config, cleaned)


def validate_python(config: dict[str, Any]) -> dict[str, Any]:
    """``{"callable": "package.module.function", "options": {...}?}``."""
    _unknown_keys(config, {"callable", "options", "max_steps"})
    target = _text(config, "callable", max_length=300)
    if not _DOTTED.match(target):
        raise ValidationError("'callable' must be a dotted path such as mypkg.agents.step.")
    options = config.get("options", {})
    if not isinstance(options, dict):
        raise ValidationError("'options' must be an object.")
    return _optional_max_steps(config, {"callable": target, "options": options})


VALIDATORS = {
    Backend.SCRIPTED: validate_scripted,
    Backend.OPENAI: validate_openai,
    Backend.PYTHON: validate_python,
}


def validate_backend_config(backend: str, config: Any) -> dict[str, Any]:
    """Check ``config`` against ``backend``'s schema; return it with defaults filled."""
    try:
        validator = VALIDATORS[Backend(backend)]
    except ValueError as exc:
        raise ValidationError(f"Unknown backend {backend!r}.") from exc
    return validator(_require_dict(config))
