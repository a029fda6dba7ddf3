"""The Gantt chart knows about folder locks (core/paths.py): a path's chart shows the
holds of the folders above it, marked as via the folder, and a folder's chart those of
the paths under it; the waits for the resource picked line up with the lock that kept
them out (selectors/timeline.py, gantt.py)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.queue import db_now
from orchestrator.core.resources import resource_create
from orchestrator.dashboard.gantt import gantt_chart
from orchestrator.dashboard.selectors.timeline import (
    ABOVE,
    SELF,
    UNDER,
    gantt_subject,
    lock_history,
    resource_names,
)
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def repo(name: str = "repo") -> dict:
    """A team whose ``folder`` agent held ``src/`` while ``editor`` waited for
    ``src/api/views.py``, which it got when the folder was let go."""
    team = factories.team(name=name)
    folder = factories.agent(team_=team, name=f"{name}-folder")
    editor = factories.agent(team_=team, name=f"{name}-editor")
    for path in ("src/", "src/api/views.py", "src/api/urls.py", "docs/index.md", "README"):
        resource_create(team=team, name=path, value=0)
    held = lock_acquire(agent=folder, resource="src/", ttl=600).lock
    asked = lock_acquire(agent=editor, resource="src/api/views.py", ttl=600)
    assert asked.status == "waiting", asked
    lock_release(lock_id=held.pk, agent=folder)  # the path's queue is settled after commit
    return {"team": team, "folder": folder, "editor": editor}


def history(name: str, window=None):
    subject = gantt_subject(name=name)
    assert subject is not None, name
    return lock_history(subject=subject, now=db_now(), window=window)


def sections(gantt) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(resource, relation, {agent: ["hold:<end>" / "wait:<status>", ...]}) per section."""
    return [
        (
            section.name,
            section.relation,
            {
                row.agent: [f"hold:{bar.lock.end or 'live'}" for bar in row.bars]
                + [f"wait:{wait.request.status}" for wait in row.waits]
                for row in section.rows
            },
        )
        for section in gantt.sections
    ]


def test_a_paths_chart_shows_the_holds_of_the_folders_above_it_and_its_waits() -> None:
    scene = repo()
    gantt = history("repo::src/api/views.py")
    assert sections(gantt) == [
        ("src/api/views.py", SELF, {"repo-editor": ["hold:live", "wait:granted"]}),
        ("src/", ABOVE, {"repo-folder": ["hold:released"]}),
    ]
    (wait,) = gantt.rows[0].waits
    (folder_hold,) = gantt.sections[1].rows[0].bars
    # The wait lasted while the folder was held: it ended when the folder was let go.
    assert wait.start >= folder_hold.start and wait.end >= folder_hold.end
    assert scene["editor"].locks.get().acquired_at >= folder_hold.lock.released_at

    chart = gantt_chart(gantt)
    labels = [(row.label, row.header) for row in chart.rows]
    assert labels == [
        ("src/api/views.py", True),
        ("repo-editor", False),
        ("via src/", True),
        ("repo-folder", False),
    ]
    via = chart.rows[3].bars[0]
    assert "rel-above" in via.css and "end-released" in via.css
    assert via.title.startswith("repo-folder: exclusive on src/ (covers src/api/views.py), fence")
    editor_bars = chart.rows[1].bars
    assert [bar.css.split()[0] for bar in editor_bars] == ["bar", "wait"]
    assert "rel-self" in editor_bars[0].css
    assert editor_bars[1].title.startswith("repo-editor: waited for exclusive, ")
    assert editor_bars[1].title.endswith("(granted)")
    assert editor_bars[1].height < editor_bars[0].height


def test_a_folders_chart_shows_the_holds_of_the_paths_under_it() -> None:
    repo()
    gantt = history("repo::src/")
    assert sections(gantt) == [
        ("src/", SELF, {"repo-folder": ["hold:released"]}),
        ("src/api/views.py", UNDER, {"repo-editor": ["hold:live"]}),
    ]
    chart = gantt_chart(gantt)
    assert [row.label for row in chart.rows if row.header] == ["src/", "src/api/views.py"]
    under = chart.rows[-1].bars[0]
    assert "rel-under" in under.css
    assert "exclusive on src/api/views.py (under src/)" in under.title


