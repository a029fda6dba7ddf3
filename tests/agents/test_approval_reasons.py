"""The reason of a decision reaches a runtime agent: in its next step's transcript (the
tool message of its waiting request_approval call), whoever decided: an operator's
rejection, an operator's edit, or a policy's deadline."""

from __future__ import annotations

import json
from datetime import timedelta

import django_rq
import pytest
from django.utils import timezone

from agents.runtime import run_start
from orchestrator.core.approvals import approval_decide
from orchestrator.core.models import Approval, ApprovalPolicy, Step
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.resources import resource_create
from tests import factories
from tests.workers import SimpleWorker

pytestmark = pytest.mark.django_db(transaction=True)


def drain() -> None:
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)


def asking_agent(team):
    script = [
        {"tool": "request_approval",
         "args": {"resource": "doc", "value": {"text": "mine"}, "note": "please"}},
        {"tool": "finish", "args": {}},
    ]  # fmt: skip
    return factories.agent(team_=team, name="asker", backend="scripted", config={"script": script})


def waiting_approval(redis_conn, team) -> tuple[Step, Approval]:
    resource_create(team=team, name="doc", value={"text": "old"})
    agent = asking_agent(team)
    run = run_start(team=team, goal="ask", agents=[agent])
    drain()
    step = Step.objects.get(run=run, agent=agent, number=1)
    assert step.status == "waiting"
    return step, Approval.objects.get(agent=agent)


def answer_in_transcript(step: Step) -> dict:
    step.refresh_from_db()
    assert step.status == "done"
    messages = [m for m in step.transcript if m.get("role") == "tool"]
    assert messages, step.transcript
    return json.loads(messages[-1]["content"])


def test_an_operators_rejection_reason_reaches_the_agent(redis_conn) -> None:
    step, approval = waiting_approval(redis_conn, factories.team())
    approval_decide(
        approval_id=approval.pk,
        decision="reject",
        user=factories.superuser(),
        note="cite a source first",
    )
    drain()
    answer = answer_in_transcript(step)
    assert (answer["status"], answer["detail"]) == ("rejected", "cite a source first")


def test_an_operators_edit_reaches_the_agent_with_the_value_written(redis_conn) -> None:
    step, approval = waiting_approval(redis_conn, factories.team())
    approval_decide(
        approval_id=approval.pk,
        decision="approve",
        user=factories.superuser(),
        value={"text": "theirs"},
        note="shortened",
    )
    drain()
    answer = answer_in_transcript(step)
    assert answer["status"] == "edited"
    assert answer["value"] == {"text": "theirs"}
    assert answer["detail"] == "shortened"


def test_a_deadline_reaches_the_agent_as_the_policys_reason(redis_conn) -> None:
    team = factories.team()
    ApprovalPolicy.objects.create(team=team, deadline_seconds=60)
    step, approval = waiting_approval(redis_conn, team)
    Approval.objects.filter(pk=approval.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert monitor_sweep().deadlines == {"rejected": 1}
    drain()
    answer = answer_in_transcript(step)
    assert answer["status"] == "rejected"
    assert "rejected by the approval policy" in answer["detail"]
