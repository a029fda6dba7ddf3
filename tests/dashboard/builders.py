"""Users of the dashboard: operators act, viewers watch, others see nothing."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client

from orchestrator.dashboard.groups import groups_ensure
from orchestrator.dashboard.permissions import OPERATORS_GROUP, VIEWERS_GROUP

PASSWORD = "correct horse battery staple"
_seq = itertools.count(1)


def user(group: str | None = None, username: str | None = None) -> Any:
    username = username or f"user{next(_seq)}"
    created = get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD)
    if group is not None:
        created.groups.add(groups_ensure()[group])
    return created


def operator(username: str | None = None) -> Any:
    return user(OPERATORS_GROUP, username)


def viewer(username: str | None = None) -> Any:
    return user(VIEWERS_GROUP, username)


def client_for(account: Any) -> Client:
    client = Client()
    client.force_login(account)
    return client


def session_cookie(account: Any) -> str:
    return client_for(account).cookies["sessionid"].value
