"""The admin of approval policies (orchestrator/core/admin_policies.py): policies are
validated, standing rules are made through rule_create (an Event naming the user) and
revoked, never edited, and an approval's votes are shown on it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from orchestrator.core.approvals import approval_decide
from orchestrator.core.models import ApprovalPolicy, Event, StandingRule
from orchestrator.core.policies import rule_create
from orchestrator.core.resources import approval_request, resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def root():
    return factories.superuser("root")


@pytest.fixture
def client(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


def add(client: Client, model: str, data: dict):
    return client.post(reverse(f"admin:core_{model}_add"), {**data, "_save": "Save"})


def test_a_policy_is_validated_before_it_is_saved(client: Client) -> None:
    team, other = factories.team(), factories.team()
    doc = resource_create(team=team, name="doc", value=0)
    elsewhere = resource_create(team=other, name="elsewhere", value=0)
    base = {"team": team.pk, "on_deadline": "reject", "required_approvals": "1"}
    refused = [
        ({"on_deadline": "escalate", "deadline_seconds": "60"}, "Escalation needs a group"),
        ({"on_deadline": "escalate"}, "Escalation needs a deadline"),
        ({"required_approvals": "0"}, "Between 1 and 10 operators"),
        ({"required_approvals": "11"}, "Between 1 and 10 operators"),
        ({"deadline_seconds": "0"}, "At least 1 second"),
        ({"resource": elsewhere.pk}, "The resource must belong to the team"),
        ({"resource": doc.pk, "prefix": "d"}, "not both"),
    ]
    for data, message in refused:
        response = add(client, "approvalpolicy", {**base, **data})
        assert response.status_code == 200, data  # the form again, with its errors
        assert message in response.content.decode(), data
    assert not ApprovalPolicy.objects.exists()
    leads = Group.objects.create(name="leads")
    done = add(
        client,
        "approvalpolicy",
        {**base, "on_deadline": "escalate", "deadline_seconds": "60", "escalate_to": leads.pk,
         "required_approvals": "2"},
    )  # fmt: skip
    assert done.status_code == 302, done.content.decode()
    policy = ApprovalPolicy.objects.get()
    assert (policy.on_deadline, policy.escalate_to, policy.required_approvals) == (
        "escalate",
        leads,
        2,
    )
    listed = client.get(reverse("admin:core_approvalpolicy_changelist")).content.decode()
    assert "all the team&#x27;s resources" in listed and "leads" in listed


def test_a_rule_added_in_the_admin_is_made_by_the_service_with_its_event(
    client: Client, root
) -> None:
    team = factories.team()
    agent = factories.agent(team_=team, name="bot")
    resource_create(team=team, name="doc", value=0)
    data = {"team": team.pk, "action": "reject", "agent": agent.pk, "prefix": "do",
            "max_uses": "2", "reason": "frozen", "uses": "7"}  # fmt: skip
    response = add(client, "standingrule", data)
    assert response.status_code == 302, response.content.decode()
    rule = StandingRule.objects.get()
    assert (rule.action, rule.agent, rule.prefix, rule.max_uses) == ("reject", agent, "do", 2)
    assert rule.uses == 0  # read-only
    assert rule.created_by == root
    event = Event.objects.get(kind="rule.created")
    assert event.actor == "user:root" and event.payload["rule"] == rule.pk
    assert response["Location"] == reverse("admin:core_standingrule_changelist")


def test_a_bad_rule_is_refused_with_form_errors_and_nothing_is_written(client: Client) -> None:
    team, other = factories.team(), factories.team()
    doc = resource_create(team=team, name="doc", value=0)
    stranger = factories.agent(team_=other)
    base = {"team": team.pk, "action": "approve"}
    refused = [
        ({"resource": doc.pk, "max_uses": "0"}, "At least 1 write"),
        ({}, "Give a resource or a prefix"),
        ({"resource": doc.pk, "prefix": "d"}, "not both"),
        ({"prefix": "d", "agent": stranger.pk}, "The agent must belong to the team"),
    ]
    for data, message in refused:
        response = add(client, "standingrule", {**base, **data})
        assert response.status_code == 200, data
        assert message in response.content.decode(), data
    assert not StandingRule.objects.exists()
    assert not Event.objects.filter(kind="rule.created").exists()


def test_rules_are_revoked_never_edited_or_deleted(client: Client) -> None:
    team = factories.team()
    resource_create(team=team, name="doc", value=0)
    rule = rule_create(user=None, action="approve", team_id=team.pk, prefix="d")
    change = reverse("admin:core_standingrule_change", args=[rule.pk])
    assert client.get(change).status_code == 200  # view only
    assert client.post(change, {"action": "reject", "prefix": "x"}).status_code == 403
    delete = reverse("admin:core_standingrule_delete", args=[rule.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    listing = reverse("admin:core_standingrule_changelist")
    assert "rule #" in client.get(listing).content.decode()
    answer = client.post(listing, {"action": "revoke", "_selected_action": [rule.pk]})
    assert answer.status_code == 302
    rule.refresh_from_db()
    assert (rule.action, rule.prefix, rule.active) == ("approve", "d", False)
    assert Event.objects.get(kind="rule.revoked").actor == "user:root"


def test_an_approval_shows_its_votes(client: Client) -> None:
    team = factories.team()
    agent = factories.agent(team_=team)
    resource_create(team=team, name="doc", value=0)
    ApprovalPolicy.objects.create(team=team, required_approvals=2)
    approval = approval_request(agent=agent, resource="doc", value=1).approval
    approval_decide(approval_id=approval.pk, decision="approve", user=factories.superuser("ann"))
    page = client.get(reverse("admin:core_approval_change", args=[approval.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Approval votes" in html and "ann" in html
    votes = client.get(reverse("admin:core_approvalvote_changelist")).content.decode()
    assert "ann" in votes
