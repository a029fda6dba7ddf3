"""Double booking: agents in separate processes race for the same slots.

All AGENTS processes meet at a barrier before each slot, then try to book it
without waiting: acquire(wait=False), and only when granted and the slot is
still empty, write their name with the fencing token. Exactly one booking
per slot may result.
"""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.core.models import Agent, Resource, ResourceVersion
from orchestrator.core.resources import resource_create
from tests import factories
from tests.concurrency.processes import context, run_workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

AGENTS = 10
SLOTS = 5  # rounds of the same race, to give the race more chances to go wrong


def test_exactly_one_agent_books_each_slot() -> None:
    team = factories.team(default_lease_ttl=30)
    agents = [factories.agent(team_=team, name=f"booker-{i}") for i in range(AGENTS)]
    slot_ids = [
        resource_create(team=team, name=f"room-1-slot-{i}", value=None).pk for i in range(SLOTS)
    ]
    barrier = context().Barrier(AGENTS)

    results = run_workers(
        "tests.concurrency.tasks:booking_worker",
        [
            {"agent_id": agent.pk, "slot_ids": slot_ids, "ttl": 30, "barrier": barrier}
            for agent in agents
        ],
        timeout=90,
    )

    names = dict(Agent.objects.filter(team=team).values_list("pk", "name"))
    for slot_id in slot_ids:
        outcomes = Counter(result[slot_id] for result in results)
        assert outcomes["booked"] == 1, outcomes
        assert set(outcomes) <= {"booked", "busy", "already_booked"}, outcomes
        (winner,) = [
            agent.pk for agent, r in zip(agents, results, strict=True) if r[slot_id] == "booked"
        ]
        slot = Resource.objects.get(pk=slot_id)
        assert slot.value == names[winner]
        assert ResourceVersion.objects.filter(resource=slot).count() == 2
        assert slot.version == 1
