"""Operator actions: each goes through its service and leaves an Event naming the user."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from agents.runtime import run_start
from orchestrator.core.models import (
    Agent,
    Approval,
    Conflict,
    Event,
    Lock,
    LockRequest,
    Resource,
    Run,
    Switchboard,
    Team,
)
from tests import factories
from tests.dashboard import builders, scenes

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"HTTP_ACCEPT": "application/json"}


def last_event(kind: str) -> Event:
    return Event.objects.filter(kind=kind).order_by("-id").first()


def assert_event_names(kind: str, username: str) -> Event:
    event = last_event(kind)
    assert event is not None, f"no {kind} event"
    assert event.actor == f"user:{username}"
    assert event.user.get_username() == username
    return event


# --- pause and resume -----------------------------------------------------------------


def test_pause_everything_and_resume(operator_client: Client) -> None:
    url = reverse("dashboard:system-pause")
    response = operator_client.post(url, {"paused": "1"}, HTTP_REFERER="/resources/")
    assert response.status_code == 302 and response["Location"] == "/resources/"
    assert Switchboard.objects.get().paused
    assert_event_names("system.paused", "olivia")
    page = operator_client.get(reverse("dashboard:overview"))
    assert b"Everything is paused" in page.content
    assert b"Paused everything" in page.content  # the message
    again = operator_client.post(url, {"paused": "1"}, **JSON)
    assert again.json() == {"ok": True, "detail": "everything was already paused."}
    operator_client.post(url, {"paused": "0"}, **JSON)
    assert not Switchboard.objects.get().paused
    assert_event_names("system.resumed", "olivia")


def test_a_foreign_referer_is_not_followed(operator_client: Client) -> None:
    response = operator_client.post(
        reverse("dashboard:system-pause"), {"paused": "1"}, HTTP_REFERER="https://evil.example/"
    )
    assert response["Location"] == reverse("dashboard:overview")


def test_pause_and_resume_an_agent_a_team_and_a_run(operator_client: Client) -> None:
    agent = factories.agent()
    run = factories.run(team=agent.team, status="running")
    cases = [
        ("dashboard:agent-pause", agent, "agent"),
        ("dashboard:team-pause", agent.team, "team"),
        ("dashboard:run-pause", run, "run"),
    ]
    for name, row, kind in cases:
        url = reverse(name, args=[row.pk])
        assert operator_client.post(url, {"paused": "1"}, **JSON).json()["ok"]
        row.refresh_from_db()
        assert row.paused
        assert_event_names(f"{kind}.paused", "olivia")
        assert operator_client.post(url, {"paused": "0"}, **JSON).status_code == 200
        row.refresh_from_db()
        assert not row.paused
        assert_event_names(f"{kind}.resumed", "olivia")


def test_bad_pause_input_and_unknown_ids_are_4xx_never_500(operator_client: Client) -> None:
    url = reverse("dashboard:system-pause")
    bad = operator_client.post(url, {"paused": "maybe"}, **JSON)
    assert bad.status_code == 400
    assert bad.json()["errors"]["paused"]
    page = operator_client.post(url, {})
    assert page.status_code == 400 and b"paused" in page.content
    for name in ("dashboard:agent-pause", "dashboard:team-pause", "dashboard:run-pause"):
        missing = operator_client.post(reverse(name, args=[987654]), {"paused": "1"}, **JSON)
        assert missing.status_code == 404, name
        assert missing.json()["ok"] is False
    assert operator_client.post("/actions/agents/abc/pause", {"paused": "1"}).status_code == 404


# --- runs -----------------------------------------------------------------------------


def test_cancel_a_run(operator_client: Client, redis_conn) -> None:
    team = factories.team()
    factories.agent(team_=team)
    run = run_start(team=team, goal="never mind")
    response = operator_client.post(reverse("dashboard:run-cancel", args=[run.pk]), **JSON)
    assert response.status_code == 200, response.content
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert_event_names("run.cancelled", "olivia")
    again = operator_client.post(reverse("dashboard:run-cancel", args=[run.pk]), **JSON)
    assert "already ended" in again.json()["detail"]
    missing = operator_client.post(reverse("dashboard:run-cancel", args=[424242]), **JSON)
    assert missing.status_code == 404


# --- locks ----------------------------------------------------------------------------


def test_force_release_a_lock_grants_the_next_waiter(operator_client: Client) -> None:
    lock = scenes.held_lock()
    waiter = factories.agent(team_=lock.agent.team, name="next-in-line")
    from orchestrator.core.locks import lock_acquire

    lock_acquire(agent=waiter, resource="printer")
    url = reverse("dashboard:lock-release", args=[lock.pk])
    response = operator_client.post(url, {"reason": "stuck"}, **JSON)
    assert response.status_code == 200, response.content
    assert "holder" in response.json()["detail"]
    lock.refresh_from_db()
    assert lock.end == "force_released"
    assert_event_names("lock.force_released", "olivia")
    assert Lock.objects.get(resource__name="printer", released_at__isnull=True).agent == waiter
    gone = operator_client.post(url, {}, **JSON)
    assert gone.status_code == 410
    assert gone.json()["error"] == "lock_not_live"
    page = operator_client.post(url, {}, follow=True)
    assert b"already ended" in page.content
    assert operator_client.post(reverse("dashboard:lock-release", args=[99999])).status_code == 404


# --- deadlocks ------------------------------------------------------------------------


def test_break_a_deadlock_choosing_the_victim(operator_client: Client) -> None:
    scene = scenes.deadlock()
    victim = scene.agents[1]
    url = reverse("dashboard:deadlock-break", args=[scene.conflict.pk])
    response = operator_client.post(url, {"victim": victim.pk, "action": "abort"}, **JSON)
    assert response.status_code == 200, response.content
    conflict = Conflict.objects.get(pk=scene.conflict.pk)
    assert conflict.status == "resolved"
    assert conflict.resolved_by.get_username() == "olivia"
    assert victim.name in conflict.resolution
    assert_event_names("deadlock.broken", "olivia")
    assert not LockRequest.objects.filter(agent=victim, status="waiting").exists()
    # The survivor got what it waited for.
    assert Lock.objects.filter(agent=scene.agents[0], released_at__isnull=True).count() == 2
    twice = operator_client.post(url, {"victim": victim.pk, "action": "abort"}, **JSON)
    assert twice.status_code == 409
    assert twice.json()["error"] == "already_resolved"


def test_breaking_a_deadlock_with_bad_input(operator_client: Client) -> None:
    scene = scenes.deadlock()
    url = reverse("dashboard:deadlock-break", args=[scene.conflict.pk])
    outsider = factories.agent()
    cases = [
        ({"victim": outsider.pk, "action": "abort"}, 400, "invalid_victim"),
        ({"victim": scene.agents[0].pk, "action": "explode"}, 400, "invalid"),
        ({"victim": "x", "action": "abort"}, 400, "invalid"),
        ({}, 400, "invalid"),
    ]
    for data, status, code in cases:
        response = operator_client.post(url, data, **JSON)
        assert response.status_code == status, (data, response.content)
        assert response.json()["error"] == code
    missing = reverse("dashboard:deadlock-break", args=[777777])
    assert operator_client.post(missing, {"victim": 1, "action": "abort"}).status_code == 404
    assert Conflict.objects.get(pk=scene.conflict.pk).status == "open"


# --- approvals ------------------------------------------------------------------------


def test_the_approvals_page_shows_base_current_and_proposed_with_a_diff(
    operator_client: Client,
) -> None:
    scene = scenes.contested_write()
    html = operator_client.get(reverse("dashboard:approvals")).content.decode()
    assert f'id="approval-{scene.approval.pk}"' in html
    assert "first draft\nline two" in html  # base
    assert "first draft\nline 2" in html  # current
    assert "second draft" in html  # proposed
    assert '<span class="del">first draft</span>' in html
    assert '<span class="add">second draft</span>' in html


def test_approve_applies_the_proposed_value(operator_client: Client) -> None:
    scene = scenes.contested_write()
    url = reverse("dashboard:approval-decide", args=[scene.approval.pk])
    response = operator_client.post(url, {"decision": "approve"}, follow=True)
    assert response.status_code == 200
    assert b"approved: applied as version 2" in response.content
    assert Resource.objects.get(name="doc").value == "second draft"
    approval = Approval.objects.get(pk=scene.approval.pk)
    assert approval.status == "approved" and approval.decided_by.get_username() == "olivia"
    assert_event_names("approval.approved", "olivia")


def test_reject_keeps_the_value(operator_client: Client) -> None:
    scene = scenes.contested_write()
    url = reverse("dashboard:approval-decide", args=[scene.approval.pk])
    answer = operator_client.post(url, {"decision": "reject", "note": "no"}, **JSON).json()
    assert answer["ok"] and "rejected" in answer["detail"]
    assert Resource.objects.get(name="doc").value == "first draft\nline 2"
    assert_event_names("approval.rejected", "olivia")


def test_edit_and_approve_writes_the_edited_value(operator_client: Client) -> None:
    scene = scenes.contested_write()
    url = reverse("dashboard:approval-decide", args=[scene.approval.pk])
    edited = {"text": "merged", "lines": [1, 2]}
    response = operator_client.post(
        url, {"decision": "edit", "value": json.dumps(edited), "note": "merged both"}, **JSON
    )
    assert response.status_code == 200, response.content
    assert "edited by the operator" in response.json()["detail"]
    assert Resource.objects.get(name="doc").value == edited
    event = assert_event_names("approval.approved", "olivia")
    assert event.payload["edited"] is True


def test_edit_with_invalid_json_shows_the_form_error(operator_client: Client) -> None:
    scene = scenes.contested_write()
    url = reverse("dashboard:approval-decide", args=[scene.approval.pk])
    page = operator_client.post(url, {"decision": "edit", "value": "{not json"})
    assert page.status_code == 400
    assert b"This is not valid JSON" in page.content
    assert b"{not json" in page.content  # the operator's text is kept to fix it
    empty = operator_client.post(url, {"decision": "edit", "value": "  "}, **JSON)
    assert empty.status_code == 400 and empty.json()["errors"]["value"]
    bad = operator_client.post(url, {"decision": "maybe"}, **JSON)
    assert bad.status_code == 400
    assert Approval.objects.get(pk=scene.approval.pk).status == "pending"
    missing = reverse("dashboard:approval-decide", args=[31337])
    assert operator_client.post(missing, {"decision": "approve"}, **JSON).status_code == 404


def test_two_operators_deciding_the_same_approval(operator_client: Client) -> None:
    scene = scenes.contested_write()
    second = builders.client_for(builders.operator("otto"))
    url = reverse("dashboard:approval-decide", args=[scene.approval.pk])
    assert operator_client.post(url, {"decision": "approve"}, **JSON).status_code == 200
    late = second.post(url, {"decision": "reject"}, **JSON)
    assert late.status_code == 409
    assert late.json()["error"] == "already_decided"
    assert "already approved by olivia" in late.json()["detail"]
    page = second.post(url, {"decision": "reject"}, follow=True)
    assert b"already approved by olivia" in page.content
    assert Resource.objects.get(name="doc").value == "second draft"
    assert Event.objects.filter(kind__startswith="approval.", user__username="otto").count() == 0


def test_the_run_page_lists_steps_and_the_overview_links_it(operator_client: Client) -> None:
    team = Team.objects.create(name="crew")
    agent = Agent.objects.create(team=team, name="scribe")
    run = factories.run(team=team, status="running")
    run.steps.create(
        agent=agent,
        number=1,
        status="done",
        transcript=[
            {
                "role": "assistant",
                "content": "reading the doc",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read", "arguments": '{"resource": "doc"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
        ],
        tool_calls=[
            {"id": "c1", "tool": "read", "arguments": {"resource": "doc"}, "result": {"ok": True}}
        ],
    )
    html = operator_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert "scribe" in html and "reading the doc" in html
    assert "→ read(" in html and "&quot;resource&quot;: &quot;doc&quot;" in html
    assert operator_client.get(reverse("dashboard:run", args=[999])).status_code == 404
