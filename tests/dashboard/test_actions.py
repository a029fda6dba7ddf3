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


def test_start_a_run_from_the_new_run_form(operator, operator_client: Client, redis_conn) -> None:
    import django_rq

    from tests.workers import SimpleWorker

    team, other = factories.team(name="desk"), factories.team(name="elsewhere")
    ann = factories.agent(team_=team, name="ann", role="books rooms")
    factories.agent(team_=team, name="bob")
    factories.agent(team_=other, name="stranger")
    form = operator_client.get(reverse("dashboard:run-new") + f"?team={team.pk}")
    assert form.status_code == 200
    page = form.content.decode()
    assert f'<option value="{team.pk}" selected>desk</option>' in page
    assert f'data-team="{team.pk}"' in page and "books rooms" in page
    # The form's own CSRF token, as a browser sends it.
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    client.get(reverse("dashboard:run-new"))
    data = {"team": team.pk, "goal": "Book room 1 at 9", "max_steps": "7", "agents": [ann.pk]}
    assert client.post(reverse("dashboard:run-new"), data).status_code == 403  # no token
    assert not Run.objects.exists()
    data["csrfmiddlewaretoken"] = client.cookies["csrftoken"].value
    response = client.post(reverse("dashboard:run-new"), data)
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:run", args=[run.pk])
    assert (run.team, run.goal, run.max_steps, run.status) == (
        team,
        "Book room 1 at 9",
        7,
        "running",
    )
    assert run.created_by == operator
    assert_event_names("run.started", "olivia")
    assert list(run.steps.values_list("agent__name", "number", "status")) == [("ann", 1, "queued")]
    assert django_rq.get_queue("steps").count == 1  # the first step is enqueued
    shown = client.get(response["Location"]).content.decode()
    assert f"Run #{run.pk} started: 1 agent, first steps queued." in shown
    django_rq.get_worker("steps", worker_class=SimpleWorker).work(burst=True)
    run.refresh_from_db()
    assert run.status == "finished"  # the default script calls finish
    # No agent ticked: every agent of the team.
    everyone = operator_client.post(
        reverse("dashboard:run-new"), {"team": team.pk, "goal": "all", "max_steps": 5}, **JSON
    )
    assert everyone.status_code == 201, everyone.content
    started = Run.objects.get(pk=everyone.json()["run"])
    assert sorted(started.steps.values_list("agent__name", flat=True)) == ["ann", "bob"]


def test_bad_new_run_input_gets_form_errors_and_starts_nothing(operator_client: Client) -> None:
    team, empty = factories.team(name="desk"), factories.team(name="empty")
    factories.agent(team_=team, name="ann")
    stranger = factories.agent(name="stranger")
    url = reverse("dashboard:run-new")
    good = {"team": team.pk, "goal": "go", "max_steps": 5}
    cases = [
        ({**good, "goal": ""}, "goal", "This field is required."),
        ({**good, "max_steps": 0}, "max_steps", "greater than or equal to 1"),
        ({**good, "max_steps": "many"}, "max_steps", "Enter a whole number."),
        ({**good, "team": 424242}, "team", "Select a valid choice."),
        ({**good, "agents": [stranger.pk]}, "agents", "Not agents of team desk: stranger."),
        ({**good, "team": empty.pk}, "team", "Team empty has no agents yet"),
        ({**good, "seed": -1}, "seed", "greater than or equal to 0"),
        ({**good, "goal": "x" * 5001}, "goal", "at most 5000 characters"),
    ]
    for data, field, message in cases:
        page = operator_client.post(url, data)
        assert page.status_code == 400, (data, page.status_code)
        assert message in page.content.decode(), (field, message)
        answer = operator_client.post(url, data, **JSON)
        assert answer.status_code == 400
        assert any(message in error for error in answer.json()["errors"][field]), answer.json()
    assert not Run.objects.exists()
    assert not Event.objects.filter(kind="run.started").exists()


def test_a_new_run_with_a_busy_agent_is_refused_on_the_form(
    operator_client: Client, redis_conn
) -> None:
    team = factories.team(name="desk")
    factories.agent(team_=team, name="ann")
    first = run_start(team=team, goal="first")
    data = {"team": team.pk, "goal": "second", "max_steps": 5}
    page = operator_client.post(reverse("dashboard:run-new"), data)
    assert page.status_code == 409
    assert f"Agent ann is still taking steps in run #{first.pk}." in page.content.decode()
    answer = operator_client.post(reverse("dashboard:run-new"), data, **JSON)
    assert (answer.status_code, answer.json()["error"]) == (409, "agent_busy")
    assert list(Run.objects.values_list("pk", flat=True)) == [first.pk]


def test_the_admin_adds_runs_through_the_dashboard_form_and_shows_them_read_only(
    redis_conn,
) -> None:
    admin = builders.client_for(factories.superuser())
    add = admin.get(reverse("admin:core_run_add"))
    assert add.status_code == 302 and add["Location"] == reverse("dashboard:run-new")
    team = factories.team()
    factories.agent(team_=team)
    run = run_start(team=team, goal="watch me")
    change = admin.get(reverse("admin:core_run_change", args=[run.pk]))
    assert change.status_code == 200
    assert b'name="goal"' not in change.content  # nothing to edit by hand
    posted = admin.post(reverse("admin:core_run_change", args=[run.pk]), {"goal": "changed"})
    assert posted.status_code == 403
    run.refresh_from_db()
    assert run.goal == "watch me"


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
