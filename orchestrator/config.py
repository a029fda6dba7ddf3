"""Reading the environment: the one place that does.

`settings.py` calls :func:`load` with ``os.environ``; nothing else in the
project reads the environment. Keeping the parsing a pure function of a
mapping lets the tests check it without touching the process environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url

from orchestrator import embedded
from orchestrator.api_keys import ENV_NAME

BASE_DIR = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


DEFAULT_BASE_URL = "http://localhost:8000"
DEFAULT_FROM_EMAIL = "orchestrator@localhost"


class ConfigError(ValueError):
    """An environment variable holds a value the project cannot use."""


@dataclass(frozen=True)
class Config:
    debug: bool
    secret_key: str | None
    allowed_hosts: list[str]
    database: dict[str, Any]
    database_is_embedded: bool  # DATABASE_URL unset: the embedded PostgreSQL in data_dir
    redis_url: str
    data_dir: Path
    database_pool: bool
    redis_is_default: bool = False  # REDIS_URL unset: the embedded Redis in data_dir
    https: bool = False  # served over HTTPS (behind a TLS-terminating proxy)
    hsts_seconds: int = 0
    channel_prefix: str = "orchestrator"  # the channel layer's names on Redis
    model_key_envs: tuple[str, ...] = ()  # the variables api_key_env may name
    # Notifications (docs/notifications.md): the site's address, for links in them, and
    # Django's e-mail settings (EMAIL_BACKEND, EMAIL_HOST, ...; parse_email).
    base_url: str = DEFAULT_BASE_URL
    email: Mapping[str, Any] = field(default_factory=dict)
    # Prometheus: the multiprocess directory every process of a host shares (default
    # data_dir/metrics), and the bearer token of /metrics (None: /metrics is off).
    metrics_dir: Path | None = None
    metrics_token: str | None = None
    otel: bool = False  # OpenTelemetry spans of the agent runtime (agents/tracing.py)
    # Long polls one agent may have waiting at once, over every web process (core/wakeups.py).
    max_waits_per_agent: int = 10


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    """Parse a boolean flag; anything but the usual spellings is an error."""
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def parse_int(name: str, raw: str | None, default: int) -> int:
    """A whole number of zero or more; anything else is an error."""
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number; got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more; got {raw!r}")
    return value


# The environment variables that an agent's backend config may name as the one holding
# its model's API key (``api_key_env``; orchestrator/api_keys.py): OpenAI's, and the
# README's example for a vLLM server.
DEFAULT_MODEL_KEY_ENVS = ("OPENAI_API_KEY", "VLLM_API_KEY")
# The variables the project reads itself: never an API key to send to an endpoint.
OWN_VARIABLES = frozenset(
    {
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "DEBUG",
        "ALLOWED_HOSTS",
        "HTTPS",
        "HSTS_SECONDS",
        "ORCHESTRATOR_DATA_DIR",
        "ORCHESTRATOR_DB_POOL",
        "ORCHESTRATOR_PGBOUNCER",
        "ORCHESTRATOR_CHANNEL_PREFIX",
        "ORCHESTRATOR_MODEL_KEY_ENVS",
        "ORCHESTRATOR_METRICS_TOKEN",
        "PROMETHEUS_MULTIPROC_DIR",
        "ORCHESTRATOR_OTEL",
        "DJANGO_SETTINGS_MODULE",
        "ORCHESTRATOR_BASE_URL",
        "EMAIL_BACKEND",
        "EMAIL_HOST",
        "EMAIL_PORT",
        "EMAIL_HOST_USER",
        "EMAIL_HOST_PASSWORD",
        "EMAIL_USE_TLS",
        "EMAIL_USE_SSL",
        "EMAIL_TIMEOUT",
        "DEFAULT_FROM_EMAIL",
    }
)


def parse_env_names(name: str, raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of environment variable names, none of them the
    project's own (:data:`OWN_VARIABLES`); ``default`` when unset or blank."""
    if raw is None or not raw.strip():
        return default
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for each in names:
        if not ENV_NAME.match(each):
            raise ConfigError(
                f"{name} must be a comma-separated list of environment variable names "
                f"(A-Z, 0-9 and _); got {each!r}"
            )
    own = sorted(set(names) & OWN_VARIABLES)
    if own:
        raise ConfigError(f"{name} may not list the project's own settings: {', '.join(own)}")
    return names


