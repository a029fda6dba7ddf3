"""docs/operations.md's Grafana dashboard and Prometheus rules name only metrics that
/metrics serves, and cover every one of them."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.utils import timezone

from orchestrator.core.models import Approval
from orchestrator.core.resources import resource_create, resource_write
from tests import factories
from tests.metrics.scrape import scrape
from tests.metrics.test_endpoint import METRICS

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "orchestrator.json"
RULES = DOCS / "prometheus" / "orchestrator-rules.yml"
NAME = re.compile(r"\borchestrator_[a-z_]+\b")


@pytest.fixture
def served(metrics_token: str, metrics_dir, redis_conn) -> set[str]:
    """Every sample name of a scrape, with a pending approval that has a deadline (the
    deadline gauge is there only then)."""
    team = factories.team()
    agent = factories.agent(team_=team)
    resource_create(team=team, name="press", value="draft", requires_approval=True)
    pending = resource_write(agent=agent, resource="press", value="final", expected_version=0)
    Approval.objects.filter(pk=pending.approval.pk).update(
        deadline_at=timezone.now() + timedelta(minutes=5)
    )
    return {name for name, _labels in scrape()}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


@pytest.mark.django_db
def test_the_dashboard_names_served_metrics_and_every_metric_has_a_panel(served) -> None:
    exprs = dashboard_exprs()
    named = {name for expr in exprs for name in NAME.findall(expr)}
    assert named, "no expression in the dashboard"
    assert named <= served, sorted(named - served)
    for metric in METRICS:
        assert any(name.startswith(metric) for name in named), metric


@pytest.mark.django_db
def test_the_alert_rules_name_served_metrics(served) -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    alerts = {rule["alert"]: rule["expr"] for rule in rules}
    for alert, expr in alerts.items():
        named = set(NAME.findall(expr))
        assert named <= served, (alert, sorted(named - served))
    # The three the issue asks for: an approval near its deadline, a deadlock unresolved
    # for over a minute, lease expiries climbing.
    assert "orchestrator_approval_deadline_seconds" in alerts["OrchestratorApprovalNearDeadline"]
    assert "> 60" in alerts["OrchestratorDeadlockUnresolved"]
    assert "orchestrator_lease_expired_total" in alerts["OrchestratorLeaseExpiriesClimbing"]
