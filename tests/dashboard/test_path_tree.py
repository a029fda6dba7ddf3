"""The tree of paths that the Resources page draws (static/orchestrator/pathtree.js), run
in Chromium on board rows that the core's own locks produced: nesting by ``/``, implied
folders, the subtree a held folder covers, the lock a waiter is blocked by (the one the
core's busy answer names), and that the board's patches keep it true.

The module is plain data in, plain data out: it is imported into a blank page whose
static files Playwright serves from the checkout (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from orchestrator.core.events import event_messages_after
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.resources import resource_create
from orchestrator.dashboard.selectors.board import board_apply, board_patch, board_snapshot
from tests import factories
from tests.dashboard.servers import CHROMIUM

STATIC = Path(__file__).resolve().parents[2] / "static"
ORIGIN = "http://pathtree.test"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)"
    ),
]

# The forest as JSON: each node by path, its links as paths, locks as phrases.
FOREST = """
async ({ rows, closed, needle }) => {
  const t = await import("/static/orchestrator/pathtree.js");
  const forest = t.pathForest(rows);
  const locks = (list) => list.map(t.lockPhrase);
  const plain = (node) => ({
    label: node.label, depth: node.depth, folder: node.folder,
    resource: node.resource ? node.resource.name : null,
    parent: node.parent ? node.parent.path : null,
    children: node.children.map((child) => child.path),
    covered: locks(node.covered),
    cover_text: node.covered.length ? t.coverText(node.covered) : null,
    below: node.below, below_text: t.belowText(node.below),
    blockers: Object.fromEntries(
      Object.entries(node.blockers).map(([id, list]) => [id, locks(list)])),
    blocker_texts: Object.values(node.blockers).map(t.blockerText),
  });
  return forest.map((tree) => ({
    team: tree.team, size: tree.size, roots: tree.roots.map((root) => root.path),
    nodes: Object.fromEntries([...tree.nodes.values()].map((node) => [node.path, plain(node)])),
    visible: t.visibleNodes(tree, {
      isOpen: (node) => !closed.includes(node.path),
      matches: needle ? (node) => node.path.includes(needle) : null,
    }).map((node) => node.path),
  }));
}
"""


@pytest.fixture(scope="module")
def blank(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()

    def serve(route: Any) -> None:
        path = urlparse(route.request.url).path
        if path.startswith("/static/"):
            route.fulfill(
                path=str(STATIC / path.removeprefix("/static/")), content_type="text/javascript"
            )
        else:
            route.fulfill(body="<!doctype html><title>blank</title>", content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/")
    yield page
    context.close()


def forest(page: Any, state: dict[str, Any], *, closed=(), needle="") -> dict[int, dict]:
    rows = list(state["resources"].values())
    trees = page.evaluate(FOREST, {"rows": rows, "closed": list(closed), "needle": needle})
    return {tree["team"]: tree for tree in trees}


def snapshot() -> dict[str, Any]:
    return board_snapshot()["state"]


def make(team, *names: str) -> None:
    for name in names:
        resource_create(team=team, name=name, value=0)


def test_paths_nest_by_folder_one_tree_per_team_with_implied_folders(blank: Any) -> None:
    team, other = factories.team(name="repo"), factories.team(name="fork")
    make(team, "src/api/views.py", "src/api/urls.py", "src/main.py", "docs/", "README", "a/b/c")
    make(other, "src/x.py")
    trees = forest(blank, snapshot())
    assert set(trees) == {team.pk, other.pk}  # README is no path: the flat group has it
    tree = trees[team.pk]
    nodes = tree["nodes"]
    assert tree["roots"] == ["a/", "docs/", "src/"]  # folders, then files, by name
    assert nodes["src/"] == {
        **nodes["src/"],
        "label": "src/",
        "depth": 0,
        "folder": True,
        "resource": None,  # implied by the paths under it: a plain tree node
        "parent": None,
        "children": ["src/api/", "src/main.py"],
        "below": {"paths": 3, "held": 0, "waited": 0},
        "below_text": "3 paths",
    }
    assert nodes["src/api/"]["children"] == ["src/api/urls.py", "src/api/views.py"]
    assert (nodes["src/api/"]["label"], nodes["src/api/"]["depth"]) == ("api/", 1)
    views = nodes["src/api/views.py"]
    assert (views["label"], views["depth"], views["folder"], views["parent"]) == (
        "views.py", 2, False, "src/api/"
    )  # fmt: skip
    assert views["resource"] == "src/api/views.py" and views["children"] == []
    assert nodes["docs/"]["resource"] == "docs/" and nodes["docs/"]["children"] == []
    assert [nodes[p]["label"] for p in ("a/", "a/b/", "a/b/c")] == ["a/", "b/", "c"]
    assert tree["size"] == len(nodes) == 9
    assert trees[other.pk]["roots"] == ["src/"]
    assert trees[other.pk]["nodes"]["src/"]["children"] == ["src/x.py"]


def test_a_held_folder_covers_its_subtree_and_is_named_as_its_waiters_blocker(
    blank: Any,
) -> None:
    team = factories.team(name="repo")
    a0, b1, c2 = (factories.agent(team_=team, name=name) for name in ("a0", "b1", "c2"))
    make(team, "src/", "src/api/views.py", "src/main.py", "lib/a.py")
    make(factories.team(name="fork"), "src/main.py")  # another team's: not covered
    lock_acquire(agent=a0, resource="src/", ttl=600)
    waiting = lock_acquire(agent=b1, resource="src/api/views.py", ttl=600)
    assert waiting.status == "waiting"
    # What the core says keeps a path out: the folder's holder (queue.holder_dict).
    busy = lock_acquire(agent=c2, resource="src/main.py", wait=False)
    assert busy.status == "busy"
    assert [(h["agent"], h["mode"], h["resource"]) for h in busy.holders] == [
        ("a0", "exclusive", "src/")
    ]
    trees = forest(blank, snapshot())
    nodes = trees[team.pk]["nodes"]
    assert nodes["src/"]["covered"] == []  # its own lock is a holder, not a cover
    assert nodes["src/"]["below"] == {"paths": 2, "held": 0, "waited": 1}
    for path in ("src/api/", "src/api/views.py", "src/main.py"):  # implied folders too
        assert nodes[path]["covered"] == ["a0's exclusive lock on src/"], path
        assert nodes[path]["cover_text"] == "covered by a0's exclusive lock on src/"
    assert nodes["lib/a.py"]["covered"] == [] and nodes["lib/"]["covered"] == []
    fork = next(tree for pk, tree in trees.items() if pk != team.pk)
    assert fork["nodes"]["src/main.py"]["covered"] == []
    views = nodes["src/api/views.py"]
    assert views["blockers"] == {str(waiting.request.pk): ["a0's exclusive lock on src/"]}
    assert views["blocker_texts"] == ["blocked by a0's exclusive lock on src/"]


def test_a_folder_waiting_for_paths_under_it_names_them_and_shared_locks_stack(
    blank: Any,
) -> None:
    team = factories.team(name="repo")
    a0, b1, c2 = (factories.agent(team_=team, name=n) for n in ("a0", "b1", "c2"))
    make(team, "lib/", "lib/a.py", "lib/b.py", "doc/", "doc/x.md")
    lock_acquire(agent=a0, resource="lib/a.py", ttl=600)
    lock_acquire(agent=c2, resource="lib/b.py", mode="shared", ttl=600)
    folder_wait = lock_acquire(agent=b1, resource="lib/", ttl=600)
    assert folder_wait.status == "waiting"
    # Shared on the folder and shared under it stack; an exclusive under it waits.
    assert lock_acquire(agent=a0, resource="doc/", mode="shared", ttl=600).status == "granted"
    assert lock_acquire(agent=b1, resource="doc/x.md", mode="shared").status == "granted"
    file_wait = lock_acquire(agent=c2, resource="doc/x.md", ttl=600)
    assert file_wait.status == "waiting"
    nodes = forest(blank, snapshot())[team.pk]["nodes"]
    assert nodes["lib/"]["blockers"] == {
        str(folder_wait.request.pk): [
            "a0's exclusive lock on lib/a.py",
            "c2's shared lock on lib/b.py",
        ]
    }
    assert nodes["lib/"]["blocker_texts"] == [
        "blocked by a0's exclusive lock on lib/a.py and c2's shared lock on lib/b.py"
    ]
    assert nodes["lib/"]["below"] == {"paths": 2, "held": 2, "waited": 0}
    assert nodes["lib/"]["below_text"] == "2 paths · 2 held"
    # c2 waits for an exclusive lock on doc/x.md: b1's shared lock there is its own
    # resource's holder (shown in the row), a0's shared lock on doc/ the cover to name.
    assert nodes["doc/x.md"]["covered"] == ["a0's shared lock on doc/"]
    assert nodes["doc/x.md"]["blockers"] == {
        str(file_wait.request.pk): ["a0's shared lock on doc/"]
    }


def test_an_agents_own_folder_lock_does_not_block_its_files(blank: Any) -> None:
    team = factories.team(name="repo")
    a0, b1 = factories.agent(team_=team, name="a0"), factories.agent(team_=team, name="b1")
    make(team, "src/", "src/a.py")
    lock_acquire(agent=a0, resource="src/", ttl=600)
    assert lock_acquire(agent=a0, resource="src/a.py", ttl=600).status == "granted"
    assert lock_acquire(agent=b1, resource="src/a.py", mode="shared").status == "waiting"
    nodes = forest(blank, snapshot())[team.pk]["nodes"]
    # b1 is blocked by a0's folder lock (its lock on src/a.py itself is in the row).
    (blockers,) = nodes["src/a.py"]["blockers"].values()
    assert blockers == ["a0's exclusive lock on src/"]
    assert nodes["src/a.py"]["covered"] == ["a0's exclusive lock on src/"]


def test_the_boards_patches_keep_the_tree_true_when_the_folder_is_let_go(blank: Any) -> None:
    """Only the folder's row (and the granted waiter's) comes in the patch: the marks of
    the whole subtree follow, since they are derived in the browser."""
    team = factories.team(name="repo")
    a0, b1 = factories.agent(team_=team, name="a0"), factories.agent(team_=team, name="b1")
    make(team, "src/", "src/api/views.py", "src/api/urls.py", "src/main.py")
    held = lock_acquire(agent=a0, resource="src/", ttl=600).lock
    assert lock_acquire(agent=b1, resource="src/main.py", ttl=600).status == "waiting"
    taken = board_snapshot()
    before = forest(blank, taken["state"])[team.pk]["nodes"]
    assert before["src/api/urls.py"]["covered"] == ["a0's exclusive lock on src/"]

    lock_release(lock_id=held.pk, agent=a0)  # b1's wait for src/main.py is granted

    patch = board_patch(event_messages_after(taken["last_id"], limit=1000))
    names = {row["name"] for row in patch["resources"].values()}
    assert names == {"src/", "src/main.py"}  # not every path under the folder
    patched = forest(blank, board_apply(taken["state"], patch))[team.pk]["nodes"]
    assert patched == forest(blank, snapshot())[team.pk]["nodes"]
    assert all(node["covered"] == [] for node in patched.values())
    assert patched["src/main.py"]["blockers"] == {}
    assert patched["src/"]["below"] == {"paths": 3, "held": 1, "waited": 0}


def test_collapsed_folders_hide_their_subtree_and_a_search_shows_its_hits(blank: Any) -> None:
    team = factories.team(name="repo")
    make(team, "src/api/views.py", "src/api/urls.py", "src/main.py", "docs/a.md")
    state = snapshot()
    everything = ["docs/", "docs/a.md", "src/", "src/api/", "src/api/urls.py",
                  "src/api/views.py", "src/main.py"]  # fmt: skip
    assert forest(blank, state)[team.pk]["visible"] == everything
    closed = forest(blank, state, closed=["src/api/"])[team.pk]["visible"]
    assert closed == ["docs/", "docs/a.md", "src/", "src/api/", "src/main.py"]
    assert forest(blank, state, closed=["src/"])[team.pk]["visible"] == [
        "docs/",
        "docs/a.md",
        "src/",
    ]
    # A search opens the folders above its hits, whatever was closed, and shows no more.
    hits = forest(blank, state, closed=["src/", "src/api/"], needle="views")[team.pk]["visible"]
    assert hits == ["src/", "src/api/", "src/api/views.py"]