def parse_hosts(raw: str | None, *, debug: bool) -> list[str]:
    """Comma-separated host names; in DEBUG, loopback names are allowed by default."""
    if raw is None or not raw.strip():
        return ["localhost", "127.0.0.1", "[::1]", "testserver"] if debug else []
    return [host.strip() for host in raw.split(",") if host.strip()]


def parse_database(
    raw: str | None, *, data_dir: Path, pool: bool = False, pgbouncer: bool = False
) -> tuple[dict[str, Any], bool]:
    """Return the Django database settings and whether they are the embedded PostgreSQL.

    Without ``DATABASE_URL``: the embedded PostgreSQL of ``data_dir``, on its unix
    socket there (orchestrator.embedded; ``make run`` and the test suite start it).
    ``pool``: a connection pool per process, for the web server (asgi.py asks for
    it). Workers, the monitor and commands keep one connection per thread instead.
    ``pgbouncer``: the server is a PgBouncer in transaction mode (docs/deploy.md), so
    nothing may outlive a transaction: no named prepared statements, no server-side
    cursors.
    """
    if raw is None or not raw.strip():
        database, is_embedded = embedded.database_settings(data_dir), True
    else:
        try:
            database = dj_database_url.parse(raw.strip())
        except Exception as exc:  # dj-database-url raises several kinds
            raise ConfigError(f"DATABASE_URL cannot be parsed: {exc}") from exc
        engine = database.get("ENGINE", "")
        if not engine.endswith("postgresql"):
            raise ConfigError(f"DATABASE_URL must point at PostgreSQL (postgres://); got {engine}")
        is_embedded = False
    options = database.setdefault("OPTIONS", {})
    if pool:
        # Under ASGI every request runs in a fresh thread, and opening a connection
        # per request costs ~4 ms: the web server keeps a pool (psycopg_pool).
        options["pool"] = {"min_size": 1, "max_size": 20, "timeout": 30}
        database["CONN_MAX_AGE"] = 0  # required with a pool: connections go back to it
        database["CONN_HEALTH_CHECKS"] = False
    else:
        # A worker (or the monitor) is one long-lived thread: it keeps its connection,
        # and with it the prepared statements. Opening a pool instead costs ~17 ms,
        # paid by every job of a forking RQ worker. Jobs call close_old_connections()
        # at their start and end, which drops a connection that went bad.
        database["CONN_MAX_AGE"] = None
        database["CONN_HEALTH_CHECKS"] = True
    # Server-side binding with prepared statements: the lock path runs the same few
    # statements all the time, and planning them again each time was a third of
    # their cost.
    options["server_side_binding"] = True
    options["prepare_threshold"] = 5
    if pgbouncer:
        # Transaction pooling hands the server connection to another client after
        # each transaction: a statement prepared on it (by name, PgBouncer before
        # 1.21 does not track them) or a WITH HOLD cursor (Django's .iterator()
        # outside a transaction) would be missing, or another client's, next time.
        # Binding stays server-side, with unnamed statements.
        options["prepare_threshold"] = None
        database["DISABLE_SERVER_SIDE_CURSORS"] = True
    return database, is_embedded


