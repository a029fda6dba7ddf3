"""Agents' backend configurations (the JSON edited in the admin, agents/admin.py),
as pydantic models: :class:`ScriptedConfig`, :class:`OpenAIConfig`,
:class:`PythonConfig`.

The admin validates a config as it is saved (a form error per refusal, naming
the key, and nothing saved) and stores it with the defaults filled in
(:func:`config_dict`); the backends read their config through the same model
(:func:`backend_config`), so a key's default is written once.

Refusals read like sentences that name the key: ``'max_tokens' must be a whole
number from 1 to 1000000.``, ``script[0].retries must be ...``
(:func:`config_messages`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agents.tools import TOOL_NAMES
from orchestrator.api_keys import model_key_envs
from orchestrator.core.models import Backend

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")

# The type of the refusals written for people: a predicate about the key its error
# is located at ("must be ..."), or a whole sentence when located at the config.
RULE = "config"
# Errors that come from inside a nested config (a script entry) and say so themselves.
_NESTED = (RULE, "extra_forbidden", "missing")


def _rule(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(RULE, message, context)


class Config(BaseModel):
    """Strict (no coercion), no unknown keys; every refusal of a key says what the
    key must be: its field's description."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="wrap")
    @classmethod
    def _said_plainly(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(error["type"] in _NESTED for error in exc.errors()):
                raise
            what = cls.model_fields[info.field_name].description
            raise _rule("must be {what}.", what=what) from None


def _pair(pair: list[float]) -> list[float]:
    if not 0 <= pair[0] <= pair[1] <= 60:
        raise ValueError("out of order or range")  # said as the field's description
    return pair


# [low, high] seconds, 0 <= low <= high <= 60.
Seconds = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_pair)]
MaxSteps = Annotated[
    int | None,
    Field(None, ge=1, le=1_000_000, description="a whole number from 1 to 1000000"),
]


class _MaxSteps(Config):
    # When given, it caps the agent's steps in any run (the run's own limit still
    # applies: the smaller one wins). Left out, only the run's limit counts.
    max_steps: MaxSteps = None


class ScriptEntry(Config):
    """One tool call of a script (agents/backends/scripted.py says what each key does)."""

    tool: Literal[TOOL_NAMES] = Field(description=f"one of {', '.join(TOOL_NAMES)}")  # type: ignore[valid-type]
    args: dict[str, Any] = Field(default_factory=dict, description="an object")
    retries: int | None = Field(None, ge=0, le=20, description="a whole number from 0 to 20")
    on_refused: Literal["finish"] | int = Field(
        "finish", description='"finish" or a number of entries to go on by'
    )


class ScriptedConfig(_MaxSteps):
    """``{"script": [{"tool", "args"?, "retries"?, "on_refused"?}, ...], "seed"?,
    "think": [lo, hi]?, "loop"?, "retries"?, "backoff": [base, cap]?, "max_steps"?}``."""

    script: list[ScriptEntry] = Field(min_length=1, description="a non-empty list of tool calls")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="a whole number from 0 to 2**63-1")
    think: Seconds = Field(
        default_factory=lambda: [0.0, 0.0],
        description="[min, max] seconds, from 0 to 60, in that order",
    )
    loop: bool = Field(False, description="true or false")
    retries: int = Field(3, ge=0, le=20, description="a whole number from 0 to 20")
    backoff: Seconds = Field(
        default_factory=lambda: [0.05, 1.0],
        description="[base, cap] seconds, from 0 to 60, in that order",
    )

    @model_validator(mode="after")
    def _fallbacks_go_forward(self) -> ScriptedConfig:
        for index, entry in enumerate(self.script):
            ahead = len(self.script) - index  # at most just past the end
            if entry.on_refused != "finish" and not 1 <= entry.on_refused <= ahead:
                raise _rule(
                    'script[{index}].on_refused must be "finish" or a number of entries to '
                    "go on by, from 1 to {ahead} (fallbacks only go forward).",
                    index=index,
                    ahead=ahead,
                )
        return self


def _http_url(url: str) -> str:
    if url and not url.startswith(("http://", "https://")):
        raise _rule("must start with http:// or https://.")
    return url


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise _rule(
            "is the NAME of an environment variable (like OPENAI_API_KEY), never the key itself."
        )
    allowed = model_key_envs()
    if name not in allowed:
        raise _rule(
            "must be one of the environment variables allowed to hold a model's API key: "
            "{allowed} (the setting ORCHESTRATOR_MODEL_KEY_ENVS).",
            allowed=", ".join(allowed) or "none",
        )
    return name


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


def _not_own_fields(extra_body: dict[str, Any]) -> dict[str, Any]:
    overridden = sorted(set(extra_body) & set(_OWN_REQUEST_FIELDS))
    if overridden:
        raise _rule(
            "may not set {keys}: the backend sets them (use the config's own keys: "
            "model, temperature, max_tokens, tool_choice).",
            keys=", ".join(overridden),
        )
    return extra_body


