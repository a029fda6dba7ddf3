"""The interactive API docs work offline: Swagger UI comes from our static files."""

from __future__ import annotations

import re

from django.test import Client


def test_docs_page_loads_nothing_from_other_hosts() -> None:
    page = Client().get("/api/v1/docs").content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any("swagger-ui-bundle.js" in url for url in urls)
    assert all(url.startswith("/") for url in urls), urls
