"""GET /metrics: off without its setting, refused without its token, the Prometheus text
format with it, and never a 500."""

from __future__ import annotations

import pytest
import redis
from django.test import Client
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from orchestrator.core import metrics
from tests.metrics.scrape import TOKEN, parse, value

pytestmark = pytest.mark.django_db

# Every metric of issue 17, by the name its samples start with.
METRICS = [
    "orchestrator_lock_wait_seconds",
    "orchestrator_lock_grants_total",
    "orchestrator_lease_expired_total",
    "orchestrator_fencing_rejections_total",
    "orchestrator_write_conflicts_total",
    "orchestrator_deadlocks_total",
    "orchestrator_approvals_pending",
    "orchestrator_approval_decision_seconds",
    "orchestrator_step_duration_seconds",
    "orchestrator_model_call_seconds",
    "orchestrator_queue_jobs",
]


def get(client: Client, authorization: str | None = None):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    return client.get("/metrics", **headers)


def test_without_the_setting_it_is_not_there(client: Client, settings) -> None:
    settings.ORCHESTRATOR_METRICS_TOKEN = None
    assert get(client).status_code == 404
    assert get(client, f"Bearer {TOKEN}").status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer wrong-token-of-some-length",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
def test_a_request_without_the_token_gets_401(
    client: Client, metrics_token: str, authorization: str | None
) -> None:
    response = get(client, authorization)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"orchestrator_" not in response.content


def test_with_the_token_it_is_the_prometheus_text_format(
    client: Client, metrics_token: str, metrics_dir, redis_conn
) -> None:
    response = get(client, f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert "no-store" in response["Cache-Control"]
    assert "Set-Cookie" not in response  # no session: nothing to keep
    text = response.content.decode()
    for name in METRICS:
        assert f"\n{name}" in text, name
    samples = parse(text)  # the text parses
    assert value(samples, "orchestrator_approvals_pending") == 0
    assert value(samples, "orchestrator_queue_jobs", queue="steps") == 0
    assert value(samples, "orchestrator_lock_grants_total", mode="exclusive") == 0
    # The scheme's case does not matter (RFC 7235); an OpenMetrics scraper gets OpenMetrics.
    assert get(client, f"bearer {TOKEN}").status_code == 200
    openmetrics = client.get(
        "/metrics",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
    )
    assert openmetrics["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.content.decode().endswith("# EOF\n")


def test_csrf_and_methods(metrics_token: str) -> None:
    """A scraper has no CSRF cookie: GET needs none, and a POST is a plain 405."""
    client = Client(enforce_csrf_checks=True)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_a_source_that_cannot_be_read_is_left_out_not_a_500(
    client: Client, metrics_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> None:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(metrics, "_queue_gauge", down)
    response = get(client, f"Bearer {TOKEN}")
    assert response.status_code == 200
    text = response.content.decode()
    assert "orchestrator_queue_jobs" not in text
    assert "orchestrator_approvals_pending 0.0" in text


def test_a_scrape_that_fails_is_a_503(
    client: Client, metrics_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(accept: str | None = None) -> tuple[bytes, str]:
        raise OSError("the metrics directory is gone")

    monkeypatch.setattr(metrics, "exposition", broken)
    response = get(client, f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/plain")


def test_only_orchestrator_metrics_are_served(client: Client, metrics_token: str) -> None:
    """Libraries make metrics of their own in every process (django_rq's admin module
    does): they are in the directory, not in the scrape."""
    assert list(metrics.directory().glob("summary_*.db"))  # django_rq's, in this run's
    text = get(client, f"Bearer {TOKEN}").content.decode()
    names = {name for name, _labels in parse(text)}
    assert names and all(name.startswith("orchestrator_") for name in names), sorted(names)
