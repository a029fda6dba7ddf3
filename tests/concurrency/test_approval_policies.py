"""Approval policies under concurrency, in separate processes with their own database
connections: a passed deadline's outcome is applied exactly once with two monitors
running, and two operators approving a two-person write at the same moment apply it
once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from orchestrator.core.models import Approval, ApprovalPolicy, Event, Resource
from orchestrator.core.resources import approval_request, resource_create
from tests import factories
from tests.concurrency.processes import Workers, context

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

APPROVALS = 40
DEADLINE = 120  # liveness only


def _approvals(team, agent, count: int) -> list[int]:
    ids = []
    for index in range(count):
        resource_create(team=team, name=f"doc-{index}", value=0)
        ids.append(
            approval_request(
                agent=agent, resource=f"doc-{index}", value=index + 1, expected_version=0
            ).approval.pk
        )
    return ids


def _run(target: str, kwargs_of: list[dict]) -> list[dict]:
    barrier = context().Barrier(len(kwargs_of))
    with Workers() as workers:
        for kwargs in kwargs_of:
            workers.start(target, barrier=barrier, **kwargs)
        return workers.results(timeout=DEADLINE)


@pytest.mark.parametrize("outcome", ["reject", "approve", "escalate"])
def test_two_monitors_apply_a_deadline_exactly_once(outcome: str) -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    extra = {}
    if outcome == "escalate":
        extra = {"escalate_to": Group.objects.create(name="leads"), "escalation_seconds": 600}
    ApprovalPolicy.objects.create(team=team, deadline_seconds=60, on_deadline=outcome, **extra)
    ids = _approvals(team, agent, APPROVALS)
    Approval.objects.filter(pk__in=ids).update(deadline_at=timezone.now() - timedelta(seconds=1))

    results = _run(
        "tests.concurrency.policy_tasks:monitor_worker",
        [{"approval_ids": ids}, {"approval_ids": list(reversed(ids))}],
    )

    done = {key: sum(r.get(key, 0) for r in results) for key in {k for r in results for k in r}}
    expected = {"reject": "rejected", "approve": "approved", "escalate": "escalated"}[outcome]
    assert done == {expected: APPROVALS}, results
    kind = {"rejected": "approval.rejected", "approved": "approval.approved"}.get(
        expected, "approval.escalated"
    )
    per_approval = Event.objects.filter(kind=kind, subject_id__in=ids)
    assert sorted(per_approval.values_list("subject_id", flat=True)) == sorted(ids)
    statuses = set(Approval.objects.filter(pk__in=ids).values_list("status", flat=True))
    assert statuses == {"pending" if outcome == "escalate" else expected}
    written = Resource.objects.filter(name__startswith="doc-").values_list("version", flat=True)
    assert set(written) == {1 if outcome == "approve" else 0}


def test_two_operators_approving_at_the_same_moment_apply_the_write_once() -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    ApprovalPolicy.objects.create(team=team, required_approvals=2)
    ids = _approvals(team, agent, APPROVALS)
    for name in ("alice", "bob"):
        factories.superuser(name)

    results = _run(
        "tests.concurrency.policy_tasks:operator_worker",
        [{"username": "alice", "approval_ids": ids}, {"username": "bob", "approval_ids": ids}],
    )

    # Each approval: one operator's approval counted first, the other's applied it.
    assert sum(r["applied"] for r in results) == APPROVALS, results
    assert sum(r["counted"] for r in results) == APPROVALS, results
    assert set(Approval.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"approved"}
    written = Resource.objects.filter(name__startswith="doc-").values_list("version", flat=True)
    assert set(written) == {1}
    applied = Event.objects.filter(kind="resource.written", payload__approval__in=ids)
    assert applied.count() == APPROVALS
