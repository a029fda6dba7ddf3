"""The dashboard in Debian's Chromium (Playwright), served by daphne with a real RQ worker.

Every wait is on a condition with a deadline (Playwright's expect / wait_for).
Screenshots go to build/screenshots/ (git-ignored); with DASHBOARD_SCREENSHOTS=docs
the chosen ones also go to docs/screenshots/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.scenarios import scenario_start
from orchestrator.core.models import Agent, Resource, Run
from orchestrator.core.resources import resource_create, resource_write
from orchestrator.core.tokens import agent_token_reset
from tests import factories
from tests.concurrency.processes import wait_until
from tests.dashboard import builders, scenes, servers
from tests.dashboard.servers import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)"
    ),
]


def wait_in_page(page: Any, function: str, timeout: float = 10.0) -> Any:
    """Evaluate ``function`` (a JavaScript function's source) in ``page`` until it returns
    a truthy value. ``page.wait_for_function`` compiles its predicate in the page when it
    has to poll, which the dashboard's CSP (no 'unsafe-eval') forbids; ``page.evaluate``
    goes over the DevTools protocol, which the CSP does not govern."""
    return wait_until(
        lambda: page.evaluate(function), timeout=timeout, interval=0.05, what=function
    )


@pytest.fixture(scope="module")
def app(django_db_setup, django_db_blocker) -> Iterator[str]:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with servers.live_app(SHOTS.parent / "logs") as base:
        yield base


@pytest.fixture
def page(app: str, browser: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=app, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: dialog.accept())  # confirm() of destructive actions
    yield page
    context.close()
    assert problems == []


def screenshot(page: Any, name: str, *, docs: bool = False) -> None:
    page.evaluate("document.getElementById('toasts')?.replaceChildren()")  # transient
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
    if docs and os.environ.get("DASHBOARD_SCREENSHOTS") == "docs":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOC_SHOTS / f"{name}.png"), full_page=False)


def log_in(page: Any, username: str) -> None:
    from playwright.sync_api import expect

    page.goto("/login/?next=/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(builders.PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)


def api(base: str, token: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_a_lock_taken_through_the_api_appears_on_the_resources_page_within_a_second(
    app: str, page: Any
) -> None:
    from playwright.sync_api import expect

    builders.operator("olivia")
    team = factories.team(name="printing")
    agent = factories.agent(team_=team, name="press-agent")
    resource_create(name="press", value={"queue": ["flyer"]}, team=team)
    for i in range(6):
        resource_create(name=f"tray-{i}", value=i, team=team)
    token = agent_token_reset(agent=agent)
    log_in(page, "olivia")
    page.get_by_role("link", name="Resources", exact=True).click()
    row = page.locator('tr[data-resource-name="press"]')
    expect(row.locator(".holders")).to_have_text("free")
    status, answer = api(app, token, "/locks", {"resource": "press", "ttl": 90})
    assert status == 201, answer
    # No reload: the delta arrives over the WebSocket.
    expect(row.locator(".holders .chip.hold")).to_have_text("press-agent", timeout=1000)
    expect(row.locator(".countdown")).to_have_text(re.compile(r"^1m 2\ds$|^1m [0-3]\ds$"))
    screenshot(page, "resources", docs=True)
    # The nav counts stay live as well.
    scenes.contested_write("memo")
    expect(page.locator('[data-count="approvals"]')).to_have_text("1", timeout=5000)


def test_a_run_started_from_the_overview_makes_progress(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    from agents.scenarios import increment_script

    builders.operator("olivia")
    team = factories.team(name="ticket desk")
    resource_create(name="sold", value=0, team=team)
    for name in ("seller-1", "seller-2", "seller-3"):
        factories.agent(
            team_=team,
            name=name,
            role="You sell tickets: add one to the counter each turn.",
            config={"script": increment_script("sold") * 2, "think": [0.3, 0.6]},
        )
    log_in(page, "olivia")
    row = page.locator(f'#teams-table tr[data-team-id="{team.pk}"]')
    row.get_by_role("link", name="New run of team ticket desk").click()
    expect(page.locator("h1")).to_have_text("New run")
    expect(page.get_by_label("Team")).to_have_value(str(team.pk))
    page.get_by_label("Goal").fill("Sell two tickets each.")
    page.get_by_label("Step limit").fill("20")
    page.get_by_label("seller-1").check()
    page.get_by_label("seller-2").check()
    screenshot(page, "run-new", docs=True)
    page.get_by_role("button", name="Start run").click()
    expect(page.locator(".messages")).to_contain_text("started: 2 agents, first steps queued.")
    run = Run.objects.get(team=team)
    assert run.created_by.get_username() == "olivia" and run.max_steps == 20
    page.get_by_role("link", name="Overview", exact=True).click()
    run_row = page.locator(f'tr[data-run-id="{run.pk}"]')
    expect(run_row.locator(".status")).to_have_text("finished", timeout=30_000)
    assert Resource.objects.get(name="sold").value == 4  # two agents, two tickets each
    assert set(run.steps.values_list("agent__name", flat=True)) == {"seller-1", "seller-2"}


def test_pause_everything_from_the_overview(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    builders.operator("olivia")
    started = scenario_start(name="pipeline", agents=6, seed=3)
    log_in(page, "olivia")
    run_row = page.locator(f'tr[data-run-id="{started.run.pk}"]')
    expect(run_row).to_be_visible()
    expect(run_row.locator(".status")).to_have_text("finished", timeout=30_000)
    scenario_start(name="booking", agents=6, seed=5, ask_operator=True)
    expect(page.locator("#agents-table tbody tr")).to_have_count(12, timeout=10_000)
    page.get_by_role("button", name="Pause everything").click()
    expect(page.locator("#system-status")).to_have_text(re.compile("Everything is paused"))
    expect(page.locator("#toasts")).to_contain_text("Paused everything")
    screenshot(page, "overview-paused")
    page.get_by_role("button", name="Resume everything").click()
    expect(page.locator("#system-status")).to_have_text(re.compile("running under the protocol"))
    # Contested bookings wait for an operator (ask_operator): the run goes on meanwhile.
    expect(page.locator('[data-card="waiting_human"]')).not_to_have_text("0", timeout=30_000)
    expect(page.locator('[data-count="approvals"]')).not_to_have_text("0")
    screenshot(page, "overview", docs=True)
    page.get_by_role("link", name=f"#{started.run.pk}").click()
    expect(page.locator("h1")).to_contain_text(f"Run #{started.run.pk}")
    screenshot(page, "run", docs=True)
    page.get_by_role("link", name="Timeline", exact=True).click()
    expect(page.locator("#events-table tbody tr").first).to_be_visible()
    page.locator("#gantt-form input[name=resource]").fill(started.resources[1])
    page.get_by_role("button", name="Show").click()
    expect(page.locator("svg#gantt rect.bar").first).to_be_visible()
    page.locator("svg#gantt").scroll_into_view_if_needed()
    screenshot(page, "timeline", docs=True)


def test_a_deadlock_is_shown_in_the_graph_and_broken_from_it(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    builders.operator("olivia")
    started = scenario_start(name="deadlock", agents=2, ask_operator=True)
    log_in(page, "olivia")
    page.get_by_role("link", name="Graph", exact=True).click()
    panel = page.locator(".deadlock")
    expect(panel).to_be_visible(timeout=30_000)
    expect(page.locator("svg.graph .node.agent.in-cycle")).to_have_count(2)
    expect(page.locator("svg.graph .edge.in-cycle")).to_have_count(4)
    victim = started.agents[1]
    node = page.locator(f'svg.graph .node.agent[data-agent-id="{victim.pk}"]')
    node.focus()
    page.keyboard.press("Enter")  # keyboard reachable: choose the victim
    expect(page.locator(".deadlock select[name=victim] >> nth=0")).to_have_value(str(victim.pk))
    screenshot(page, "graph", docs=True)
    page.get_by_role("button", name="Break deadlock").click()
    expect(page.locator("#toasts")).to_contain_text(f"victim {victim.name}")
    expect(panel).to_have_count(0)
    page.get_by_role("link", name="Overview", exact=True).click()
    expect(page.locator(f'tr[data-run-id="{started.run.pk}"] .status')).to_have_text(
        "finished", timeout=30_000
    )
    assert Run.objects.get(pk=started.run.pk).status == "finished"
    page.get_by_role("link", name="Conflicts", exact=True).click()
    page.get_by_label("Kind").select_option("deadlock")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#conflicts-table tbody")).to_contain_text("by operator olivia")
    screenshot(page, "conflicts", docs=True)


def test_a_contested_write_is_approved_from_the_page(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    builders.operator("olivia")
    scene = scenes.contested_write("minutes", proposed={"text": "agreed", "by": "writer 2"})
    log_in(page, "olivia")
    expect(page.locator('[data-count="approvals"]')).to_have_text("1")
    page.get_by_role("link", name="Approvals", exact=True).click()
    card = page.locator(f"#approval-{scene.approval.pk}")
    expect(card.locator(".diff .add").first).to_be_visible()
    screenshot(page, "approvals", docs=True)
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".messages")).to_contain_text("applied as version 2")
    expect(page.locator('[data-count="approvals"]')).to_have_text("0")
    page.get_by_role("link", name="Resources", exact=True).click()
    value = page.locator('tr[data-resource-name="minutes"] td.value')
    expect(value).to_have_text('{"by": "writer 2", "text": "agreed"}')
    assert Resource.objects.get(name="minutes").value == {"text": "agreed", "by": "writer 2"}


def test_a_two_person_approval_waits_for_the_second_operator_live(
    app: str, page: Any, browser: Any
) -> None:
    """Olivia approves a write that needs two operators: her card says 1 of 2 and stays
    pending, on her page and, live, on Otto's; Otto's approval decides it, and Olivia's
    page shows it decided without a reload. Olivia's browser clock is an hour slow: the
    deadline still counts down on the server's clock."""
    from datetime import datetime, timedelta

    from playwright.sync_api import expect

    from orchestrator.core.models import Approval, Event

    builders.operator("olivia")
    builders.operator("otto")
    scene = scenes.write_under_policy("payroll", required_approvals=2, deadline_seconds=1800)
    page.context.clock.install(time=datetime.now() - timedelta(hours=1))
    log_in(page, "olivia")
    page.goto("/approvals/")
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
    card = page.locator(f"#approval-{scene.approval.pk}")
    expect(card.locator('[data-role="tally"]')).to_have_text("0 of 2 approvals")
    left = card.locator('[data-role="time-left"]')
    expect(left).to_have_text(re.compile(r"^(29m [0-5]\ds|30m 00s) left$"))  # not 1h 29m
    counted = left.text_content()
    expect(left).not_to_have_text(counted or "", timeout=3000)  # it counts down
    expect(card.locator('[data-role="outcome"]')).to_have_text("rejected (fail closed)")

    other = browser.new_context(base_url=app, viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    otto = other.new_page()
    otto.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    log_in(otto, "otto")
    otto.goto("/approvals/")
    expect(otto.locator("#live-status")).to_have_text("live", timeout=10_000)
    otto_card = otto.locator(f"#approval-{scene.approval.pk}")
    expect(otto_card.locator('[data-role="tally"]')).to_have_text("0 of 2 approvals")

    card.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".messages")).to_contain_text("1 of 2 approvals; waiting for another")
    expect(card.locator('[data-role="tally"]')).to_have_text("1 of 2 approvals")
    expect(card.locator('[data-role="voters"]')).to_contain_text("approved by olivia")
    expect(card.locator('[data-role="approve"]')).to_have_text(
        "You approved: another operator must approve"
    )
    # Live on Otto's page (rendered before the vote): the tally moves, the card stays open.
    expect(otto_card.locator('[data-role="tally"]')).to_have_text("1 of 2 approvals")
    expect(otto_card.locator('[data-role="voters"]')).to_contain_text("approved by olivia")
    expect(otto_card).not_to_have_class(re.compile(r"\bdecided\b"))
    expect(otto_card.locator('[data-role="status"]')).to_have_text("pending")
    expect(otto_card.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    voted = Event.objects.get(kind="approval.voted").pk
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
    wait_in_page(page, f"() => Number(document.body.dataset.lastEventId) >= {voted}")
    expect(card).not_to_have_class(re.compile(r"\bdecided\b"))
    assert Approval.objects.get(pk=scene.approval.pk).status == "pending"
    screenshot(page, "approvals-two-person")

    otto_card.get_by_role("button", name="Approve", exact=True).click()
    expect(otto.locator(".messages")).to_contain_text("approved: applied as version 1")
    # Olivia's page, not reloaded, shows the decision as it happens.
    expect(card).to_have_class(re.compile(r"\bdecided\b"))
    expect(card.locator('[data-role="status"]')).to_have_text("approved by otto")
    expect(card.locator('[data-role="approve"]')).to_be_disabled()
    approval = Approval.objects.get(pk=scene.approval.pk)
    assert (approval.status, approval.decision_note) == ("approved", "approved by olivia, otto")
    other.close()
    assert problems == []


def test_an_escalation_shows_live_on_the_card_and_does_not_decide_it(app: str, page: Any) -> None:
    from datetime import timedelta

    from django.contrib.auth.models import Group
    from django.utils import timezone
    from playwright.sync_api import expect

    from orchestrator.core.approvals import approval_deadline_pass
    from orchestrator.core.models import Approval

    builders.operator("olivia")
    leads = Group.objects.create(name="night leads")
    scene = scenes.write_under_policy(
        "rota", deadline_seconds=30, on_deadline="escalate", escalate_to=leads,
        escalation_seconds=600,
    )  # fmt: skip
    log_in(page, "olivia")
    page.goto("/approvals/")
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
    card = page.locator(f"#approval-{scene.approval.pk}")
    expect(card.locator('[data-role="outcome"]')).to_have_text(
        "escalated to night leads (the deadline is extended once)"
    )
    expect(card.locator('[data-role="escalated"]')).to_be_hidden()
    Approval.objects.filter(pk=scene.approval.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert approval_deadline_pass(scene.approval.pk) == "escalated"
    expect(card.locator('[data-role="escalated"]')).to_have_text("escalated to night leads")
    expect(card.locator('[data-role="outcome"]')).to_have_text("rejected (fail closed)")
    expect(card.locator('[data-role="time-left"]')).to_have_text(
        re.compile(r"^(9m [0-5]\ds|10m 00s) left$")
    )
    expect(card).not_to_have_class(re.compile(r"\bdecided\b"))
    expect(card.locator('[data-role="status"]')).to_have_text("pending")


def test_a_standing_rule_is_made_from_an_approval_and_revoked(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.models import Approval, StandingRule

    builders.operator("olivia")
    scene = scenes.contested_write("roster")
    log_in(page, "olivia")
    page.goto("/approvals/")
    card = page.locator(f"#approval-{scene.approval.pk}")
    card.get_by_text("Standing rule for writes like this…").click()
    form = card.locator("form.rule-form")
    expect(form.get_by_label("this agent, roster-writer-2")).to_be_checked()
    expect(form.get_by_label("Lasts")).to_have_value("24h")
    form.get_by_label("any agent of team").check()
    form.get_by_label("Lasts").select_option("1h")
    form.get_by_label("For this many writes").fill("5")
    screenshot(page, "approvals-rule-form")
    form.get_by_role("button", name="Always reject").click()
    expect(page.locator(".messages")).to_contain_text("always reject writes by any agent to roster")
    expect(page.locator(".messages")).to_contain_text("still waits for your decision")
    rule = StandingRule.objects.get()
    assert (rule.action, rule.agent_id, rule.max_uses) == ("reject", None, 5)
    row = page.locator(f'#rules-table tr[data-rule-id="{rule.pk}"]')
    expect(row.locator(".uses")).to_have_text("0 of 5")
    expect(page.locator(f"#approval-{scene.approval.pk}")).to_be_visible()  # still pending
    assert Approval.objects.get(pk=scene.approval.pk).status == "pending"
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator(".messages")).to_contain_text(f"Revoked rule #{rule.pk}")
    expect(page.locator("#rules-table")).to_contain_text("No standing rule is in force.")
    rule.refresh_from_db()
    assert not rule.active


def test_a_waiting_lock_set_is_one_wait_and_changes_live_when_granted(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.lock_sets import lock_set_acquire
    from orchestrator.core.locks import lock_acquire, lock_release

    builders.operator("olivia")
    team = factories.team(name="planning")
    waiter = factories.agent(team_=team, name="planner")
    blocker = factories.agent(team_=team, name="editor")
    for part in ("a", "b", "c"):  # ascending id: the order the set takes them
        resource_create(team=team, name=f"plan-{part}", value=0)
    blocking = lock_acquire(agent=blocker, resource="plan-b", ttl=600).lock
    asked = lock_set_acquire(agent=waiter, resources=["plan-c", "plan-b", "plan-a"], ttl=600)
    assert asked.status == "waiting", asked
    log_in(page, "olivia")
    waits = page.locator(f'#agents-table tr[data-agent-id="{waiter.pk}"] td.waits')
    wait = waits.locator(".lockset")
    expect(wait).to_have_count(1)  # one wait, not one per resource
    expect(wait.locator(".lockset-label")).to_have_text("lock set of 3:")
    expect(wait.locator(".chip")).to_have_text(["plan-a", "plan-b", "plan-c"])
    expect(wait.locator('.chip[data-state="held"]')).to_have_text("plan-a")
    expect(wait.locator('.chip[data-state="queued"]')).to_have_text("plan-b")
    expect(wait.locator(".lockset-state")).to_have_text("holds plan-a · queued at plan-b")
    screenshot(page, "lock-set-waiting")
    graph = page.context.new_page()
    graph.goto("/graph/")
    expect(graph.locator("#live-status")).to_have_text("live", timeout=10_000)
    listed = graph.locator(f'#lock-sets li[data-agent-id="{waiter.pk}"]')
    expect(listed).to_contain_text("planner waits for lock set of 3:")
    expect(listed.locator(".lockset-state")).to_have_text("holds plan-a · queued at plan-b")
    expect(graph.locator("svg.graph .edge.wait.set")).to_have_count(1)
    screenshot(graph, "lock-set-graph")
    graph.goto("/resources/")
    queued = graph.locator('tr[data-resource-name="plan-b"] td.queue .chip.in-set')
    expect(queued).to_have_text("1. planner · lock set of 3: plan-a, plan-b, plan-c")
    screenshot(graph, "lock-set-resources")
    graph.goto("/graph/")
    expect(listed).to_have_count(1, timeout=10_000)

    lock_release(lock_id=blocking.pk, agent=blocker)  # the set goes on and is granted

    # No reload: both pages follow the deltas.
    expect(wait).to_have_count(0, timeout=5000)
    holds = page.locator(f'#agents-table tr[data-agent-id="{waiter.pk}"] td.holds .chip.hold')
    expect(holds).to_have_text(["plan-a", "plan-b", "plan-c"])
    expect(holds.first).to_have_attribute("data-lock-set", str(asked.lock_set.pk))
    expect(page.locator(f'#agents-table tr[data-agent-id="{waiter.pk}"] .status')).to_have_text(
        "idle"
    )
    expect(graph.locator("#lock-sets li")).to_have_count(0, timeout=5000)
    expect(graph.locator("svg.graph .edge.wait")).to_have_count(0)
    graph.close()


def test_a_folder_lock_covers_its_subtree_on_the_resources_page_until_let_go(
    app: str, page: Any
) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire, lock_release

    builders.operator("olivia")
    team = factories.team(name="repo")
    folder = factories.agent(team_=team, name="a0")
    editor = factories.agent(team_=team, name="b1")
    for name in ("src/", "src/api/views.py", "src/api/urls.py", "src/main.py", "docs/guide.md"):
        resource_create(team=team, name=name, value=0)
    resource_create(team=team, name="press", value=0)  # no "/": the flat group, as before
    held = lock_acquire(agent=folder, resource="src/", ttl=600).lock
    assert lock_acquire(agent=editor, resource="src/main.py", ttl=600).status == "waiting"
    log_in(page, "olivia")
    page.get_by_role("link", name="Resources", exact=True).click()
    table = page.locator("#resources-table")
    expect(table.locator('tr[data-resource-name="press"] .holders')).to_have_text("free")
    expect(table.locator("tr.group")).to_have_text(
        ["Named resources", "Paths of repo · 5 paths, 1 held"]
    )
    tree = table.locator("tr.tree-node")
    expect(tree.locator("a.path-label")).to_have_text(
        ["docs/", "guide.md", "src/", "api/", "urls.py", "views.py", "main.py"]
    )
    implied = table.locator('tr[data-path="src/api/"]')
    expect(implied).to_have_class(re.compile(r"\bimplied\b"))
    expect(table.locator('tr[data-path="src/"] .holders .chip.hold')).to_have_text("a0")
    expect(table.locator('tr[data-path="src/"] .below')).to_have_text(
        "· covers 3 paths · 1 waited for"
    )
    covered = table.locator("tr.covered")
    expect(covered).to_have_count(4)  # api/ (implied), urls.py, views.py, main.py
    for path in ("src/api/", "src/api/views.py", "src/main.py"):
        expect(table.locator(f'tr[data-path="{path}"] .cover')).to_have_text(
            "covered by a0's exclusive lock on src/"
        )
    expect(table.locator('tr[data-path="docs/guide.md"] .cover')).to_have_count(0)
    waiter = table.locator('tr[data-path="src/main.py"] .queue .chip.wait')
    expect(waiter).to_have_text("1. b1 · blocked by a0's exclusive lock on src/")
    screenshot(page, "resources-paths", docs=True)
    # Collapse and expand a folder, from the keyboard.
    twisty = implied.get_by_role("button", name="Collapse src/api/")
    twisty.focus()
    page.keyboard.press("Enter")
    expect(table.locator('tr[data-path="src/api/views.py"]')).to_have_count(0)
    expect(implied.get_by_role("button", name="Expand src/api/")).to_be_focused()
    expect(implied.locator(".below")).to_have_text("· 2 paths")
    page.keyboard.press("Enter")
    expect(table.locator('tr[data-path="src/api/views.py"]')).to_have_count(1)
    # The name leads to its lock timeline, with the folders above it.
    link = table.locator('tr[data-path="src/main.py"] a.path-label')
    expect(link).to_have_attribute(
        "href", "/timeline/?resource=repo%3A%3Asrc%2Fmain.py#lock-timeline"
    )

    lock_release(lock_id=held.pk, agent=folder)  # b1 gets src/main.py after commit

    # No reload: the folder's row comes in a patch, and the subtree follows.
    expect(covered).to_have_count(0, timeout=5000)
    expect(table.locator('tr[data-path="src/"] .holders')).to_have_text("free")
    expect(table.locator('tr[data-path="src/main.py"] .holders .chip.hold')).to_have_text(
        "b1", timeout=5000
    )
    expect(table.locator('tr[data-path="src/main.py"] .queue .chip')).to_have_count(0)
    expect(table.locator('tr[data-path="src/"] .below')).to_have_text("· 3 paths · 1 held")
    screenshot(page, "resources-paths-released")

    # The Gantt chart of the path shows the folder's hold above its own, and the wait.
    link.click()
    expect(page.locator("svg#gantt .section text")).to_have_text(["src/main.py", "via src/"])
    expect(page.locator("svg#gantt rect.wait")).to_have_count(1)
    expect(page.locator("svg#gantt rect.bar.rel-above")).to_have_count(1)
    page.locator("svg#gantt").scroll_into_view_if_needed()
    screenshot(page, "timeline-path")


def test_a_wait_for_a_path_is_linked_in_the_graph_to_the_held_folder_that_covers_it(
    app: str, page: Any
) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire, lock_release

    builders.operator("olivia")
    team = factories.team(name="workshop")
    elsewhere = factories.team(name="elsewhere")
    a, b, c, d = (factories.agent(team_=team, name=name) for name in ("a", "b", "c", "d"))
    for name in ("src/", "src/x.py", "src/y.py", "lib/", "lib/m.py"):
        resource_create(team=team, name=name, value=0)
    folder, path = Resource.objects.get(name="src/"), Resource.objects.get(name="src/x.py")
    held = lock_acquire(agent=a, resource="src/", ttl=600).lock
    assert lock_acquire(agent=b, resource="src/x.py", ttl=600).status == "waiting"
    # The other way round: a folder waited for, kept out by a path under it.
    lock_acquire(agent=c, resource="lib/m.py", ttl=600)
    assert lock_acquire(agent=d, resource="lib/", ttl=600).status == "waiting"
    resource_create(team=elsewhere, name="far/away.py", value=0)
    lock_acquire(agent=factories.agent(team_=elsewhere, name="e"), resource="far/away.py")
    log_in(page, "olivia")
    page.get_by_role("link", name="Graph", exact=True).click()
    svg = page.locator("svg.graph")
    covers = svg.locator(".edge.cover")
    expect(covers).to_have_count(2)
    cover = svg.locator(f'.edge.cover[data-resource="{path.pk}"]')
    expect(cover).to_have_attribute("data-covered-by", str(folder.pk))
    expect(cover.locator("title")).to_have_text(
        "src/x.py is covered by a's exclusive lock on src/, which keeps b out"
    )
    # The chain b -> src/x.py -> src/ -> a: the wait and the hold it ends at.
    expect(
        svg.locator(f'.edge.wait[data-agent="{b.pk}"][data-resource="{path.pk}"]')
    ).to_have_count(1)
    expect(
        svg.locator(f'.edge.hold[data-agent="{a.pk}"][data-resource="{folder.pk}"]')
    ).to_have_count(1)
    under = svg.locator(".edge.cover.under")
    expect(under.locator("title")).to_have_text(
        "lib/ is blocked by c's exclusive lock on lib/m.py, which keeps d out"
    )
    screenshot(page, "graph-paths")
    # The team filter: another team's graph has none of it, back to this one has it all.
    page.get_by_label("Team").select_option(label="elsewhere")
    expect(svg.locator('.node.resource[data-resource-name="far/away.py"]')).to_have_count(1)
    expect(covers).to_have_count(0)
    expect(svg.locator('.node.resource[data-resource-name="src/"]')).to_have_count(0)
    page.get_by_label("Team").select_option(label="workshop")
    expect(covers).to_have_count(2)

    lock_release(lock_id=held.pk, agent=a)  # b gets src/x.py after commit

    # No reload: the folder's row comes in a patch, and its "covered by" edge goes.
    expect(cover).to_have_count(0, timeout=5000)
    expect(
        svg.locator(f'.edge.hold[data-agent="{b.pk}"][data-resource="{path.pk}"]')
    ).to_have_count(1)
    expect(svg.locator(f'.node.resource[data-resource-id="{folder.pk}"]')).to_have_count(0)
    expect(covers).to_have_count(1)  # lib/ still waits for lib/m.py


def test_a_deadlock_through_a_folder_is_one_red_cycle_in_the_graph(app: str, page: Any) -> None:
    """As in tests/core/test_paths.py: a holds src/ and waits for doc, b holds doc and
    waits for a file under src/. The core's cycle names src/, not the file: the graph
    draws the file, its wait and its "covered by" edge in the cycle as well."""
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire

    builders.operator("olivia")
    team = factories.team(name="looped", deadlock_policy="ask_operator")
    a, b = (factories.agent(team_=team, name=name) for name in ("loop-a", "loop-b"))
    for name in ("src/", "src/api/views.py", "doc"):
        resource_create(team=team, name=name, value=0)
    lock_acquire(agent=a, resource="src/", ttl=600)
    lock_acquire(agent=b, resource="doc", ttl=600)
    assert lock_acquire(agent=a, resource="doc", ttl=600).status == "waiting"
    assert lock_acquire(agent=b, resource="src/api/views.py", ttl=600).deadlock is not None
    log_in(page, "olivia")
    page.get_by_role("link", name="Graph", exact=True).click()
    expect(page.locator(".deadlock")).to_have_count(1, timeout=10_000)
    svg = page.locator("svg.graph")
    # Holds src/ -> a and doc -> b, waits a -> doc and b -> views.py, views.py -> src/.
    expect(svg.locator(".edge.in-cycle")).to_have_count(5)
    expect(svg.locator(".edge.cover.in-cycle")).to_have_count(1)
    expect(svg.locator(".node.resource.in-cycle")).to_have_count(3)
    expect(svg.locator(".node.agent.in-cycle")).to_have_count(2)
    screenshot(page, "graph-folder-deadlock")


def test_a_tree_of_three_hundred_paths_comes_a_page_at_a_time(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire

    builders.operator("olivia")
    team = factories.team(name="monorepo")
    a0 = factories.agent(team_=team, name="a0")
    b1 = factories.agent(team_=team, name="b1")
    for i in range(12):
        for j in range(25):
            resource_create(team=team, name=f"pkg{i:02}/mod{j:02}.py", value=j)
    resource_create(team=team, name="pkg03/", value=None)
    lock_acquire(agent=a0, resource="pkg03/", ttl=600)  # covers 25 paths
    lock_acquire(agent=b1, resource="pkg07/mod05.py", ttl=600)
    log_in(page, "olivia")
    page.get_by_role("link", name="Resources", exact=True).click()
    rows = page.locator("#resources-table tr.tree-node")
    # A page of 50 paths, drawn as their tree: pkg00/ and pkg01/ with 25 paths each.
    expect(page.locator("#resources-pager .pager-count")).to_have_text(
        "Showing 1 to 50 of 301 resources"
    )
    expect(rows).to_have_count(2 + 50)
    expect(page.locator('tr[data-path="pkg00/"] .below')).to_have_text("· 25 paths on this page")
    screenshot(page, "resources-paths-large")
    page.get_by_role("button", name="Collapse all").click()
    expect(rows).to_have_count(2)
    page.get_by_role("button", name="Expand all").click()
    expect(rows).to_have_count(52)
    # Only held or waited for: those paths, with the folders above them, in the URL.
    page.get_by_label("only held or waited for").check()
    expect(rows.locator("a.path-label")).to_have_text(["pkg03/", "pkg07/", "mod05.py"])
    expect(page).to_have_url(re.compile(r"/resources/\?contested=1$"))
    pkg03 = page.locator('tr[data-path="pkg03/"]')
    expect(pkg03.locator(".holders .chip.hold")).to_have_text("a0")
    # Still live at this size: a lock taken now on a path of no row yet brings it in.
    lock_acquire(agent=b1, resource="pkg11/mod24.py", ttl=600)
    expect(page.locator('tr[data-path="pkg11/mod24.py"] .holders .chip.hold')).to_have_text(
        "b1", timeout=10_000
    )
    expect(rows.locator("a.path-label")).to_have_text(
        ["pkg03/", "pkg07/", "mod05.py", "pkg11/", "mod24.py"]
    )


def received_frames(page: Any) -> list[dict[str, Any]]:
    """The JSON frames the page's WebSockets receive, from now on."""
    frames: list[dict[str, Any]] = []

    def follow(socket: Any) -> None:
        socket.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", follow)
    return frames


def board_in_page(page: Any) -> dict[str, Any]:
    """What the page's live board holds (the module nav.js and the page's script share)."""
    return page.evaluate(
        """async () => {
          const src = document.querySelector('script[src*="nav"]').src;
          const { board } = await import(new URL("./live.js", src).href);
          return { state: board.state, lastId: board.lastId };
        }"""
    )


def seen(page: Any, event_id: int) -> None:
    from tests.concurrency.processes import wait_until

    wait_until(
        lambda: int(page.evaluate("document.body.dataset.lastEventId || 0")) >= event_id,
        timeout=10,
        interval=0.05,
        what=f"event {event_id} on the page",
    )


def test_resources_come_a_page_at_a_time_and_live_rows_off_the_page_are_not_kept(
    app: str, page: Any
) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire
    from orchestrator.core.models import Event

    builders.operator("olivia")
    team = factories.team(name="bulk")
    holder = factories.agent(team_=team, name="bulk-holder")
    Resource.objects.bulk_create(
        Resource(name=f"res-{i:04d}", team=team, value=i) for i in range(300)
    )
    frames = received_frames(page)
    log_in(page, "olivia")
    page.get_by_role("link", name="Resources", exact=True).click()
    rows = page.locator("#resources-table tbody tr[data-resource-id]")
    pager = page.locator("#resources-pager")
    expect(pager.locator(".pager-count")).to_have_text("Showing 1 to 50 of 300 resources")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-resource-name", "res-0000")
    # The server sent a page, not the board.
    (snapshot,) = [
        f for f in frames if f["type"] == "snapshot" and f["view"]["name"] == "resources"
    ]
    assert len(snapshot["state"]["resources"]) == 50
    assert snapshot["state"]["agents"] == {}
    assert len(json.dumps(snapshot)) < 50_000
    pager.get_by_role("link", name="Next").click()
    expect(page).to_have_url(re.compile(r"/resources/\?page=2$"))
    expect(pager.locator(".pager-count")).to_have_text("Showing 51 to 100 of 300 resources")
    expect(rows.first).to_have_attribute("data-resource-name", "res-0050")
    expect(rows).to_have_count(50)
    # The URL is the view: a reload (or a bookmark) shows the same page.
    page.reload()
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
    expect(rows.first).to_have_attribute("data-resource-name", "res-0050")
    # A lock on a row of the page shows live; one on another page is not kept.
    lock_acquire(agent=holder, resource="res-0200", ttl=600)
    lock_acquire(agent=holder, resource="res-0060", ttl=600)
    expect(page.locator('tr[data-resource-name="res-0060"] .holders .chip.hold')).to_have_text(
        "bulk-holder"
    )
    seen(page, Event.objects.order_by("-id").values_list("id", flat=True).first())
    held = board_in_page(page)["state"]["resources"]
    assert len(held) == 50 and {r["name"] for r in held.values()} >= {"res-0060"}
    assert "res-0200" not in {r["name"] for r in held.values()}
    expect(rows).to_have_count(50)
    # A filter is on the server too, and in the URL; Back goes to the page before.
    page.get_by_label("Filter").fill("res-02")
    expect(pager.locator(".pager-count")).to_have_text("Showing 1 to 50 of 100 resources")
    expect(page).to_have_url(re.compile(r"/resources/\?q=res-02$"))
    pager.get_by_role("link", name="Next").focus()
    page.keyboard.press("Enter")
    expect(pager.locator(".pager-count")).to_have_text("Showing 51 to 100 of 100 resources")
    expect(rows.last).to_have_attribute("data-resource-name", "res-0299")
    page.go_back()
    expect(pager.locator(".pager-count")).to_have_text("Showing 1 to 50 of 100 resources")


def test_the_overview_pages_its_agents_and_counts_every_one(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire

    builders.operator("olivia")
    team = factories.team(name="crowd")
    other = factories.team(name="quiet")
    agents = [factories.agent(team_=team, name=f"crowd-{i:02}") for i in range(55)]
    for i in range(5):
        factories.agent(team_=other, name=f"quiet-{i}")
    resource_create(name="crowd-doc", value=0, team=team)
    lock_acquire(agent=agents[0], resource="crowd-doc", ttl=600)
    for agent in agents[51:]:  # on the second page
        lock_acquire(agent=agent, resource="crowd-doc", ttl=600)
    log_in(page, "olivia")
    rows = page.locator("#agents-table tbody tr[data-agent-id]")
    expect(rows).to_have_count(50)
    expect(page.locator("#agents-pager .pager-count")).to_have_text("Showing 1 to 50 of 60 agents")
    # The cards count every agent, not the page's.
    expect(page.locator('[data-card="waiting_lock"]')).to_have_text("4")
    expect(page.locator('#teams-table tr:has-text("crowd") .status-waiting_lock')).to_have_text(
        "4 waiting for a lock"
    )
    page.locator("#agent-team-filter").select_option(label="quiet")
    expect(rows).to_have_count(5)
    expect(page).to_have_url(re.compile(rf"/\?team={other.pk}$"))
    page.locator("#agent-team-filter").select_option(label="all teams")
    page.get_by_label("Status").select_option("waiting_lock")
    expect(rows).to_have_count(4)
    # A new wait of an agent off the page moves the card (the view is read again).
    lock_acquire(agent=agents[10], resource="crowd-doc", ttl=600)
    expect(page.locator('[data-card="waiting_lock"]')).to_have_text("5", timeout=10_000)
    expect(rows).to_have_count(5, timeout=10_000)


def test_the_graph_draws_a_page_of_waits_and_filters_by_team_and_agent_with_the_cycle(
    app: str, page: Any
) -> None:
    from playwright.sync_api import expect

    from orchestrator.core.locks import lock_acquire

    builders.operator("olivia")
    ledger = scenes.deadlock("ledger")
    scenes.deadlock("vault")
    crowd = factories.team(name="crowd")
    holder = factories.agent(team_=crowd, name="crowd-holder")
    resource_create(name="crowd-doc", value=0, team=crowd)
    lock_acquire(agent=holder, resource="crowd-doc", ttl=600)
    for i in range(60):
        waiter = factories.agent(team_=crowd, name=f"crowd-w{i:02}")
        lock_acquire(agent=waiter, resource="crowd-doc", ttl=600)
    log_in(page, "olivia")
    page.get_by_role("link", name="Graph", exact=True).click()
    svg = page.locator("#graph svg.graph")
    # 64 waits: a page of 50, the two cycles' four first, and what is not drawn, said.
    expect(page.locator("#graph-pager .pager-count")).to_have_text("Showing 1 to 50 of 64 waits")
    expect(svg.locator(".edge.wait")).to_have_count(50)
    expect(page.locator("#graph-info")).to_have_attribute("data-hidden-waits", "14")
    expect(page.locator("#graph-info")).to_contain_text("14 on other pages")
    expect(page.locator(".deadlock")).to_have_count(2)
    expect(svg.locator(".node.agent.in-cycle")).to_have_count(4)
    # By team: its cycle alone, still drawn whole; the URL keeps the filter.
    page.get_by_label("Team").select_option(label=ledger.team.name)
    expect(page).to_have_url(re.compile(rf"/graph/\?team={ledger.team.pk}$"))
    expect(page.locator(".deadlock")).to_have_count(1)
    expect(svg.locator(".node.agent")).to_have_count(2)
    expect(svg.locator(".node.agent.in-cycle")).to_have_count(2)
    expect(svg.locator(".edge.in-cycle")).to_have_count(4)
    expect(page.locator("#graph-pager .pager-count")).to_have_text("Showing 1 to 2 of 2 waits")
    # By agent: its waits and the waits for what it holds (here, its cycle).
    page.get_by_label("Team").select_option(label="all teams")
    page.get_by_label("Agent").fill("vault-clerk-b")
    expect(page).to_have_url(re.compile(r"/graph/\?agent=vault-clerk-b$"))
    expect(svg.locator(".node.agent text")).to_have_text(["vault-clerk-a", "vault-clerk-b"])
    expect(svg.locator(".edge.in-cycle")).to_have_count(4)
    expect(page.locator(".deadlock h2")).to_contain_text(["Deadlock #"])
    screenshot(page, "graph-filtered")
    page.get_by_label("Agent").fill("crowd-holder")
    expect(page.locator("#graph-pager .pager-count")).to_have_text("Showing 1 to 50 of 60 waits")
    expect(page.locator(".deadlock")).to_have_count(0)


def test_agent_text_shows_as_text_and_runs_nothing(app: str, page: Any) -> None:
    from playwright.sync_api import expect

    builders.operator("olivia")
    team = factories.team(name=f"crew {XSS}", conflict_policy="ask_operator")
    agent = factories.agent(team_=team, name=f"agent {XSS}")
    doc = resource_create(name=f"doc {XSS}", value=XSS, team=team)
    run = factories.run(team=team, goal=f"goal {XSS}", status="running")
    run.steps.create(
        agent=agent,
        number=1,
        status="done",
        transcript=[{"role": "assistant", "content": f"I say {XSS}"}],
        tool_calls=[{"id": "1", "tool": "read", "arguments": {"r": XSS}, "result": {"v": XSS}}],
    )
    from orchestrator.core.locks import lock_acquire

    held = lock_acquire(agent=agent, resource=f"doc {XSS}").lock
    # A lock set waiting behind it, named by agent text too (locksets.js).
    from orchestrator.core.lock_sets import lock_set_acquire

    resource_create(name=f"more {XSS}", team=team)
    setter = factories.agent(team_=team, name=f"setter {XSS}")
    asked = lock_set_acquire(agent=setter, resources=[f"doc {XSS}", f"more {XSS}"])
    assert asked.status == "waiting", asked
    # Paths named with markup: a held folder covers them, a waiter under it names it.
    resource_create(name=f"pkg {XSS}/", team=team)
    resource_create(name=f"pkg {XSS}/mod {XSS}.py", team=team)
    lock_acquire(agent=agent, resource=f"pkg {XSS}/")
    assert lock_acquire(agent=setter, resource=f"pkg {XSS}/mod {XSS}.py").status == "waiting"
    log_in(page, "olivia")
    pages = ["/", "/resources/", "/graph/", "/conflicts/", "/timeline/", f"/runs/{run.pk}/"]
    for path in [*pages, f"/runs/new/?team={team.pk}"]:
        page.goto(path)
        expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
        expect(page.locator("main")).to_contain_text("<script>window.__pwned=2</script>")
        if path in ("/", "/graph/"):
            expect(page.locator("main .lockset")).to_contain_text(f"more {XSS}")
        if path == "/graph/":
            expect(page.locator("main svg.graph .edge.cover title")).to_have_text(
                f"pkg {XSS}/mod {XSS}.py is covered by agent {XSS}'s exclusive lock"
                f" on pkg {XSS}/, which keeps setter {XSS} out"
            )
        if path == "/resources/":
            expect(page.locator("main tr.covered .cover").first).to_contain_text(
                f"covered by agent {XSS}'s exclusive lock on pkg {XSS}/"
            )
            expect(page.locator("main .chip.blocked")).to_contain_text(
                f"blocked by agent {XSS}'s exclusive lock on pkg {XSS}/"
            )
        assert page.evaluate("window.__pwned") is None, path
        # (The timeline's own filter travels as a JSON script element: data, never run.)
        assert page.locator('main script:not([type="application/json"]), main img').count() == 0
        assert page.locator('main script[type="application/json"]').count() <= 1
    # Live: a value written while the page is open arrives as text too.
    page.goto("/resources/")
    expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
    written = resource_write(
        agent=agent, resource=f"doc {XSS}", value=f"new {XSS}", expected_version=0, fence=held.token
    )
    assert written.status == "applied", written
    # (Its name has a "/", in "</script>": it is a path, drawn in the tree.)
    row = page.locator(f'#resources-table tr[data-resource-id="{doc.pk}"]')
    expect(row.locator("td.value")).to_contain_text("new <img src=x onerror=")
    assert page.evaluate("window.__pwned") is None
    from orchestrator.core.resources import approval_request

    asked = approval_request(
        agent=agent, resource=f"doc {XSS}", value={"html": XSS}, fence=held.token, note=XSS
    )
    assert asked.status == "approval_pending", asked
    page.goto("/approvals/")
    expect(page.locator("article.approval")).to_have_count(1)
    expect(page.locator("main")).to_contain_text("<script>window.__pwned=2</script>")
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "xss-as-text")
    assert Agent.objects.filter(name__contains="<script>").exists()


# --- Content-Security-Policy ----------------------------------------------------------

# Records what the policy blocks, from before any script of the page runs.
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__csp.push(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}`);
});
"""
LIVE_PAGES = ["/", "/resources/", "/graph/", "/approvals/", "/conflicts/", "/timeline/"]
ADMIN_PAGES = [
    "/admin/",
    "/admin/core/agent/",
    "/admin/core/agent/add/",
    "/admin/core/conflict/",
    "/admin/django_rq/dashboard/",
    "/admin/django_rq/dashboard/queues/0/empty/",  # a confirmation page, with a style block
]
# django-rq's job lists: their one inline script is blocked (it only threw on this Django).
RQ_JOBS = "/admin/django_rq/dashboard/queues/0/"
FAVICON = "/favicon.ico"  # the site has none: Chromium's request for one is a 404


def test_no_page_breaks_the_content_security_policy(app: str, browser: Any) -> None:
    """Every page is served with the policy, the policy blocks inline scripts, and no
    page (the live ones with their WebSocket, the admin's, the API docs, the sign-in
    pages) logs a console error or a policy violation."""
    from playwright.sync_api import expect

    builders.operator("olivia")
    root = factories.superuser("root")
    root.set_password(builders.PASSWORD)
    root.save()
    scene = scenes.contested_write("minutes")
    scenes.deadlock()
    run = factories.run(team=scene.approval.agent.team, goal="a goal", status="running")
    context = browser.new_context(base_url=app, viewport={"width": 1280, "height": 800})
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    errors: list[str] = []

    def console(message: Any) -> None:
        source = message.location.get("url", "")
        if message.type == "error" and not source.endswith(FAVICON):
            errors.append(f"{page.url}: {message.text} ({source})")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(f"{page.url}: page error: {error}"))
    seen: dict[str, list[str]] = {}
    policies: dict[str, str] = {}

    def visit(path: str, *, live: bool = False) -> None:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        policies[path] = response.headers.get("content-security-policy", "")
        if live:  # the WebSocket is open: connect-src allowed it
            expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)
        seen[path] = page.evaluate("window.__csp")

    visit("/login/")
    visit("/admin/login/")
    log_in(page, "olivia")
    for path in [*LIVE_PAGES, f"/runs/{run.pk}/"]:
        visit(path, live=True)
    visit(f"/runs/new/?team={run.team_id}")
    visit("/api/v1/docs")
    expect(page.locator(".swagger-ui .info")).to_be_visible()  # its scripts ran
    seen["/api/v1/docs"] = page.evaluate("window.__csp")
    context.clear_cookies()
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(builders.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    for path in ADMIN_PAGES:
        visit(path)
    before = len(errors)
    visit(RQ_JOBS)
    blocked, blocked_logged = seen.pop(RQ_JOBS), errors[before:]
    del errors[before:]

    assert errors == [], "\n".join(errors)
    assert {path: found for path, found in seen.items() if found} == {}
    for path, policy in policies.items():
        assert "frame-ancestors 'none'" in policy, path
        assert "object-src 'none'" in policy, path
        script_src = re.search(r"script-src ([^;]*)", policy)
        assert script_src is not None, path
        assert script_src.group(1) == "'self'", (path, policy)
        style_src = re.search(r"style-src ([^;]*)", policy)
        expected = "'self' 'unsafe-inline'" if path.startswith("/admin/") else "'self'"
        assert style_src is not None and style_src.group(1) == expected, (path, policy)
    assert [found.split()[:2] for found in blocked] == [["script-src-elem", "inline"]]
    assert len(blocked_logged) == 1 and "Executing inline script violates" in blocked_logged[0]
    # Enforced, not only sent: an inline script added to a dashboard page does not run.
    visit("/", live=True)
    ran = page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.__inline = 1";
          document.head.append(script);
          return window.__inline === 1;
        }"""
    )
    assert ran is False
    # The violation event is dispatched as a task of its own: wait for it.
    wait_in_page(page, "() => window.__csp.some((found) => found.startsWith('script-src'))")
    context.close()
