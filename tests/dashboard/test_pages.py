"""Server-rendered pages: filters, the Gantt chart, escaping, and the live board selectors."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from orchestrator.core.control import agents_set_paused
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import Conflict
from orchestrator.core.resources import resource_create, resource_write
from orchestrator.dashboard.selectors.board import board_snapshot
from tests import factories
from tests.dashboard import scenes

pytestmark = pytest.mark.django_db(transaction=True)

XSS = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def test_conflicts_filter_by_kind_status_team_and_agent(viewer_client: Client) -> None:
    contested = scenes.contested_write()
    deadlock = scenes.deadlock()
    url = reverse("dashboard:conflicts")
    everything = viewer_client.get(url).content.decode()
    assert everything.count("data-conflict-id=") == Conflict.objects.count() == 2

    def shown(**query) -> set[int]:
        response = viewer_client.get(url, query)
        assert response.status_code == 200
        html = response.content.decode()
        return {c.pk for c in Conflict.objects.all() if f'data-conflict-id="{c.pk}"' in html}

    assert shown(kind="deadlock") == {deadlock.conflict.pk}
    assert shown(kind="write_conflict") == {contested.approval.conflict_id}
    assert shown(team=contested.team.pk) == {contested.approval.conflict_id}
    assert shown(agent=deadlock.agents[0].pk) == {deadlock.conflict.pk}
    assert shown(status="resolved") == set()


def test_conflicts_show_how_and_by_whom_they_were_resolved(operator_client: Client) -> None:
    scene = scenes.deadlock()
    operator_client.post(
        reverse("dashboard:deadlock-break", args=[scene.conflict.pk]),
        {"victim": scene.agents[0].pk, "action": "abort"},
    )
    html = operator_client.get(reverse("dashboard:conflicts"), {"status": "resolved"}).content
    assert b"by operator olivia" in html
    assert b"<td>olivia</td>" in html


def test_conflicts_show_how_many_times_a_refusal_repeated(viewer_client: Client) -> None:
    agent = factories.agent(name=f"retrier {XSS}")
    resource_create(name="doc", value="v0", agent=agent)
    for _ in range(3):
        assert resource_write(agent=agent, resource="doc", value=1, fence=9).status == "stale_fence"
    conflict = Conflict.objects.get()

    html = viewer_client.get(reverse("dashboard:conflicts")).content.decode()

    row = re.search(rf'<tr data-conflict-id="{conflict.pk}">(.*?)</tr>', html, re.S)
    assert row is not None
    assert '<td class="occurrences">3</td>' in row.group(1)
    assert "<script>" not in html.split("<main", 1)[1]
    assert "retrier &lt;img" in row.group(1)


def test_bad_filters_are_form_errors_not_500(viewer_client: Client) -> None:
    for url, query in [
        (reverse("dashboard:conflicts"), {"kind": "nope", "team": "x", "agent": "99999"}),
        (reverse("dashboard:timeline"), {"team": "x", "agent": "-1", "kind": "k" * 500}),
    ]:
        response = viewer_client.get(url, query)
        assert response.status_code == 400, url
        assert b'class="errorlist"' in response.content
    assert viewer_client.get(reverse("dashboard:conflicts"), {"page": "abc"}).status_code == 200


def test_timeline_filters_events_by_kind_prefix_team_agent_and_actor(
    operator_client: Client, operator
) -> None:
    lock = scenes.held_lock()
    other = factories.agent(name="bystander")
    agents_set_paused(agents=[other], paused=True, user=operator)
    url = reverse("dashboard:timeline")

    def kinds(**query) -> list[str]:
        html = operator_client.get(url, query).content.decode()
        return re.findall(r"<tr data-event-id=\"\d+\">.*?<code>([^<]*)</code>", html, re.S)

    assert kinds() == ["agent.paused", "lock.granted", "resource.created"]  # newest first
    assert kinds(kind="lock.") == ["lock.granted"]
    assert kinds(agent=other.pk) == ["agent.paused"]
    assert kinds(actor="user:olivia") == ["agent.paused"]
    assert kinds(team=lock.agent.team_id) == ["lock.granted", "resource.created"]


def test_the_gantt_chart_draws_each_hold_of_a_resource(viewer_client: Client) -> None:
    team = factories.team()
    a = factories.agent(team_=team, name="first-holder")
    b = factories.agent(team_=team, name="second-holder")
    resource_create(name="slot", value=None, team=team)
    held = lock_acquire(agent=a, resource="slot").lock
    lock_release(lock_id=held.pk, agent=a)
    lock_acquire(agent=b, resource="slot")
    html = viewer_client.get(reverse("dashboard:timeline"), {"resource": "slot"}).content.decode()
    assert 'id="gantt"' in html
    assert html.count('<rect class="bar') == 2
    assert "first-holder" in html and "second-holder" in html
    assert "end-released" in html and "end-live" in html
    missing = viewer_client.get(reverse("dashboard:timeline"), {"resource": "nope"})
    assert b"No resource has that name." in missing.content
    # Names are unique within a team only: the picker offers team::name.
    resource_create(name="slot", team=factories.team(name="elsewhere"))
    page = viewer_client.get(reverse("dashboard:timeline"), {"resource": f"{team.name}::slot"})
    assert page.content.decode().count('<rect class="bar') == 2
    assert f'<option value="{team.name}::slot">' in page.content.decode()
    ambiguous = viewer_client.get(reverse("dashboard:timeline"), {"resource": "slot"})
    assert b"No resource has that name." in ambiguous.content


def test_agent_text_is_escaped_in_every_server_rendered_page(operator_client: Client) -> None:
    team = factories.team(name=f"team {XSS}", conflict_policy="ask_operator")
    agent = factories.agent(team_=team, name=f"agent {XSS}")
    other = factories.agent(team_=team, name="other")
    resource_create(name=f"res {XSS}", value={"html": XSS}, team=team)
    resource_write(agent=other, resource=f"res {XSS}", value=XSS, expected_version=0)
    resource_write(agent=agent, resource=f"res {XSS}", value=XSS, expected_version=0, note=XSS)
    run = factories.run(team=team, goal=XSS)
    run.steps.create(
        agent=agent,
        number=1,
        status="done",
        transcript=[{"role": "assistant", "content": XSS}],
        tool_calls=[{"id": "1", "tool": XSS, "arguments": {"x": XSS}, "result": {"y": XSS}}],
    )
    pages = [
        reverse("dashboard:approvals"),
        reverse("dashboard:conflicts"),
        reverse("dashboard:timeline"),
        reverse("dashboard:run", args=[run.pk]),
        reverse("dashboard:timeline") + f"?resource=res%20{XSS}",
    ]
    for url in pages:
        html = operator_client.get(url).content.decode()
        assert "<script>window.pwned" not in html, url
        assert "<img src=x" not in html, url
        assert "&lt;script&gt;" in html or "&lt;img" in html, url


def test_the_snapshot_derives_waiting_for_a_lock_and_for_a_human() -> None:
    scenes.contested_write()  # a write waiting for an approval
    scene = scenes.deadlock()
    lock = scenes.held_lock("fax", "fax-holder")
    waiter = factories.agent(team_=lock.agent.team, name="queued")
    lock_acquire(agent=waiter, resource="fax")
    paused = factories.agent(name="sleepy")
    agents_set_paused(agents=[paused], paused=True)
    state = board_snapshot()["state"]
    status = {agent["name"]: agent["status"] for agent in state["agents"].values()}
    assert status["doc-writer-2"] == "waiting_human"  # its write waits for an approval
    assert status["ledger-clerk-a"] == status["ledger-clerk-b"] == "waiting_human"  # deadlock
    assert status["queued"] == "waiting_lock"
    assert status["sleepy"] == "paused"
    assert status["fax-holder"] == "idle"
    fax = next(r for r in state["resources"].values() if r["name"] == "fax")
    assert [h["lock_id"] for h in fax["holders"]] == [lock.pk]
    assert [w["agent_name"] for w in fax["waiters"]] == ["queued"]
    (deadlock,) = state["deadlocks"].values()
    assert set(deadlock["agent_ids"]) == {a.pk for a in scene.agents}
    assert state["counts"] == {"approvals": 1, "conflicts": 2}


def test_a_patch_for_a_started_run_brings_its_agents_and_their_status(redis_conn) -> None:
    from agents.runtime import run_start
    from orchestrator.core.models import Event
    from orchestrator.dashboard.selectors.board import board_patch
    from orchestrator.dashboard.selectors.feed import feed_snapshot

    team = factories.team()
    members = [factories.agent(team_=team, name=f"member-{i}") for i in range(2)]
    since = feed_snapshot()["last_id"]
    run = run_start(team=team, goal="g")
    events = [
        {"id": e.pk, "agent": e.agent_id, "subject_type": e.subject_type,
         "subject_id": e.subject_id, "payload": e.payload}
        for e in Event.objects.filter(id__gt=since)
    ]  # fmt: skip
    patch = board_patch(events)
    assert set(patch["runs"]) == {str(run.pk)}
    assert {patch["agents"][str(a.pk)]["status"] for a in members} == {"running"}
    assert str(team.pk) in patch["teams"]


def test_a_teams_row_carries_what_other_teams_share_with_it() -> None:
    """The Graph page's team filter shows the resources a team may use: its own and
    those shared with it (graph.js sharedWith reads these grants)."""
    from orchestrator.core.models import GrantAccess, ResourceGrant

    red, blue = factories.team(name="red"), factories.team(name="blue")
    doc = resource_create(team=red, name="doc")
    ResourceGrant.objects.create(owner=red, team=blue, resource=doc, access=GrantAccess.READ)
    ResourceGrant.objects.create(owner=red, team=blue, prefix="pub/", access=GrantAccess.READ_WRITE)

    teams = board_snapshot()["state"]["teams"]

    assert teams[str(blue.pk)]["shared"] == [
        {"owner": red.pk, "resource": doc.pk, "prefix": "", "access": "read"},
        {"owner": red.pk, "resource": None, "prefix": "pub/", "access": "read_write"},
    ]
    assert teams[str(red.pk)]["shared"] == []