class OpenAIConfig(_MaxSteps):
    """Any OpenAI-compatible endpoint. The API key comes from a named env variable.

    ``max_tokens`` (default 512) keeps a model that will not stop from filling its
    context; ``tool_choice`` is ``auto`` (the default), ``required`` or ``none``
    (some servers refuse ``required``); ``timeout`` is the seconds one request may
    take; ``extra_body`` is merged into the request body as it is, for a server's
    own options (``{"top_k": 40}``).
    """

    model: str = Field(
        min_length=1,
        max_length=200,
        description="the model's name (for example gpt-4o-mini or llama3.1), "
        "at most 200 characters",
    )
    base_url: Annotated[str, AfterValidator(_http_url)] = Field(
        "", max_length=500, description="an http:// or https:// URL of at most 500 characters"
    )
    # One of ORCHESTRATOR_MODEL_KEY_ENVS, checked on save and again when the key is read.
    api_key_env: Annotated[str, AfterValidator(_env_name)] = Field(
        "OPENAI_API_KEY", description="the NAME of an environment variable"
    )
    temperature: float = Field(0.2, ge=0, le=2, description="a number from 0.0 to 2.0")
    system_prompt: str = Field("", max_length=20000, description="text of at most 20000 characters")
    max_tokens: int = Field(512, ge=1, le=1_000_000, description="a whole number from 1 to 1000000")
    tool_choice: Literal["auto", "required", "none"] = Field(
        "auto", description="one of auto, required, none"
    )
    timeout: float = Field(120, ge=1, le=3600, description="a number from 1 to 3600")
    extra_body: Annotated[dict[str, Any], AfterValidator(_not_own_fields)] = Field(
        default_factory=dict, description="a JSON object"
    )


def _dotted(path: str) -> str:
    if not _DOTTED.match(path):
        raise _rule("must be a dotted path such as mypkg.agents.step.")
    return path


class PythonConfig(_MaxSteps):
    """``{"callable": "package.module.function", "options": {...}?}``."""

    callable: Annotated[str, AfterValidator(_dotted)] = Field(
        max_length=300, description="a dotted path such as mypkg.agents.step"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="an object")


BACKEND_CONFIGS: dict[str, type[Config]] = {
    Backend.SCRIPTED: ScriptedConfig,
    Backend.OPENAI: OpenAIConfig,
    Backend.PYTHON: PythonConfig,
}


def backend_config(backend: str, config: Any) -> Config:
    """``config`` as ``backend``'s model; pydantic's ValidationError if it does not fit
    (:func:`config_messages` says why), ValueError for an unknown backend."""
    try:
        model = BACKEND_CONFIGS[Backend(backend)]
    except ValueError:
        raise ValueError(f"Unknown backend {backend!r}.") from None
    if not isinstance(config, dict):
        refusal = _rule("The backend config must be a JSON object.")
        raise ValidationError.from_exception_data(
            model.__name__, [{"type": refusal, "loc": (), "input": config}]
        )
    return model.model_validate(config)


def config_dict(config: Config) -> dict[str, Any]:
    """What the admin stores: every key with its default filled in, unset optional
    keys (``max_steps``, an entry's ``retries``) left out."""
    return config.model_dump(mode="json", exclude_none=True)


def _path(loc: tuple[Any, ...]) -> str:
    """``'retries'`` for a key of the config, ``script[0].retries`` for a nested one."""
    if len(loc) == 1:
        return repr(str(loc[0]))
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The nested model whose field ``loc`` leads to (``script[0]``: ScriptEntry)."""
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        nested = [arg for arg in get_args(annotation) if isinstance(arg, type)]
        model = next(arg for arg in nested if issubclass(arg, BaseModel))
    return model


def config_messages(exc: ValidationError, model: type[Config]) -> list[str]:
    """One sentence per refusal of ``model``'s validation, naming the key."""
    messages: list[str] = []
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif error["type"] == "missing":
            where = _model_at(model, loc[:-1])
            what = where.model_fields[str(loc[-1])].description
            messages.append(f"{_path(loc)} is required: {what}.")
        elif not loc:
            messages.append(error["msg"])
        else:
            messages.append(f"{_path(loc)} {error['msg']}")
    for parent, keys in unknown.items():
        allowed = ", ".join(_model_at(model, parent).model_fields)
        if parent:
            messages.append(
                f"{_path(parent) if len(parent) > 1 else parent[0]} has unknown key(s) "
                f"{', '.join(keys)}; allowed: {allowed}."
            )
        else:
            messages.append(f"Unknown key(s) {', '.join(keys)}; allowed: {allowed}.")
    return messages
