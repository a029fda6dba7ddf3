"""Who may see and do what: login, the viewers and operators groups, CSRF."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from orchestrator.core.models import Event, Switchboard
from tests import factories
from tests.dashboard import builders

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = ["overview", "resources", "graph", "approvals", "conflicts", "timeline"]
NAV = ["Overview", "Resources", "Graph", "Approvals", "Conflicts", "Timeline", "Admin"]
JSON = {"HTTP_ACCEPT": "application/json"}


def page_urls() -> list[str]:
    run = factories.run(team=factories.team())
    return [reverse(f"dashboard:{name}") for name in PAGES] + [
        reverse("dashboard:run", args=[run.pk])
    ]


def test_every_page_sends_anonymous_users_to_the_login_page() -> None:
    client = Client()
    for url in page_urls():
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"{reverse('login')}?next={url}"


def test_login_with_django_login_view_lands_on_the_overview() -> None:
    builders.viewer("vera")
    client = Client()
    assert client.get(reverse("login")).status_code == 200
    response = client.post(
        reverse("login"), {"username": "vera", "password": builders.PASSWORD}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("dashboard:overview")
    assert b"Pause everything" not in response.content  # viewers do not get the button
    bad = Client().post(reverse("login"), {"username": "vera", "password": "nope"})
    assert bad.status_code == 200
    assert b"Please enter a correct username and password" in bad.content


def test_viewers_see_every_page_with_the_navigation_bar(viewer_client: Client) -> None:
    for url in page_urls():
        response = viewer_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        names = re.findall(r'<nav aria-label="Main">(.*?)</nav>', html, re.S)[0]
        assert re.findall(r"<a [^>]*>([^<]*)</a>", names) == NAV
        assert 'data-count="approvals"' in html and 'data-count="conflicts"' in html


def test_signed_in_users_outside_both_groups_get_a_clear_403() -> None:
    client = builders.client_for(builders.user())
    for url in page_urls():
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"viewers" in response.content and b"operators" in response.content


def test_viewers_get_403_for_every_action_and_nothing_changes(viewer_client: Client) -> None:
    agent = factories.agent()
    urls = [
        reverse("dashboard:system-pause"),
        reverse("dashboard:agent-pause", args=[agent.pk]),
        reverse("dashboard:team-pause", args=[agent.team_id]),
        reverse("dashboard:run-pause", args=[1]),
        reverse("dashboard:run-cancel", args=[1]),
        reverse("dashboard:lock-release", args=[1]),
        reverse("dashboard:deadlock-break", args=[1]),
        reverse("dashboard:approval-decide", args=[1]),
        reverse("dashboard:run-new"),
    ]
    for url in urls:
        page = viewer_client.post(url, {"paused": "1"})
        assert page.status_code == 403, url
        assert b"Only operators can do this" in page.content
        data = viewer_client.post(url, {"paused": "1"}, **JSON)
        assert data.status_code == 403
        assert data.json()["error"] == "operators_only"
    assert viewer_client.get(reverse("dashboard:run-new")).status_code == 403
    assert not Event.objects.filter(user__isnull=False).exists()


def test_actions_are_post_only(operator_client: Client) -> None:
    response = operator_client.get(reverse("dashboard:system-pause"))
    assert response.status_code == 405


def test_anonymous_actions_are_refused() -> None:
    client = Client()
    url = reverse("dashboard:system-pause")
    assert client.post(url, {"paused": "1"})["Location"].startswith(reverse("login"))
    assert client.post(url, {"paused": "1"}, **JSON).status_code == 401
    assert not Switchboard.objects.filter(paused=True).exists()


def test_csrf_is_enforced_on_actions(operator) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    url = reverse("dashboard:system-pause")
    refused = client.post(url, {"paused": "1"}, **JSON)
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf_failed"
    page = client.post(url, {"paused": "1"})
    assert page.status_code == 403 and b"security token" in page.content
    assert not Switchboard.objects.filter(paused=True).exists()
    # With the token from a page, the same request goes through.
    client.get(reverse("dashboard:overview"))
    token = client.cookies["csrftoken"].value
    done = client.post(url, {"paused": "1", "csrfmiddlewaretoken": token}, **JSON)
    assert done.status_code == 200, done.content
    assert Switchboard.objects.get().paused


def test_operators_see_action_buttons_and_viewers_do_not(
    operator_client: Client, viewer_client: Client
) -> None:
    url = reverse("dashboard:overview")
    assert b'id="pause-everything"' in operator_client.get(url).content
    viewer_page = viewer_client.get(url).content
    assert b'id="pause-everything"' not in viewer_page
    assert b'data-can-operate="0"' in viewer_page


def test_the_groups_exist_after_migrating_and_the_command_adds_users() -> None:
    from io import StringIO

    from django.contrib.auth.models import Group
    from django.core.management import call_command

    account = builders.user()
    call_command("dashboard_groups", "--operator", account.username, stdout=StringIO())
    assert set(Group.objects.values_list("name", flat=True)) >= {"operators", "viewers"}
    account = type(account).objects.get(pk=account.pk)
    assert account.has_perm("dashboard.operate") and account.has_perm("dashboard.watch")