_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def parse_channel_prefix(raw: str | None, database: Mapping[str, Any]) -> str:
    """The prefix of the channel layer's keys and pub/sub channels on Redis.

    Redis pub/sub ignores the database number of REDIS_URL, so two deployments on
    one Redis server would hear each other's pushes if they shared a prefix. Given
    (ORCHESTRATOR_CHANNEL_PREFIX) it is used as it is; otherwise it is derived from
    the database the deployment uses (host, port, name): the processes of one
    deployment share it, two deployments on two databases do not."""
    value = (raw or "").strip()
    if value:
        if not _PREFIX.match(value):
            raise ConfigError(
                "ORCHESTRATOR_CHANNEL_PREFIX must be 1 to 80 letters, digits, '.', '_' or '-'"
            )
        return value
    where = f"{database.get('HOST') or ''}:{database.get('PORT') or ''}/{database.get('NAME')}"
    return "orchestrator." + hashlib.sha256(where.encode()).hexdigest()[:12]


def parse_redis_url(raw: str | None, *, data_dir: Path) -> str:
    """REDIS_URL, or without it the embedded Redis's socket in ``data_dir``."""
    value = (raw or "").strip() or f"unix://{embedded.redis_socket(data_dir)}"
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"REDIS_URL must start with redis://, rediss:// or unix://; got {value!r}"
        )
    return value


METRICS_TOKEN_MIN_LENGTH = 16


