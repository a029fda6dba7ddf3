"""The metrics' settings, read from the environment, and the directory `make run` prepares."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.launch import prepare_metrics_dir


def test_metrics_are_off_by_default_and_count_in_the_data_directory(tmp_path: Path) -> None:
    cfg = config.load({"ORCHESTRATOR_DATA_DIR": str(tmp_path)})
    assert cfg.metrics_token is None
    assert cfg.metrics_dir == tmp_path / "metrics"
    given = config.load({"PROMETHEUS_MULTIPROC_DIR": " /run/orchestrator/metrics "})
    assert given.metrics_dir == Path("/run/orchestrator/metrics")


def test_the_token_is_long_enough_and_has_no_spaces() -> None:
    assert config.load({"ORCHESTRATOR_METRICS_TOKEN": "  "}).metrics_token is None
    token = "0123456789abcdef"
    assert config.load({"ORCHESTRATOR_METRICS_TOKEN": f" {token}\n"}).metrics_token == token
    for bad in ("changeme", "0123456789 abcdef"):
        with pytest.raises(config.ConfigError, match="ORCHESTRATOR_METRICS_TOKEN"):
            config.load({"ORCHESTRATOR_METRICS_TOKEN": bad})


def test_an_agent_cannot_name_the_metrics_settings_as_its_key() -> None:
    for name in ("ORCHESTRATOR_METRICS_TOKEN", "PROMETHEUS_MULTIPROC_DIR"):
        with pytest.raises(config.ConfigError, match=name):
            config.load({"ORCHESTRATOR_MODEL_KEY_ENVS": f"OPENAI_API_KEY,{name}"})


def test_make_run_empties_the_directory_of_its_metric_files_only(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    assert prepare_metrics_dir(directory) == directory and directory.is_dir()  # made
    (directory / "counter_123.db").write_bytes(b"old counts")
    (directory / "histogram_123.db").write_bytes(b"old counts")
    (directory / "notes.txt").write_text("not ours")
    prepare_metrics_dir(directory)
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt"]
