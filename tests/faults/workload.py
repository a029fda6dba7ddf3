"""The agents of a fault run: scripted read-modify-write on shared counters, bookings
of shared slots, and zombie candidates, built from a seed.

* **counter agents** (team ``main``, lease 10 s) increment shared counters under an
  exclusive lock, in two calls (agents.scenarios.increment_script): acquire (the grant
  says the value and version), write ``{"$inc": 1}`` at that version with ``release``
  (the lock ends with the applied write); several agents per counter, so that they
  queue for it.
* **zombie agents** (team ``zombies``, lease 2 s) run the same increments on the
  same counters, thinking a little before each call: the nemesis stops the worker
  of one of them while it holds a counter's lock (see nemesis.py).
* **booking agents** (team ``main``) each try to book a sequence of slots drawn from
  a shared pool: acquire, write ``[agent]`` at version 0 (a free slot) with
  ``release``, release (a no-op after a booking: not_holder, which counts as done).
  A slot somebody booked first is refused (version_conflict) and never overwritten;
  that refusal is final, so the scripted agent releases the slot and goes on with its
  next booking (agents.scenarios.booking_script).

One step runs one scripted call, so every acquire, read, write and release is a
step (an RQ job) of its own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

STEP_MARGIN = 3  # max_steps: the longest script times this (retries), plus some
ROUND_CALLS = 2  # calls of one increment (agents.scenarios.increment_script)

TOOLS = ("acquire", "read", "write", "release")


@dataclass(frozen=True)
class Plan:
    """What to build for a run aiming at ``operations`` tool calls."""

    seed: int
    operations: int
    counters: int = 6
    counter_agents: int = 12
    zombie_agents: int = 2
    booking_agents: int = 6
    bookings_per_agent: int = 8
    slots: int = 30
    lease_ttl: int = 10
    zombie_ttl: int = 2
    zombie_think: tuple[float, float] = (0.15, 0.3)
    think: tuple[float, float] = (0.0, 0.02)
    unguarded: bool = False  # bypass the protocol (to show that the checks catch it)

    @property
    def prefix(self) -> str:
        return f"faults{self.seed}"

    @property
    def zombie_rounds(self) -> int:
        return max(10, math.ceil(self.operations / 120))

    @property
    def counter_rounds(self) -> int:
        """Rounds per counter agent: counter and zombie agents alone make
        ``operations`` (every round of theirs is done in the end); bookings come on top."""
        zombie = self.zombie_agents * self.zombie_rounds * ROUND_CALLS
        left = max(self.operations - zombie, self.counter_agents * ROUND_CALLS)
        return math.ceil(left / (self.counter_agents * ROUND_CALLS))

    def counter_names(self) -> list[str]:
        return [f"{self.prefix}-counter-{i}" for i in range(self.counters)]

    def slot_names(self) -> list[str]:
        return [f"{self.prefix}-slot-{i}" for i in range(self.slots)]


@dataclass
class Built:
    """The ids of what was built and started."""

    runs: list[int]
    zombie_agents: list[int]
    counters: list[str]
    slots: list[str]


def build(plan: Plan) -> Built:
    """Create the teams, resources and agents, then start one run per team (their
    first steps are enqueued on commit)."""
    from agents.runtime import run_start
    from agents.scenarios import booking_script, increment_script
    from orchestrator.core.models import (
        Agent,
        GrantAccess,
        Resource,
        ResourceGrant,
        Team,
    )
    from orchestrator.core.resources import resource_create
    from orchestrator.core.tenancy import qualify

    rng = random.Random(plan.seed)  # a simulation, seeded
    main = Team.objects.create(name=f"{plan.prefix}-main", default_lease_ttl=plan.lease_ttl)
    zombies = Team.objects.create(name=f"{plan.prefix}-zombies", default_lease_ttl=plan.zombie_ttl)
    counters, slots = plan.counter_names(), plan.slot_names()
    for name in counters:
        resource_create(name=name, value=0, team=main)
    for name in slots:
        resource_create(name=name, value=[], team=main)

    def agent(team: Team, name: str, script: list[dict[str, Any]], think: tuple) -> Agent:
        config = {"script": script, "think": list(think), "seed": rng.randrange(2**31)}
        return Agent.objects.create(team=team, name=name, backend="scripted", config=config)

    longest = 0
    for i in range(plan.counter_agents):
        script = increment_script(counters[i % plan.counters]) * plan.counter_rounds
        agent(main, f"{plan.prefix}-inc-{i}", script, plan.think)
        longest = max(longest, len(script))
    for i in range(plan.booking_agents):
        wanted = rng.sample(slots, min(plan.bookings_per_agent, len(slots)))
        script = [call for slot in wanted for call in booking_script(slot)]
        agent(main, f"{plan.prefix}-guest-{i}", script, plan.think)
        longest = max(longest, len(script))
    # The zombies' team works on the main team's counters, shared with it (core/tenancy.py).
    for name in counters:
        ResourceGrant.objects.create(
            owner=main,
            team=zombies,
            resource=Resource.objects.get(team=main, name=name),
            access=GrantAccess.READ_WRITE,
        )
    zombie_ids = []
    for i in range(plan.zombie_agents):
        shared = qualify(main.name, counters[i % plan.counters])
        script = increment_script(shared) * plan.zombie_rounds
        zombie_ids.append(agent(zombies, f"{plan.prefix}-zombie-{i}", script, plan.zombie_think).pk)
        longest = max(longest, len(script))
    max_steps = longest * STEP_MARGIN + 100
    runs = [
        run_start(
            team=team, goal=goal, max_steps=max_steps, seed=plan.seed, unguarded=plan.unguarded
        ).pk
        for team, goal in (
            (main, "increment the shared counters and book slots, under faults"),
            (zombies, "increment the shared counters while the nemesis stalls you"),
        )
        if team.agents.exists()
    ]
    return Built(runs=runs, zombie_agents=zombie_ids, counters=counters, slots=slots)
