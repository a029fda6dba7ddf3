"""The interactive API docs work offline: Swagger UI comes from our static files."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("reader"))
    return client


def test_docs_page_loads_nothing_from_other_hosts(signed_in) -> None:
    page = signed_in.get("/api/v1/docs").content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any("swagger-ui-bundle.js" in url for url in urls)
    assert all(url.startswith("/") for url in urls), urls


def test_anonymous_browsers_are_sent_to_the_login_page() -> None:
    response = Client().get("/api/v1/docs")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/api/v1/docs")


@pytest.mark.parametrize("header", [None, "Bearer orc_not-a-token", "Basic abc"])
def test_the_openapi_document_needs_a_user_or_an_agent(header) -> None:
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    response = Client().get("/api/v1/openapi.json", **extra)

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_a_signed_in_user_reads_the_openapi_document(signed_in) -> None:
    response = signed_in.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")