def test_a_folder_that_only_paths_imply_is_offered_and_charted() -> None:
    """``src/api/`` is no resource, but the tree of the Resources page shows it: the
    picker offers it, and its chart has the holds of the paths under it."""
    repo()
    names = resource_names()
    assert {"repo::src/api/", "repo::docs/", "repo::src/", "repo::README"} <= set(names)
    assert names.count("repo::src/") == 1  # a resource and a folder above others: once
    gantt = history("repo::src/api/")
    assert gantt.subject.resource is None
    # A folder's lock also meets those of the folders above it.
    assert sections(gantt) == [
        ("src/api/", SELF, {}),
        ("src/", ABOVE, {"repo-folder": ["hold:released"]}),
        ("src/api/views.py", UNDER, {"repo-editor": ["hold:live"]}),
    ]
    chart = gantt_chart(gantt)
    assert [row.label for row in chart.rows[:3]] == [
        "src/api/",
        "(no holds in this window)",
        "via src/",
    ]
    # A plain folder name is enough while one team has paths under it.
    assert gantt_subject(name="src/api/").team_id == gantt.subject.team_id
    repo("fork")
    assert gantt_subject(name="src/api/") is None  # two teams: say which
    assert gantt_subject(name="fork::src/api/").name == "src/api/"
    for nothing in ("repo::nope/", "repo::src/api", "nope::src/", "src/api/views.py/"):
        assert gantt_subject(name=nothing) is None, nothing


def test_a_plain_resources_chart_is_as_before_with_its_waits() -> None:
    team = factories.team()
    first, second = (factories.agent(team_=team, name=f"printer-{i}") for i in (1, 2))
    resource_create(team=team, name="printer")
    held = lock_acquire(agent=first, resource="printer").lock
    assert lock_acquire(agent=second, resource="printer").status == "waiting"
    chart = gantt_chart(history("printer"))
    assert [(row.label, row.header) for row in chart.rows] == [
        ("printer-1", False),
        ("printer-2", False),
    ]
    (waiting,) = chart.rows[1].bars
    assert waiting.css == "wait status-waiting" and waiting.title.endswith("(still waiting)")
    lock_release(lock_id=held.pk, agent=first)
    chart = gantt_chart(history("printer"))
    assert [bar.css.split()[0] for bar in chart.rows[1].bars] == ["bar", "wait"]


def test_the_chart_reads_a_folder_in_three_queries_whatever_the_paths_under_it() -> None:
    team = factories.team(name="big")
    agents = [factories.agent(team_=team, name=f"big-{i}") for i in range(3)]

    def queries() -> int:
        subject, now = gantt_subject(name="big::lib/"), db_now()
        with CaptureQueriesContext(connection) as captured:
            lock_history(subject=subject, now=now, window=None)
        return len(captured)

    resource_create(team=team, name="lib/")
    for i in range(3):
        resource_create(team=team, name=f"lib/m{i}.py")
        lock_acquire(agent=agents[i], resource=f"lib/m{i}.py")
    few = queries()
    for i in range(3, 40):
        resource_create(team=team, name=f"lib/pkg{i}/m.py")
        lock_acquire(agent=agents[i % 3], resource=f"lib/pkg{i}/m.py")
    assert queries() == few == 3  # fit the window, the holds, the waits


def test_the_timeline_page_draws_the_sections_and_escapes_paths(viewer_client: Client) -> None:
    repo()
    html = viewer_client.get(
        reverse("dashboard:timeline"), {"resource": "repo::src/api/views.py"}
    ).content.decode()
    assert 'id="lock-timeline"' in html and 'id="gantt"' in html
    assert html.count('<g class="section">') == 2
    assert "via src/" in html and "marked <em>via</em> the folder" in html
    assert html.count('<rect class="bar') == 2 and html.count('<rect class="wait') == 1
    assert '<option value="repo::src/api/">' in html
    folder = viewer_client.get(reverse("dashboard:timeline"), {"resource": "repo::src/"})
    assert b"and of the paths under it" in folder.content
    markup = '<b onmouseover="x()">/'
    resource_create(team=factories.team(name="t"), name=f"{markup}a.py")
    page = viewer_client.get(reverse("dashboard:timeline"), {"resource": f"t::{markup}a.py"})
    text = page.content.decode()
    assert "<b onmouseover" not in text and "&lt;b onmouseover=" in text
