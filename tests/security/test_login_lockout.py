"""Repeated failed sign-ins lock the username out from that address (django-axes)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator():
    return get_user_model().objects.create_user("olga", password=PASSWORD)


def sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_five_failures_lock_the_account_out_even_for_the_right_password(operator) -> None:
    client = Client()
    for _ in range(4):
        response = sign_in(client, "olga", "guess")
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter a correct username and password" in response.content
    locked = sign_in(client, "olga", "guess")
    assert locked.status_code == 429
    assert b"Too many failed sign-in attempts" in locked.content

    after = sign_in(client, "olga", PASSWORD)

    assert after.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_per_username_and_address(operator) -> None:
    for _ in range(5):
        sign_in(Client(), "olga", "guess", address="10.0.0.1")

    # The same person from another address, and a made-up X-Forwarded-For, are
    # judged by the socket's address only (no proxy configured).
    elsewhere = sign_in(Client(), "olga", PASSWORD, address="10.0.0.2")
    spoofed = Client().post(
        "/login/",
        {"username": "olga", "password": PASSWORD},
        REMOTE_ADDR="10.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )

    assert elsewhere.status_code == 302
    assert spoofed.status_code == 429


def test_a_success_resets_the_count(operator) -> None:
    client = Client()
    for _ in range(4):
        sign_in(client, "olga", "guess")
    assert sign_in(client, "olga", PASSWORD).status_code == 302
    client.logout()

    for _ in range(4):
        assert sign_in(client, "olga", "guess").status_code == 200
    assert sign_in(client, "olga", PASSWORD).status_code == 302


def test_the_admin_login_is_guarded_too(operator) -> None:
    client = Client()
    for _ in range(5):
        client.post(
            "/admin/login/", {"username": "olga", "password": "guess"}, REMOTE_ADDR="10.0.0.3"
        )
    response = client.post(
        "/admin/login/", {"username": "olga", "password": PASSWORD}, REMOTE_ADDR="10.0.0.3"
    )
    assert response.status_code == 429
