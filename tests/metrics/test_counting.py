"""What the counters count, in one process with real commits: committed facts only, each
once, with the figures the events and rows carry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.core import events
from orchestrator.core.approvals import approval_decide
from orchestrator.core.deadlocks import deadlock_break
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Approval,
    Conflict,
    DeadlockPolicy,
    Event,
    Lock,
    LockRequest,
)
from orchestrator.core.resources import resource_create, resource_write
from tests import factories
from tests.agents.test_openai_backend import (  # noqa: F401  (fixtures)
    allowed_key_env,
    api_key,
    backend,
    completion,
    context,
    error,
    server,
)
from tests.metrics.scrape import scrape, value

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _counted(metrics_token: str, metrics_dir) -> None:
    """Every test counts from 0 in a directory of its own, and scrapes with the token."""


def test_grants_count_after_commit_and_a_queued_request_observes_its_wait() -> None:
    team = factories.team()
    first, second = factories.agent(team_=team), factories.agent(team_=team)
    resource_create(team=team, name="doc", value=0)
    held = lock_acquire(agent=first, resource="doc").lock
    samples = scrape()
    assert value(samples, "orchestrator_lock_grants_total", mode="exclusive") == 1
    assert value(samples, "orchestrator_lock_wait_seconds_count") == 0  # granted at once

    assert lock_acquire(agent=second, resource="doc").lock is None  # queued
    assert value(scrape(), "orchestrator_lock_grants_total", mode="exclusive") == 1
    lock_release(lock_id=held.pk, agent=first)  # grants the waiter

    samples = scrape()
    assert value(samples, "orchestrator_lock_grants_total", mode="exclusive") == 2
    assert value(samples, "orchestrator_lock_grants_total", mode="shared") == 0
    assert value(samples, "orchestrator_lock_wait_seconds_count") == 1
    request = LockRequest.objects.get(agent=second)
    waited = (request.resolved_at - request.requested_at).total_seconds()
    granted = Event.objects.get(kind="lock.granted", agent=second)
    assert granted.payload["waited"] == pytest.approx(waited, abs=1e-6)
    assert value(samples, "orchestrator_lock_wait_seconds_sum") == pytest.approx(waited, abs=1e-6)


def test_a_transaction_that_rolls_back_counts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    resource_create(team=team, name="doc", value=0)

    def fail(*args, **kwargs) -> None:
        raise RuntimeError("the database went away at the last statement")

    # The observer has seen the grant by then: its count must go with the rollback.
    monkeypatch.setattr(events.sql, "insert_events", fail)
    with pytest.raises(RuntimeError):
        lock_acquire(agent=agent, resource="doc")
    monkeypatch.undo()
    assert not Lock.objects.exists()
    assert value(scrape(), "orchestrator_lock_grants_total", mode="exclusive") == 0


def test_approvals_pending_their_deadline_and_the_time_to_decide() -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    resource_create(team=team, name="press", value="draft", requires_approval=True)
    result = resource_write(agent=agent, resource="press", value="final", expected_version=0)
    assert result.status == "approval_pending"
    samples = scrape()
    assert value(samples, "orchestrator_approvals_pending") == 1
    assert ("orchestrator_approval_deadline_seconds", frozenset()) not in samples  # none set

    Approval.objects.filter(pk=result.approval.pk).update(
        deadline_at=timezone.now() + timedelta(seconds=90)
    )
    assert 0 < value(scrape(), "orchestrator_approval_deadline_seconds") <= 90

    approval_decide(approval_id=result.approval.pk, decision="approve", user=factories.superuser())
    approval = Approval.objects.get(pk=result.approval.pk)
    samples = scrape()
    assert value(samples, "orchestrator_approvals_pending") == 0
    assert value(samples, "orchestrator_approval_decision_seconds_count") == 1
    assert value(samples, "orchestrator_approval_decision_seconds_sum") == pytest.approx(
        (approval.decided_at - approval.created_at).total_seconds(), abs=1e-6
    )


def test_a_deadlock_is_counted_detected_then_broken_by_the_operator() -> None:
    team = factories.team(deadlock_policy=DeadlockPolicy.ASK_OPERATOR)
    a, b = factories.agent(team_=team), factories.agent(team_=team)
    resource_create(team=team, name="left", value=0)
    resource_create(team=team, name="right", value=0)
    lock_acquire(agent=a, resource="left")
    lock_acquire(agent=b, resource="right")
    lock_acquire(agent=a, resource="right")  # waits for b
    lock_acquire(agent=b, resource="left")  # waits for a: the cycle, found as it queues
    conflict = Conflict.objects.get(kind="deadlock")
    samples = scrape()
    assert value(samples, "orchestrator_deadlocks_total", resolution="detected") == 1
    assert value(samples, "orchestrator_deadlocks_open") == 1
    assert value(samples, "orchestrator_deadlock_oldest_open_seconds") >= 0

    deadlock_break(conflict_id=conflict.pk, victim_id=b.pk, user=factories.superuser())
    samples = scrape()
    assert value(samples, "orchestrator_deadlocks_total", resolution="operator") == 1
    assert value(samples, "orchestrator_deadlocks_total", resolution="policy") == 0
    assert value(samples, "orchestrator_deadlocks_open") == 0
    # The victim's wait was aborted, so a's wait for "right" was granted after its wait.
    assert value(samples, "orchestrator_lock_wait_seconds_count") == 1


def test_each_model_request_is_timed(server, api_key: str) -> None:  # noqa: F811
    server.reply(error(500, "boom"), completion("ok"))  # one retry: two requests
    assert backend(server.url).decide(context()).message == "ok"
    samples = scrape()
    assert value(samples, "orchestrator_model_call_seconds_count") == 2
    assert value(samples, "orchestrator_model_call_seconds_sum") > 0
