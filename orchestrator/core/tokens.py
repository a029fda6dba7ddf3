"""Agent API tokens: random, shown once, stored as a SHA-256 hash only.

Tokens carry 256 bits of randomness, so a fast hash is enough (there is
nothing to brute-force); lookups go by hash and the final comparison is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.events import actor_name, event_emit, service
from orchestrator.core.models import Agent

TOKEN_PREFIX = "orc_"  # noqa: S105 (a public prefix, not a secret)


def token_hash(raw: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@service
def agent_token_reset(
    *,
    agent: Agent,
    user: AbstractBaseUser | AnonymousUser | None = None,
    actor: str | None = None,
) -> str:
    """Give ``agent`` a fresh API token and return it; the old one stops working.

    The raw token is returned once and never stored.
    """
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    Agent.objects.filter(pk=agent.pk).update(
        token_hash=token_hash(raw), token_created_at=timezone.now()
    )
    event_emit(
        "agent.token_reset",
        agent=agent,
        user=user,
        actor=actor or actor_name(user=user),
        subject=agent,
    )
    return raw


def agent_by_token(raw: str | None) -> Agent | None:
    """The agent a raw token belongs to, or None."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    digest = token_hash(raw)
    agent = sql.agent_with_team(digest)  # with its team, in one hand-written statement
    if agent is None or not hmac.compare_digest(agent.token_hash or "", digest):
        return None
    return agent
