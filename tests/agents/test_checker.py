"""The run checker reads what it needs, not the agents' configs (a scripted agent's
config holds its whole script, and loading it with every step and every lock made
checking a long fault run take tens of gigabytes); its verdict is OK only for a run
that finished with every agent finished and no anomaly."""

from __future__ import annotations

import json
from io import StringIO

import django_rq
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.checker import check_run
from agents.runtime import run_cancel, run_start
from agents.scenarios import increment_script
from orchestrator.core.models import Run
from orchestrator.core.resources import resource_create
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)

INCREMENT = increment_script("counter")


def test_check_run_never_loads_agent_configs(redis_conn) -> None:
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    for i in range(2):
        factories.agent(team_=team, name=f"inc-{i}", backend="scripted",
                        config={"script": INCREMENT * 3})  # fmt: skip
    run = run_start(team=team, goal="count", seed=1)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)

    with CaptureQueriesContext(connection) as queries:
        report = check_run(run_id=run.pk)

    assert (report.status, report.writes, report.total) == ("finished", 6, 0)
    assert not [q["sql"] for q in queries if '"core_agent"."config"' in q["sql"]]


def check_json(run_id: int) -> dict:
    out = StringIO()
    call_command("check_run", str(run_id), "--json", stdout=out)
    return json.loads(out.getvalue())


def verdict(run_id: int) -> str:
    """The last line of check_run's table: its verdict."""
    out = StringIO()
    call_command("check_run", str(run_id), stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def counting_run(*, loop: bool, max_steps: int = 50):
    team = factories.team()
    resource_create(team=team, name="counter", value=0)
    factories.agent(team_=team, name="counter-1", backend="scripted",
                    config={"script": INCREMENT, "loop": loop})  # fmt: skip
    return run_start(team=team, goal="count", max_steps=max_steps, seed=1)


def test_check_run_says_failed_for_a_run_that_failed(redis_conn) -> None:
    """The agent loops until its step limit: no data went wrong, but the run failed and
    its agent never finished, so the verdict is FAILED (it used to be OK)."""
    run = counting_run(loop=True, max_steps=3)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED

    report = check_json(run.pk)
    assert (report["ok"], report["status"]) == (False, "failed")
    assert report["unfinished_agents"] == ["counter-1"]
    assert not any(report["anomalies"].values())
    assert verdict(run.pk) == "FAILED: the run failed; 1 agent did not finish"


def test_check_run_says_ok_for_a_run_that_finished_cleanly(redis_conn) -> None:
    run = counting_run(loop=False)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)

    report = check_json(run.pk)
    assert (report["ok"], report["status"], report["unfinished_agents"]) == (True, "finished", [])
    assert verdict(run.pk) == "OK"


def test_check_run_says_failed_for_a_run_not_ended_or_cancelled(redis_conn) -> None:
    run = counting_run(loop=False)  # its first step is queued, nobody runs it
    assert check_json(run.pk)["ok"] is False
    assert verdict(run.pk) == "FAILED: the run has not ended; 1 agent did not finish"
    run_cancel(run_id=run.pk)
    assert verdict(run.pk) == "FAILED: the run was cancelled; 1 agent did not finish"
