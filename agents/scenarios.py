"""Scenarios from the field: teams of scripted agents that share resources.

Each scenario builds a fresh team, its agents (scripted backend) and its
resources, all named ``<scenario>-<suffix>-...`` so that a scenario can run
any number of times in one database, then starts a run. The same agents can
run unguarded (``Run.unguarded``: no locks, no version checks) to show what
goes wrong without the protocol; ``agents.checker`` tells the two apart.

The scripted backend has no conditionals and only numeric arithmetic
(``{"$inc": n}``), so shared documents are counters of their edits, and a
seeded choice that must stay the same across several calls (which slot an
agent books) is drawn here, from the scenario's seed, rather than with
``$choice`` (which draws anew at every step).

Where it fits, a script makes the lock cycle in two transactions: ``acquire`` (whose
grant carries the value and version, which count as a read for ``$inc`` and
``$version``), then the last ``write`` with ``release: true``, which releases the lock
in the write's own commit if the write is applied (a refused write keeps the lock, so
the retry's re-read and write happen under it). A write that may become an approval
(the demo's editor) keeps its own ``release``: an approval keeps the lock.

* ``booking``: N agents each want one room at one hour (resources
  ``slot-<room>-<hour>``, about two agents per slot), and would take one of two
  other slots instead. A guarded booking takes the slot's exclusive lock (which
  says its version) and writes ``[agent]`` with ``expected_version`` 0, releasing
  the lock with the write: a free slot is at
  version 0, a booked one is not, so a second booking is refused
  (version_conflict), which is final. Its agent releases the slot and tries its
  next one, and when none is left it finishes, saying it could not book
  (``guest_script``): a careful agent, never one that retries what cannot
  succeed. Unguarded, everybody reads the free slot and every booking is
  applied: double bookings.
* ``pipeline``: researchers append to ``notes``, writers revise ``draft`` (under
  a shared lock on ``notes``, which they read), validators stamp the ``draft``
  they reviewed. Unguarded, edits based on the same version overwrite each
  other: lost updates.
* ``deadlock``: agents in pairs take two resources in opposite orders, then
  increment both. Guarded, the deadlock is detected and broken by the team's
  policy (abort the youngest); unguarded, there is no deadlock but the
  increments are lost.
* ``transfers``: tellers move money between accounts, each transfer naming its
  two accounts in its own order, as the ``deadlock`` clerks do; but each locks
  both in one call (``acquire_all``, a lock set taken in one global order), so
  no deadlock ever forms, and no money is lost or made (the sum of the balances
  stays what it was). Unguarded, concurrent transfers overwrite each other's
  balances.
* ``demo``: what ``make run`` keeps running (``plan_demo``): contention,
  deadlocks and approvals that never stop coming, at a pace a person can follow.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from agents.config import ScriptedConfig, config_dict
from agents.runtime import run_start
from orchestrator.core.models import (
    Agent,
    Backend,
    ConflictPolicy,
    DeadlockPolicy,
    LockMode,
    Run,
    Team,
)
from orchestrator.core.resources import resource_create
from orchestrator.core.types import User


@dataclass
class AgentPlan:
    name: str
    role: str
    script: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)  # more scripted config: think, loop


@dataclass
class Plan:
    goal: str
    resources: dict[str, Any]  # name -> initial value
    agents: list[AgentPlan] = field(default_factory=list)
    max_steps: int = 50
    requires_approval: set[str] = field(default_factory=set)  # resource names


def _call(tool: str, resource: str, **args: Any) -> dict[str, Any]:
    return {"tool": tool, "args": {"resource": resource, **args}}


def increment_script(resource: str) -> list[dict[str, Any]]:
    """Read-modify-write under an exclusive lock, in two transactions: the grant says
    the value and version, and the write releases the lock when it is applied."""
    return [
        _call("acquire", resource),
        _call("write", resource, value={"$inc": 1}, expected_version="$version", release=True),
    ]


def _booking_calls(slot: str, on_refused: int) -> list[dict[str, Any]]:
    """Take ``slot``'s lock and write ``[agent]`` at version 0 (the free slot), releasing
    the lock with the write. A booked slot is refused (version_conflict), never
    overwritten, and the lock is kept; that refusal is final (agents.backends.scripted),
    so the agent goes ``on_refused`` entries on (to a release)."""
    write = _call("write", slot, value=["{agent}"], expected_version=0, release=True)
    return [_call("acquire", slot), {**write, "on_refused": on_refused}]


def booking_script(slot: str) -> list[dict[str, Any]]:
    """Book ``slot`` for the agent, or leave it if somebody booked it first, and go on
    with the rest of its script (so that scripts booking several slots can be joined
    end to end). The release is for a refused booking (whose lock is kept); after a
    booking, whose write released the lock, it answers not_holder, which counts as
    done."""
    return [*_booking_calls(slot, on_refused=1), _call("release", slot)]


def guest_script(slots: list[str]) -> list[dict[str, Any]]:
    """Book the first of ``slots`` that is free, trying them in order, and finish
    saying which; or, when every one was taken, finish saying it could not book.
    Each slot taken by somebody else costs 3 steps (acquire, write, release)."""
    script: list[dict[str, Any]] = []
    for slot in slots:
        script += [
            *_booking_calls(slot, on_refused=2),  # refused: on to the release
            {"tool": "finish", "args": {"summary": f"booked {slot}"}},
            _call("release", slot),  # the slot was taken: leave it, try the next one
        ]
    taken = ", ".join(slots)
    script.append({"tool": "finish", "args": {"summary": f"could not book: {taken} taken"}})
    return script


BOOKING_ALTERNATIVES = 2  # other slots a guest would take when the one it wants is gone


def plan_booking(prefix: str, agents: int, rng: random.Random) -> Plan:
    slot_count = max(1, (agents + 1) // 2)  # about two agents per slot
    rooms = max(1, (slot_count + 1) // 2)
    hours = -(-slot_count // rooms)
    slots = [f"{prefix}-slot-room{r + 1}-{9 + h:02d}" for r in range(rooms) for h in range(hours)]
    slots = slots[:slot_count]
    plan = Plan(
        goal="Book a room at the hour you want, or another free one; never take a slot "
        "somebody already booked.",
        resources={slot: [] for slot in slots},
        # A guest tries at most 3 slots (10 steps); the rest is room for lost locks
        # taken again (a write refused for a stale fence is retried, up to 3 times).
        max_steps=60,
    )
    # The wanted slots first, then the alternatives: a seed wants what it wanted before.
    wanted = [rng.choice(slots) for _ in range(agents)]
    for i, slot in enumerate(wanted):
        others = [other for other in slots if other != slot]
        alternatives = rng.sample(others, min(BOOKING_ALTERNATIVES, len(others)))
        short = [name.removeprefix(prefix + "-") for name in (slot, *alternatives)]
        role = f"You want {short[0]}" + (
            f"; {' or '.join(short[1:])} would do." if alternatives else "."
        )
        plan.agents.append(
            AgentPlan(
                name=f"{prefix}-guest{i + 1}", role=role, script=guest_script([slot, *alternatives])
            )
        )
    return plan


def plan_pipeline(prefix: str, agents: int, rng: random.Random) -> Plan:
    notes, draft = f"{prefix}-notes", f"{prefix}-draft"
    plan = Plan(
        goal="Research the topic, write the report from the notes, and validate the draft.",
        resources={notes: 0, draft: 0},  # counters of the edits made to each document
    )
    roles = ["researcher", "writer", "validator"]
    for i in range(agents):
        role = roles[i % len(roles)]
        if role == "researcher":
            round_ = increment_script(notes)  # append a note
        elif role == "writer":
            round_ = [
                _call("acquire", notes, mode=LockMode.SHARED),  # the grant reads the notes
                *increment_script(draft),  # revise the draft from them
                _call("release", notes),
            ]
        else:
            round_ = increment_script(draft)  # review the draft and stamp it
        plan.agents.append(
            AgentPlan(name=f"{prefix}-{role}{i // 3 + 1}", role=role, script=round_ * 2)
        )
    rng.shuffle(plan.agents)  # who starts first is part of the seed
    return plan


def _clerk(name: str, first: str, second: str, config: dict[str, Any] | None = None) -> AgentPlan:
    """An agent that takes ``first`` then ``second`` and increments both: two of them
    in opposite orders make the classic lock-ordering deadlock. Both writes are made
    while it holds both locks (the grants say the values); the second releases its
    lock, then the first lock is released."""
    return AgentPlan(
        name=name,
        role=f"You update {first} and then {second}.",
        script=[
            _call("acquire", first),
            _call("acquire", second),
            _call("write", first, value={"$inc": 1}, expected_version="$version"),
            _call("write", second, value={"$inc": 1}, expected_version="$version", release=True),
            _call("release", first),
        ],
        config=config or {},
    )


def plan_deadlock(prefix: str, agents: int, rng: random.Random) -> Plan:
    pairs = max(1, agents // 2)
    plan = Plan(
        goal="Update both of your pair's ledgers together.",
        resources={f"{prefix}-ledger{k + 1}-{side}": 0 for k in range(pairs) for side in "ab"},
    )
    for i in range(agents):
        k = min(i // 2, pairs - 1)
        first, second = f"{prefix}-ledger{k + 1}-a", f"{prefix}-ledger{k + 1}-b"
        if i % 2:
            first, second = second, first  # the opposite order: the classic deadlock
        plan.agents.append(_clerk(f"{prefix}-clerk{i + 1}", first, second))
    return plan


def transfer_script(source: str, target: str, amount: int) -> list[dict[str, Any]]:
    """Move ``amount`` from ``source`` to ``target``: both accounts locked in one call
    (``acquire_all``, all or nothing, whatever order they are named in; its grant says
    both balances), the debit and the credit written while both are held, the credit
    releasing its lock, then the other lock released.

    As with the ``deadlock`` clerks, a write refused for a stale fence (the locks ran
    out, say under a worker stalled between steps) takes the set again and does the
    transfer over from its reads: a debit already applied would be applied again."""
    return [
        {"tool": "acquire_all", "args": {"resources": [source, target]}},
        _call("write", source, value={"$inc": -amount}, expected_version="$version"),
        _call("write", target, value={"$inc": amount}, expected_version="$version", release=True),
        _call("release", source),
    ]


OPENING_BALANCE = 100
TRANSFERS_PER_TELLER = 2


def plan_transfers(prefix: str, agents: int, rng: random.Random) -> Plan:
    """Tellers make transfers between a few accounts (about one for three tellers, at
    least two), each naming its pair in a seeded order: with one ``acquire`` after the
    other, the orders would cross and deadlock; with ``acquire_all`` they cannot."""
    accounts = [f"{prefix}-account{k + 1}" for k in range(max(2, (agents + 1) // 3))]
    plan = Plan(
        goal="Make your transfers between the accounts; never lose or make money.",
        resources=dict.fromkeys(accounts, OPENING_BALANCE),
    )
    for i in range(agents):
        transfers = [
            (*rng.sample(accounts, 2), rng.randint(1, 10)) for _ in range(TRANSFERS_PER_TELLER)
        ]
        said = "; ".join(
            f"{amount} from {source.removeprefix(prefix + '-')} to "
            f"{target.removeprefix(prefix + '-')}"
            for source, target, amount in transfers
        )
        plan.agents.append(
            AgentPlan(
                name=f"{prefix}-teller{i + 1}",
                role=f"You transfer {said}.",
                script=[step for transfer in transfers for step in transfer_script(*transfer)],
            )
        )
    return plan


DEMO_THINK = [0.5, 2.5]  # seconds a demo agent "thinks" before each turn


def plan_demo(prefix: str, agents: int, rng: random.Random) -> Plan:
    """A run that goes on until an operator stops it (every script loops), made to be
    watched: ticket sellers contend for a few shared counters, two clerks take two
    ledgers in opposite orders (deadlocks for the operator to break), and an editor
    proposes changes to a press release that requires approval. Agents think for a
    second or two before each turn, as a model would."""
    counters = [f"{prefix}-tickets-{day}" for day in ("fri", "sat", "sun")]
    ledgers = [f"{prefix}-ledger-a", f"{prefix}-ledger-b"]
    release = f"{prefix}-press-release"
    plan = Plan(
        goal="Sell tickets, keep the ledgers, and publish the press release.",
        resources={**dict.fromkeys(counters, 0), **dict.fromkeys(ledgers, 0), release: 0},
        max_steps=1_000_000,
        requires_approval={release},
    )
    # Patient agents (20 retries, not 3): the operator takes their time, and the demo goes on.
    looping = {"think": DEMO_THINK, "loop": True, "retries": 20}
    for i in range(max(1, agents - 3)):
        counter = rng.choice(counters)
        plan.agents.append(
            AgentPlan(
                name=f"{prefix}-seller{i + 1}",
                role=f"You sell tickets for {counter.removeprefix(prefix + '-')}.",
                script=increment_script(counter),
                config=looping,
            )
        )
    for i, (first, second) in enumerate((ledgers, ledgers[::-1])):
        plan.agents.append(_clerk(f"{prefix}-clerk{i + 1}", first, second, looping))
    revise = _call("write", release, value={"$inc": 1}, expected_version="$version")
    plan.agents.append(
        AgentPlan(
            name=f"{prefix}-editor",
            role="You revise the press release; an operator approves each revision.",
            # Every revision waits for an operator, and an approval keeps the lock: the
            # editor releases it itself. A rejection is final: release, start a new one.
            script=[
                _call("acquire", release),
                {**revise, "on_refused": 1},
                _call("release", release),
            ],
            config={**looping, "think": [2.0, 5.0]},
        )
    )
    return plan


SCENARIOS: dict[str, Callable[[str, int, random.Random], Plan]] = {
    "booking": plan_booking,
    "pipeline": plan_pipeline,
    "deadlock": plan_deadlock,
    "transfers": plan_transfers,
    "demo": plan_demo,
}


@dataclass
class Started:
    run: Run
    team: Team
    agents: list[Agent]
    resources: list[str]


def scenario_start(
    *,
    name: str,
    agents: int = 8,
    seed: int = 0,
    unguarded: bool = False,
    ask_operator: bool = False,
    user: User = None,
) -> Started:
    """Create a fresh team, its scripted agents and resources, and start the run.

    The agents' behaviour is a function of ``seed`` only; names get a random
    suffix so that the same scenario can run again in the same database. By
    default the team's policies let the run finish unattended (conflicts
    rejected, deadlocks broken by aborting the youngest waiter);
    ``ask_operator`` hands both decisions to an operator instead.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    if agents < 1:
        raise ValueError("a scenario needs at least one agent")
    prefix = scenario_prefix(name)
    plan = SCENARIOS[name](prefix, agents, random.Random(seed))  # noqa: S311 (a simulation)
    return plan_start(
        plan=plan,
        prefix=prefix,
        seed=seed,
        unguarded=unguarded,
        ask_operator=ask_operator,
        user=user,
    )


