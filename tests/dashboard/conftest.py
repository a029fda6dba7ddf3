from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tests.dashboard import builders
from tests.dashboard.servers import CHROMIUM


@pytest.fixture
def operator(db):
    return builders.operator("olivia")


@pytest.fixture
def viewer(db):
    return builders.viewer("victor")


@pytest.fixture
def operator_client(operator) -> Client:
    return builders.client_for(operator)


@pytest.fixture
def viewer_client(viewer) -> Client:
    return builders.client_for(viewer)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test module that drives it."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop set in this thread while it runs, so
    # Django takes the tests' ORM calls (made between Playwright calls, one at a time)
    # for calls from async code. Allowed for the modules that use a browser only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
