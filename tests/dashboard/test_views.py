"""Views of the live board (selectors/views.py): a page's snapshot carries one page of
rows, or the filtered graph, whatever the size of the board."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.control import agents_set_paused
from orchestrator.core.locks import lock_acquire
from orchestrator.core.models import Resource
from orchestrator.core.resources import resource_create
from orchestrator.dashboard.selectors.board import board_snapshot
from orchestrator.dashboard.selectors.views import ViewError, view_parse, view_snapshot
from tests import factories
from tests.dashboard import scenes

pytestmark = pytest.mark.django_db


def snapshot(**params: object) -> dict:
    return view_snapshot(view_parse(params))


def many_resources(count: int, team=None) -> None:
    team = team or factories.team(name="bulk")
    Resource.objects.bulk_create(
        Resource(name=f"res-{i:04d}", team=team, value={"n": i}) for i in range(count)
    )


def test_a_resources_page_carries_one_page_of_rows_not_the_board() -> None:
    many_resources(300)
    first = snapshot(view="resources", size=50)
    second = snapshot(view="resources", size=50, page=2)
    names = lambda snap: [r["name"] for r in snap["state"]["resources"].values()]  # noqa: E731
    assert len(first["state"]["resources"]) == 50
    assert sorted(names(first)) == [f"res-{i:04d}" for i in range(50)]
    assert sorted(names(second)) == [f"res-{i:04d}" for i in range(50, 100)]
    assert first["view"] | {"ids": None} == {
        "name": "resources",
        "params": {"name": "resources"},
        "total": 300,
        "page": 1,
        "pages": 6,
        "size": 50,
        "ids": None,
    }
    assert first["state"]["agents"] == {}
    # A page past the end shows the last one; the size is bounded.
    assert snapshot(view="resources", page=99)["view"]["page"] == 6
    with pytest.raises(ViewError, match="size"):
        view_parse({"view": "resources", "size": "1000"})


def test_the_snapshot_size_does_not_grow_with_the_board() -> None:
    many_resources(100)
    small = len(json.dumps(snapshot(view="resources", size=50)["state"]["resources"]))
    many_resources(900, team=factories.team(name="more"))
    large = len(json.dumps(snapshot(view="resources", size=50)["state"]["resources"]))
    assert large < small * 1.2


def test_resources_filter_by_name_team_holder_and_contested() -> None:
    lock = scenes.held_lock("printer", "press-agent")
    other = factories.team(name="paper")
    resource_create(name="tray", value=1, team=other)
    resource_create(name="printer-spare", value=1, team=other)
    names = lambda **p: sorted(  # noqa: E731
        r["name"] for r in snapshot(view="resources", **p)["state"]["resources"].values()
    )
    assert names(q="printer") == ["printer", "printer-spare"]
    assert names(q="press-agent") == ["printer"]  # by holder
    assert names(q="paper") == ["printer-spare", "tray"]  # by team name
    assert names(team=other.pk) == ["printer-spare", "tray"]
    assert names(contested="1") == ["printer"]
    assert snapshot(view="resources", contested="1")["view"]["total"] == 1
    assert lock.resource.name == "printer"


def test_a_path_page_brings_the_folders_above_its_paths() -> None:
    team = factories.team(name="code")
    agent = factories.agent(team_=team, name="coder")
    resource_create(name="src/", value=None, team=team)
    resource_create(name="src/api/views.py", value=1, team=team)
    lock_acquire(agent=agent, resource="src/")
    page = snapshot(view="resources", q="views")
    assert sorted(r["name"] for r in page["state"]["resources"].values()) == [
        "src/",
        "src/api/views.py",
    ]
    assert page["view"]["total"] == 1  # the folder is context, not a row of the page


def test_overview_pages_agents_and_summarises_every_status_as_the_board_derives_it() -> None:
    scenes.contested_write()
    scenes.deadlock()
    lock = scenes.held_lock("fax", "fax-holder")
    waiter = factories.agent(team_=lock.agent.team, name="queued")
    lock_acquire(agent=waiter, resource="fax")
    agents_set_paused(agents=[factories.agent(name="sleepy")], paused=True)
    board = board_snapshot()["state"]
    derived: dict[str, int] = {}
    for agent in board["agents"].values():
        derived[agent["status"]] = derived.get(agent["status"], 0) + 1
    view = snapshot(view="overview", size=3)
    assert view["state"]["summary"]["statuses"] == derived
    assert len(view["state"]["agents"]) == 3
    assert view["view"]["total"] == len(board["agents"])
    waiting = snapshot(view="overview", status="waiting_lock")
    assert [a["name"] for a in waiting["state"]["agents"].values()] == ["queued"]
    assert [
        a["name"] for a in snapshot(view="overview", q="sleep")["state"]["agents"].values()
    ] == ["sleepy"]


def waits_in_teams(teams: int, waits: int) -> list:
    """In each team, one holder and ``waits`` agents waiting for its resource."""
    made = []
    for t in range(teams):
        team = factories.team(name=f"crowd-{t}")
        holder = factories.agent(team_=team, name=f"crowd-{t}-holder")
        resource_create(name=f"crowd-{t}-doc", value=0, team=team)
        lock_acquire(agent=holder, resource=f"crowd-{t}-doc")
        for i in range(waits):
            lock_acquire(
                agent=factories.agent(team_=team, name=f"crowd-{t}-w{i}"), resource=f"crowd-{t}-doc"
            )
        made.append(team)
    return made


def test_the_graph_draws_a_page_of_waits_with_every_cycle_first() -> None:
    waits_in_teams(3, 30)
    scene = scenes.deadlock()
    graph = snapshot(view="graph", size=20)
    assert graph["view"]["total"] == 92
    assert graph["view"]["pages"] == 5
    state = graph["state"]
    assert set(state["deadlocks"]) == {str(scene.conflict.pk)}
    # The cycle is drawn whole, and the page is bounded.
    assert {a.pk for a in scene.agents} <= {int(pk) for pk in state["agents"]}
    assert {r.pk for r in scene.resources} <= {int(pk) for pk in state["resources"]}
    assert len(state["agents"]) <= 20 + 3


def test_the_graph_filters_by_team_and_by_agent_and_keeps_the_cycle() -> None:
    crowd = waits_in_teams(2, 5)
    scene = scenes.deadlock()
    other = scenes.deadlock("vault")
    by_team_view = snapshot(view="graph", team=scene.team.pk)
    by_team = by_team_view["state"]
    # Every open deadlock's id, for the browser to tell a new one from those filtered out.
    assert by_team_view["view"]["deadlocks_open"] == sorted([scene.conflict.pk, other.conflict.pk])
    assert set(by_team["deadlocks"]) == {str(scene.conflict.pk)}
    assert {a["name"] for a in by_team["agents"].values()} == {"ledger-clerk-a", "ledger-clerk-b"}
    by_agent = snapshot(view="graph", agent="vault-clerk-a")["state"]
    assert set(by_agent["deadlocks"]) == {str(other.conflict.pk)}
    assert {a["name"] for a in by_agent["agents"].values()} == {"vault-clerk-a", "vault-clerk-b"}
    crowd_team = snapshot(view="graph", team=crowd[0].pk)
    assert crowd_team["state"]["deadlocks"] == {}
    assert crowd_team["view"]["total"] == 5
    # The holder's waiters come with the holder's name: who waits for what it holds.
    holder = snapshot(view="graph", agent="crowd-1-holder")
    assert holder["view"]["total"] == 5
    assert "crowd-1-w4" in {a["name"] for a in holder["state"]["agents"].values()}


def test_a_view_that_does_not_validate_is_refused() -> None:
    for bad in (
        {"view": "everything"},
        {"view": "graph", "team": "x"},
        {"view": "graph", "page": "0"},
    ):
        with pytest.raises(ViewError):
            view_parse(bad)
    assert view_parse({}).name == "nav"
    nav = snapshot()
    assert nav["state"]["resources"] == {} and nav["state"]["agents"] == {}


@pytest.mark.parametrize("name", ["overview", "resources", "graph", "approvals", "timeline"])
def test_a_page_preloads_every_module_its_scripts_import(viewer_client, name: str) -> None:
    """The modules are fetched at once (link rel=modulepreload), not one level of
    imports after another: a module a page imports but does not preload costs a round trip."""
    import re
    from pathlib import Path

    from django.urls import reverse

    static = Path(__file__).resolve().parents[2] / "static" / "orchestrator"
    html = viewer_client.get(reverse(f"dashboard:{name}")).content.decode()
    scripts = re.findall(r'<script type="module" src="/static/orchestrator/([\w.]+)"', html)
    preloaded = set(re.findall(r'rel="modulepreload" href="/static/orchestrator/([\w.]+)"', html))
    imported: set[str] = set()
    todo = list(scripts)
    while todo:
        source = (static / todo.pop()).read_text()
        for module in re.findall(r'^import .* from "\./([\w.]+)";', source, flags=re.M):
            if module not in imported:
                imported.add(module)
                todo.append(module)
    assert scripts and imported
    assert imported - set(scripts) <= preloaded, imported - set(scripts) - preloaded


def test_the_approvals_page_says_when_more_are_pending_than_it_shows(
    viewer_client, monkeypatch
) -> None:
    from django.urls import reverse

    from orchestrator.dashboard.views import pages

    scenes.contested_write("memo")
    scenes.contested_write("note")
    html = viewer_client.get(reverse("dashboard:approvals")).content.decode()
    assert 'id="approvals-more"' not in html
    monkeypatch.setattr(pages, "APPROVALS_SHOWN", 1)
    html = viewer_client.get(reverse("dashboard:approvals")).content.decode()
    assert "Showing the oldest 1 of 2 pending approvals" in html
    assert html.count('class="approval"') == 1


def test_the_filter_forms_take_an_agent_by_name_and_do_not_list_every_agent(
    viewer_client,
) -> None:
    import re

    from django.urls import reverse

    scene = scenes.deadlock()
    for i in range(30):
        factories.agent(name=f"idle-{i:02}")
    for name in ("conflicts", "timeline"):
        url = reverse(f"dashboard:{name}")
        html = viewer_client.get(url).content.decode()
        assert "idle-07" not in html  # no <option> per agent
        by_name = viewer_client.get(url, {"agent": "ledger-clerk-a"})
        by_id = viewer_client.get(url, {"agent": scene.agents[0].pk})
        assert by_name.status_code == by_id.status_code == 200
        rows = lambda r: re.findall(r'data-(?:event|conflict)-id="(\d+)"', r.content.decode())  # noqa: E731
        assert rows(by_name) == rows(by_id) and rows(by_name)
        assert 'value="ledger-clerk-a"' in by_name.content.decode()
        assert viewer_client.get(url, {"agent": "nobody"}).status_code == 400
