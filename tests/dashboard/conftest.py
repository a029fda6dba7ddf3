from __future__ import annotations

import pytest
from django.test import Client

from tests.dashboard import builders


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