def scenario_prefix(name: str) -> str:
    """A fresh prefix for the names of one scenario run's team and agents."""
    return f"{name}-{secrets.token_hex(3)}"


def plan_start(
    *,
    plan: Plan,
    prefix: str,
    seed: int = 0,
    unguarded: bool = False,
    ask_operator: bool = False,
    elsewhere: bool = False,
    user: User = None,
) -> Started:
    """Create the team ``prefix``, the plan's scripted agents and resources, and start
    the run (see :func:`scenario_start`). ``elsewhere``: the agents run elsewhere (the
    coding scenario's), so the run gets no steps to enqueue (agents.external)."""
    with transaction.atomic():
        team = Team.objects.create(
            name=prefix,
            description=plan.goal,
            conflict_policy=ConflictPolicy.ASK_OPERATOR if ask_operator else ConflictPolicy.REJECT,
            deadlock_policy=DeadlockPolicy.ASK_OPERATOR
            if ask_operator
            else DeadlockPolicy.ABORT_YOUNGEST,
        )
        members = [
            Agent.objects.create(
                team=team,
                name=agent.name,
                role=agent.role,
                backend=Backend.SCRIPTED,
                config=config_dict(
                    ScriptedConfig.model_validate(
                        {"script": agent.script, "seed": seed, **agent.config}
                    )
                ),
            )
            for agent in plan.agents
        ]
    for resource, value in plan.resources.items():
        resource_create(
            name=resource,
            value=value,
            team=team,
            user=user,
            requires_approval=resource in plan.requires_approval,
        )
    run = run_start(
        team=team,
        goal=plan.goal,
        agents=members,
        max_steps=plan.max_steps,
        seed=seed,
        unguarded=unguarded,
        elsewhere=elsewhere,
        user=user,
    )
    return Started(run, team, members, list(plan.resources))
