"""Agent tokens: random, shown once, stored only as a hash, compared in constant time."""

from __future__ import annotations

import hmac

import pytest
from django.db import connection

from orchestrator.core import tokens
from orchestrator.core.models import Agent
from tests import factories

pytestmark = pytest.mark.django_db


def test_the_raw_token_is_stored_nowhere() -> None:
    agent = factories.agent()
    raw = tokens.agent_token_reset(agent=agent)

    agent.refresh_from_db()
    assert agent.token_hash == tokens.token_hash(raw) != raw
    assert len(raw) > 40 and raw.startswith(tokens.TOKEN_PREFIX)
    with connection.cursor() as cursor:  # not in any column of any table
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', "
            "'jsonb')"
        )
        for table, column in cursor.fetchall():
            cursor.execute(
                f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s',
                [f"%{raw[len(tokens.TOKEN_PREFIX) :]}%"],
            )
            assert cursor.fetchone()[0] == 0, (table, column)


def test_a_reset_token_replaces_the_old_one() -> None:
    agent = factories.agent()
    old = tokens.agent_token_reset(agent=agent)
    new = tokens.agent_token_reset(agent=agent)

    assert tokens.agent_by_token(old) is None
    assert tokens.agent_by_token(new) == agent


@pytest.mark.parametrize(
    "raw", ["", "orc_", "orc_wrong", "not-a-prefix", "orc_" + "x" * 500, "orc_\x00", "orc_é"]
)
def test_wrong_tokens_find_no_agent(raw: str) -> None:
    tokens.agent_token_reset(agent=factories.agent())

    assert tokens.agent_by_token(raw) is None


def test_the_final_comparison_is_constant_time(monkeypatch) -> None:
    agent = factories.agent()
    raw = tokens.agent_token_reset(agent=agent)
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)

    assert tokens.agent_by_token(raw) == agent
    stored = Agent.objects.get(pk=agent.pk).token_hash
    assert compared == [(stored, tokens.token_hash(raw))]


def test_the_lookup_loads_the_agent_and_its_team_as_the_orm_does(
    django_assert_num_queries,
) -> None:
    agent = factories.agent()
    raw = tokens.agent_token_reset(agent=agent)
    expected = Agent.objects.select_related("team").get(pk=agent.pk)

    with django_assert_num_queries(1):  # one statement, the team with it
        found = tokens.agent_by_token(raw)
        team = found.team

    for model, got, want in ((Agent, found, expected), (type(team), team, expected.team)):
        for field in model._meta.concrete_fields:
            assert getattr(got, field.attname) == getattr(want, field.attname), field.name
    assert found._state.adding is False and found._state.db == "default"
