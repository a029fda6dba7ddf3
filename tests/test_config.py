"""Parsing the environment (orchestrator.config), without touching os.environ."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config


def test_postgres_url_is_parsed(tmp_path: Path) -> None:
    cfg = config.load(
        {
            "DATABASE_URL": "postgres://alice:s3cret@db.example:6543/orch",
            "ORCHESTRATOR_DATA_DIR": str(tmp_path),
        }
    )
    db = cfg.database
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "db.example",
        6543,
        "orch",
        "alice",
        "s3cret",
    )
    assert cfg.database_is_embedded is False
    # Workers and commands: one persistent connection, checked between jobs.
    assert "pool" not in db["OPTIONS"]
    assert (db["CONN_MAX_AGE"], db["CONN_HEALTH_CHECKS"]) == (None, True)


def test_the_web_server_asks_for_a_pool(tmp_path: Path) -> None:
    cfg = config.load(
        {
            "DATABASE_URL": "postgres://alice@db.example/orch",
            "ORCHESTRATOR_DB_POOL": "1",
            "ORCHESTRATOR_DATA_DIR": str(tmp_path),
        }
    )
    assert cfg.database_pool is True
    assert cfg.database["OPTIONS"]["pool"]["max_size"] >= 8  # threads of one process share it
    assert cfg.database["CONN_MAX_AGE"] == 0


def test_behind_pgbouncer_nothing_outlives_a_transaction(tmp_path: Path) -> None:
    """ORCHESTRATOR_PGBOUNCER=1 (transaction pooling, docs/deploy.md): no named prepared
    statements and no server-side cursors; without it, statements are prepared."""
    url = "postgres://alice@pgbouncer.example:6432/orch"
    for pool in ("0", "1"):
        cfg = config.load(
            {
                "DATABASE_URL": url,
                "ORCHESTRATOR_PGBOUNCER": "1",
                "ORCHESTRATOR_DB_POOL": pool,
                "ORCHESTRATOR_DATA_DIR": str(tmp_path),
            }
        )
        assert cfg.database["OPTIONS"]["prepare_threshold"] is None
        assert cfg.database["OPTIONS"]["server_side_binding"] is True
        assert cfg.database["DISABLE_SERVER_SIDE_CURSORS"] is True
    direct = config.load({"DATABASE_URL": url, "ORCHESTRATOR_DATA_DIR": str(tmp_path)}).database
    assert direct["OPTIONS"]["prepare_threshold"] == 5
    assert not direct.get("DISABLE_SERVER_SIDE_CURSORS")
    with pytest.raises(config.ConfigError, match="ORCHESTRATOR_PGBOUNCER"):
        config.load({"DATABASE_URL": url, "ORCHESTRATOR_PGBOUNCER": "maybe"})


def test_without_database_url_the_embedded_postgresql_of_the_data_dir(tmp_path: Path) -> None:
    cfg = config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path)})
    db = cfg.database
    assert db["ENGINE"] == "django.db.backends.postgresql"
    # Its unix socket in the cluster's directory, the one every process finds.
    assert (db["HOST"], db["NAME"], db["USER"]) == (
        str(tmp_path / "postgres"),
        "orchestrator",
        "postgres",
    )
    assert db["OPTIONS"]["server_side_binding"] is True
    assert cfg.database_is_embedded is True
    # And the embedded Redis's socket beside it: nothing guessed on localhost.
    assert cfg.redis_url == f"unix://{tmp_path / 'redis.sock'}"
    assert cfg.redis_is_default is True


def test_a_data_dir_too_long_for_a_socket_path_gets_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    cfg = config.load({"ORCHESTRATOR_DATA_DIR": str(deep)})
    host = cfg.database["HOST"]
    assert len(f"{host}/.s.PGSQL.5432") <= 100
    # The same for every process with this data dir, and another for another.
    assert config.load({"ORCHESTRATOR_DATA_DIR": str(deep)}).database["HOST"] == host
    assert config.load({"ORCHESTRATOR_DATA_DIR": str(deep / "x")}).database["HOST"] != host


def test_the_web_server_pools_connections_to_the_embedded_postgresql_too(tmp_path: Path) -> None:
    cfg = config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path), "ORCHESTRATOR_DB_POOL": "1"})
    assert cfg.database_pool is True and "pool" in cfg.database["OPTIONS"]


def test_other_database_engines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="PostgreSQL"):
        config.load({"DATABASE_URL": "mysql://root@localhost/x"})
    with pytest.raises(config.ConfigError, match="PostgreSQL"):
        config.load({"DATABASE_URL": "sqlite:///x.db"})


def test_unparseable_database_url_names_the_variable() -> None:
    with pytest.raises(config.ConfigError, match="DATABASE_URL"):
        config.load({"DATABASE_URL": "nonsense://"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("off", False)],
)
def test_debug_flag(raw: str, expected: bool) -> None:
    assert config.load({"DEBUG": raw}).debug is expected


def test_bad_debug_flag_is_an_error() -> None:
    with pytest.raises(config.ConfigError, match="DEBUG"):
        config.load({"DEBUG": "maybe"})


def test_allowed_hosts() -> None:
    assert config.load({"ALLOWED_HOSTS": "a.example, b.example ,"}).allowed_hosts == [
        "a.example",
        "b.example",
    ]
    assert config.load({}).allowed_hosts == []
    assert "localhost" in config.load({"DEBUG": "1"}).allowed_hosts


def test_model_key_envs_default_list_and_validation() -> None:
    assert config.load({}).model_key_envs == ("OPENAI_API_KEY", "VLLM_API_KEY")
    assert config.load({"ORCHESTRATOR_MODEL_KEY_ENVS": " "}).model_key_envs == (
        "OPENAI_API_KEY",
        "VLLM_API_KEY",
    )
    listed = config.load({"ORCHESTRATOR_MODEL_KEY_ENVS": "A_KEY, B_KEY,,A_KEY"})
    assert listed.model_key_envs == ("A_KEY", "B_KEY")
    with pytest.raises(config.ConfigError, match=r"ORCHESTRATOR_MODEL_KEY_ENVS .*'sk-live'"):
        config.load({"ORCHESTRATOR_MODEL_KEY_ENVS": "A_KEY,sk-live"})
    with pytest.raises(config.ConfigError, match="own settings: DATABASE_URL, SECRET_KEY"):
        config.load({"ORCHESTRATOR_MODEL_KEY_ENVS": "SECRET_KEY,A_KEY,DATABASE_URL"})


def test_redis_url_default_and_validation() -> None:
    assert config.load({}).redis_url == f"unix://{config.BASE_DIR / 'data' / 'redis.sock'}"
    assert config.load({"REDIS_URL": "redis://cache:6380/2"}).redis_url == "redis://cache:6380/2"
    with pytest.raises(config.ConfigError, match="REDIS_URL"):
        config.load({"REDIS_URL": "http://cache"})


def test_secret_key_from_env_or_generated_once_per_machine(tmp_path: Path) -> None:
    assert config.load({"SECRET_KEY": "k" * 60}).secret_key == "k" * 60
    assert config.load({}).secret_key is None
    first = config.local_secret_key(tmp_path)
    assert len(first) >= 50
    assert config.local_secret_key(tmp_path) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_the_channel_prefix_is_derived_from_the_database_unless_given(tmp_path: Path) -> None:
    def prefix(**environ: str) -> str:
        return config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path), **environ}).channel_prefix

    one = prefix(DATABASE_URL="postgres://u@db.example:5432/one")
    assert one == prefix(DATABASE_URL="postgres://other-user:pw@db.example:5432/one")
    assert one != prefix(DATABASE_URL="postgres://u@db.example:5432/two")
    assert one != prefix(DATABASE_URL="postgres://u@db2.example:5432/one")
    assert one.startswith("orchestrator.")
    assert prefix(ORCHESTRATOR_CHANNEL_PREFIX="staging") == "staging"
    with pytest.raises(config.ConfigError, match="ORCHESTRATOR_CHANNEL_PREFIX"):
        prefix(ORCHESTRATOR_CHANNEL_PREFIX="has space")


def test_notification_settings_default_to_the_console_and_a_local_address(tmp_path: Path) -> None:
    cfg = config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres://x/y"})
    assert cfg.base_url == "http://localhost:8000"
    assert cfg.email["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    assert cfg.email["DEFAULT_FROM_EMAIL"] == "orchestrator@localhost"
    assert cfg.email["EMAIL_TIMEOUT"] == 10


def test_email_host_selects_smtp_and_its_settings_are_read() -> None:
    email = config.parse_email(
        {"EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "587", "EMAIL_USE_TLS": "1",
         "EMAIL_HOST_USER": "orch", "EMAIL_HOST_PASSWORD": "pw",
         "DEFAULT_FROM_EMAIL": "Orchestrator <o@example.com>"}
    )  # fmt: skip
    assert email["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (email["EMAIL_HOST"], email["EMAIL_PORT"], email["EMAIL_USE_TLS"]) == (
        "smtp.example.com",
        587,
        True,
    )
    assert (email["EMAIL_HOST_USER"], email["EMAIL_HOST_PASSWORD"]) == ("orch", "pw")
    assert email["DEFAULT_FROM_EMAIL"] == "Orchestrator <o@example.com>"
    with pytest.raises(config.ConfigError, match="exclusive"):
        config.parse_email({"EMAIL_USE_TLS": "1", "EMAIL_USE_SSL": "1"})
    with pytest.raises(config.ConfigError, match="EMAIL_PORT"):
        config.parse_email({"EMAIL_PORT": "smtp"})


def test_the_base_url_of_links_is_checked() -> None:
    assert config.parse_base_url("https://orch.example.com/") == "https://orch.example.com"
    assert config.parse_base_url(" http://10.0.0.5:8000/orch ") == "http://10.0.0.5:8000/orch"
    for bad in ("orch.example.com", "ftp://orch.example.com", "https://"):
        with pytest.raises(config.ConfigError, match="ORCHESTRATOR_BASE_URL"):
            config.parse_base_url(bad)


def test_max_waits_per_agent_defaults_to_10_and_must_be_a_whole_number(tmp_path: Path) -> None:
    def load(**environ: str) -> config.Config:
        return config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path), **environ})

    assert load().max_waits_per_agent == 10
    assert load(ORCHESTRATOR_MAX_WAITS_PER_AGENT="3").max_waits_per_agent == 3
    assert load(ORCHESTRATOR_MAX_WAITS_PER_AGENT="0").max_waits_per_agent == 0  # no cap
    with pytest.raises(config.ConfigError, match="ORCHESTRATOR_MAX_WAITS_PER_AGENT"):
        load(ORCHESTRATOR_MAX_WAITS_PER_AGENT="many")
