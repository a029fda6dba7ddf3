from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.metrics.scrape import TOKEN, own_directory


@pytest.fixture
def metrics_token(settings) -> str:
    """/metrics on, with the tests' token."""
    settings.ORCHESTRATOR_METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    """A Prometheus directory for this test only: every count in it is the test's."""
    with own_directory(tmp_path / "metrics") as directory:
        yield directory