def parse_metrics_token(raw: str | None) -> str | None:
    """The bearer token of /metrics, or None (unset or blank: the endpoint is off).

    At least :data:`METRICS_TOKEN_MIN_LENGTH` characters with no whitespace, so that a
    placeholder such as ``changeme`` or a value cut at a space fails at start-up."""
    value = (raw or "").strip()
    if not value:
        return None
    if len(value) < METRICS_TOKEN_MIN_LENGTH or any(char.isspace() for char in value):
        raise ConfigError(
            f"ORCHESTRATOR_METRICS_TOKEN must be at least {METRICS_TOKEN_MIN_LENGTH} "
            "characters, without spaces (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return value


def parse_metrics_dir(raw: str | None, *, data_dir: Path) -> Path:
    """PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess directory): given, or
    ``data_dir/metrics``, so that the processes of one data directory add up."""
    value = (raw or "").strip()
    return Path(value) if value else data_dir / "metrics"


def parse_base_url(raw: str | None) -> str:
    """ORCHESTRATOR_BASE_URL: the address operators reach the site at, which the links
    in notifications start with (``https://orchestrator.example.com``, no trailing
    slash); :data:`DEFAULT_BASE_URL` when unset."""
    value = (raw or "").strip().rstrip("/") or DEFAULT_BASE_URL
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ConfigError(
            f"ORCHESTRATOR_BASE_URL must be an http:// or https:// address; got {raw!r}"
        )
    return value


def parse_email(environ: Mapping[str, str]) -> dict[str, Any]:
    """Django's e-mail settings, from the variables of the same names.

    With EMAIL_HOST set, SMTP (``django.core.mail.backends.smtp.EmailBackend``) on
    EMAIL_PORT (25), with EMAIL_HOST_USER / EMAIL_HOST_PASSWORD, and STARTTLS
    (EMAIL_USE_TLS) or TLS from the start (EMAIL_USE_SSL), not both; without it, the
    console backend, which prints messages to the process's output. EMAIL_BACKEND, a
    dotted path, overrides either. EMAIL_TIMEOUT: seconds (10) before a connection to
    the server gives up; DEFAULT_FROM_EMAIL: the sender."""
    host = (environ.get("EMAIL_HOST") or "").strip()
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    backend = (environ.get("EMAIL_BACKEND") or "").strip() or (
        smtp if host else "django.core.mail.backends.console.EmailBackend"
    )
    use_tls = parse_bool("EMAIL_USE_TLS", environ.get("EMAIL_USE_TLS"), default=False)
    use_ssl = parse_bool("EMAIL_USE_SSL", environ.get("EMAIL_USE_SSL"), default=False)
    if use_tls and use_ssl:
        raise ConfigError("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one of them")
    return {
        "EMAIL_BACKEND": backend,
        "EMAIL_HOST": host or "localhost",
        "EMAIL_PORT": parse_int("EMAIL_PORT", environ.get("EMAIL_PORT"), 25),
        "EMAIL_HOST_USER": environ.get("EMAIL_HOST_USER", ""),
        "EMAIL_HOST_PASSWORD": environ.get("EMAIL_HOST_PASSWORD", ""),
        "EMAIL_USE_TLS": use_tls,
        "EMAIL_USE_SSL": use_ssl,
        "EMAIL_TIMEOUT": parse_int("EMAIL_TIMEOUT", environ.get("EMAIL_TIMEOUT"), 10) or None,
        "DEFAULT_FROM_EMAIL": (environ.get("DEFAULT_FROM_EMAIL") or "").strip()
        or DEFAULT_FROM_EMAIL,
    }


def local_secret_key(data_dir: Path) -> str:
    """A key generated once per machine and kept in the data folder (mode 0600).

    Used when SECRET_KEY is not set, so that a laptop run keeps its sessions
    across restarts and every local process (web, workers) shares one key.
    Production sets SECRET_KEY.
    """
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


def load(environ: Mapping[str, str]) -> Config:
    """Build the configuration from an environment mapping.

    Raises :class:`ConfigError` with a message naming the variable when a
    value is unusable, so a misconfigured deployment fails at start-up.
    """
    debug = parse_bool("DEBUG", environ.get("DEBUG"), default=False)
    secret_key = environ.get("SECRET_KEY", "").strip() or None
    data_dir = Path(environ.get("ORCHESTRATOR_DATA_DIR") or BASE_DIR / "data")
    https = parse_bool("HTTPS", environ.get("HTTPS"), default=False)
    pool = parse_bool("ORCHESTRATOR_DB_POOL", environ.get("ORCHESTRATOR_DB_POOL"), default=False)
    pgbouncer = parse_bool(
        "ORCHESTRATOR_PGBOUNCER", environ.get("ORCHESTRATOR_PGBOUNCER"), default=False
    )
    database, is_embedded = parse_database(
        environ.get("DATABASE_URL"), data_dir=data_dir, pool=pool, pgbouncer=pgbouncer
    )
    return Config(
        debug=debug,
        secret_key=secret_key,
        allowed_hosts=parse_hosts(environ.get("ALLOWED_HOSTS"), debug=debug),
        database=database,
        database_is_embedded=is_embedded,
        redis_url=parse_redis_url(environ.get("REDIS_URL"), data_dir=data_dir),
        data_dir=data_dir,
        database_pool=pool,
        redis_is_default=not (environ.get("REDIS_URL") or "").strip(),
        https=https,
        hsts_seconds=parse_int("HSTS_SECONDS", environ.get("HSTS_SECONDS"), 3600) if https else 0,
        channel_prefix=parse_channel_prefix(environ.get("ORCHESTRATOR_CHANNEL_PREFIX"), database),
        model_key_envs=parse_env_names(
            "ORCHESTRATOR_MODEL_KEY_ENVS",
            environ.get("ORCHESTRATOR_MODEL_KEY_ENVS"),
            DEFAULT_MODEL_KEY_ENVS,
        ),
        metrics_dir=parse_metrics_dir(environ.get("PROMETHEUS_MULTIPROC_DIR"), data_dir=data_dir),
        metrics_token=parse_metrics_token(environ.get("ORCHESTRATOR_METRICS_TOKEN")),
        base_url=parse_base_url(environ.get("ORCHESTRATOR_BASE_URL")),
        email=parse_email(environ),
        otel=parse_bool("ORCHESTRATOR_OTEL", environ.get("ORCHESTRATOR_OTEL"), default=False),
        max_waits_per_agent=parse_int(
            "ORCHESTRATOR_MAX_WAITS_PER_AGENT",
            environ.get("ORCHESTRATOR_MAX_WAITS_PER_AGENT"),
            Config.max_waits_per_agent,
        ),
    )
