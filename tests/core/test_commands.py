"""Management commands: agent_token and monitor."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import Agent, Event, Lock, LockRequest
from orchestrator.core.resources import resource_create
from orchestrator.core.tokens import agent_by_token, token_hash

pytestmark = pytest.mark.django_db(transaction=True)


def test_agent_token_creates_the_agent_and_prints_the_token_last() -> None:
    out, err = StringIO(), StringIO()
    call_command("agent_token", "scout", "--team", "blue", stdout=out, stderr=err)
    token = out.getvalue().strip().splitlines()[-1]
    agent = Agent.objects.get(name="scout")
    assert agent.team.name == "blue"
    assert agent.token_hash == token_hash(token)
    assert agent_by_token(token) == agent
    # A second call rotates the token: the old one stops working.
    out2 = StringIO()
    call_command("agent_token", "scout", stdout=out2, stderr=StringIO())
    assert agent_by_token(token) is None
    assert agent_by_token(out2.getvalue().strip().splitlines()[-1]) == agent
    assert Event.objects.filter(kind="agent.token_reset", actor="cli").count() == 2


def test_monitor_once_expires_leases_and_wakes_waiters() -> None:
    call_command("agent_token", "m1", stdout=StringIO(), stderr=StringIO())
    call_command("agent_token", "m2", stdout=StringIO(), stderr=StringIO())
    a, b = Agent.objects.get(name="m1"), Agent.objects.get(name="m2")
    resource_create(team=a.team, name="r")
    held = lock_acquire(agent=a, resource="r")
    waiting = lock_acquire(agent=b, resource="r")
    past = timezone.now() - timezone.timedelta(seconds=60)
    Lock.objects.filter(pk=held.lock.pk).update(
        acquired_at=past, expires_at=past + timezone.timedelta(seconds=1)
    )
    out = StringIO()
    call_command("monitor", "--once", stdout=out)
    assert "expired=1 granted=1" in out.getvalue()
    assert LockRequest.objects.get(pk=waiting.request.pk).status == "granted"


@pytest.mark.parametrize("policy", [True, False])
def test_leases_of_paused_agents_are_renewed_only_if_the_team_says_so(policy: bool) -> None:
    from orchestrator.core.control import agents_set_paused
    from orchestrator.core.monitor import monitor_sweep
    from tests import factories

    team = factories.team(default_lease_ttl=60, renew_leases_while_paused=policy)
    agent = factories.agent(team_=team)
    resource_create(team=team, name="r")
    held = lock_acquire(agent=agent, resource="r")
    soon = timezone.now() + timezone.timedelta(seconds=5)  # less than half of 60 s left
    Lock.objects.filter(pk=held.lock.pk).update(expires_at=soon)
    agents_set_paused(agents=[agent], paused=True)
    report = monitor_sweep()
    lock = Lock.objects.get(pk=held.lock.pk)
    if policy:
        assert report.renewed == 1
        assert lock.expires_at > soon + timezone.timedelta(seconds=30)
    else:
        assert report.renewed == 0
        assert lock.expires_at == soon
