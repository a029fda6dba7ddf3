"""Reading /metrics in tests: the scrape parsed into samples, and a directory of one's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.core import metrics

TOKEN = "metrics-test-token-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text scrape, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series that is not there (never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: Client | None = None) -> Samples:
    """GET /metrics with the token (the caller set ORCHESTRATOR_METRICS_TOKEN to TOKEN)."""
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


@contextmanager
def own_directory(directory: Path) -> Iterator[Path]:
    """This process counts in ``directory`` (and the processes it starts, through the
    environment), then goes back to the run's directory."""
    previous = metrics.directory()
    metrics.use_directory(directory)
    try:
        yield directory
    finally:
        if previous is not None:
            metrics.use_directory(previous)
