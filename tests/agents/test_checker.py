"""The run checker reads what it needs, not the agents' configs: a scripted agent's
config holds its whole script, and loading it with every step and every lock made
checking a long fault run take tens of gigabytes."""

from __future__ import annotations

import django_rq
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rq import SimpleWorker

from agents.checker import check_run
from agents.runtime import run_start
from agents.scenarios import increment_script
from orchestrator.core.resources import resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

INCREMENT = increment_script("counter")


def test_check_run_never_loads_agent_configs(redis_conn) -> None:
    team = factories.team()
    resource_create(name="counter", value=0)
    for i in range(2):
        factories.agent(team_=team, name=f"inc-{i}", backend="scripted",
                        config={"script": INCREMENT * 3})  # fmt: skip
    run = run_start(team=team, goal="count", seed=1)
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)

    with CaptureQueriesContext(connection) as queries:
        report = check_run(run_id=run.pk)

    assert (report.status, report.writes, report.total) == ("finished", 6, 0)
    assert not [q["sql"] for q in queries if '"core_agent"."config"' in q["sql"]]
