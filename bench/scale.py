"""1,000 agents and 10,000 resources (issue 18, point 3): a board at that size, and what
the dashboard, the monitor and the deadlock detector cost on it.

Run:  .venv/bin/python bench/scale.py [--agents 1000] [--teams 20] [--resources 10000]
                                      [--locks 2000] [--waits 500] [--deadlocks 3]
      .venv/bin/python bench/scale.py --only-fixture   # fill the database, print a login

The fixture (:func:`build`, importable: ``from bench.scale import build`` inside a
Django process on a migrated database) is made through the real models with
``bulk_create``, in one transaction, as the protocol leaves them:

* ``teams`` teams, the agents and resources spread evenly over them (names
  ``team-07``, ``t07-agent-0012``, ``t07-res-00042``); each resource has its version-0
  history row; one running run per team, one step per agent.
* ``locks`` live exclusive locks: in each team, lock ``i`` is on the team's resource
  ``i``, held by the team's agent ``i mod agents-per-team``. Each locked resource's
  fence is 1 and the lock's token is 1 (one exclusive grant so far); the lease runs
  for a day (``LEASE``), so no lock expires during a bench.
* ``waits`` waiting LockRequests, each queued behind a live lock of its own team:
  the team's agents 0, 1, 2, ... wait in chains of ``CHAIN`` (agent k waits for a
  resource held by agent k + 1, the chain's last for one held by the team's last
  agent, who waits for nothing: that resource's queue is several deep). In the
  first ``deadlocks`` teams the last chain closes on its first agent instead: a
  cycle, reported by the real detector (``deadlock_sweep``) once the rows are in.

The CLI (re)creates its own database, ``$BENCH_DB`` (default
``orchestrator_bench_scale``) on the server of DATABASE_URL, and uses the Redis of
``$BENCH_REDIS_URL`` (default database 6); with ``--only-fixture`` it builds the
board, creates a superuser in the operators group and prints its login.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = os.environ.get("BENCH_DB", "orchestrator_bench_scale")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
LEASE = 86400  # seconds: the fixture's locks outlive any bench run
CHAIN = 5  # agents per wait chain
BATCH = 2000


# --- the fixture ----------------------------------------------------------------------


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


@dataclass
class Board:
    """What :func:`build` made: the counts, the seconds it took, and the ids a bench
    needs (per team: its agents and resources in order, the locked and the free)."""

    counts: dict[str, int]
    seconds: float
    team_ids: list[int] = field(default_factory=list)
    agents: dict[int, list[int]] = field(default_factory=dict)  # team id -> agent ids
    resources: dict[int, list[int]] = field(default_factory=dict)  # team id -> resource ids
    locked: dict[int, int] = field(default_factory=dict)  # team id -> resources 0..n-1 locked

    def free(self, team_id: int) -> list[int]:
        """The team's resources nobody holds or waits for."""
        return self.resources[team_id][self.locked[team_id] :]


def _waits_of_team(n_agents: int, n_locks: int, n_waits: int, cycle: bool) -> list[tuple[int, int]]:
    """(waiting agent, resource index) of one team's waits, in queue order. Agent ``a``
    holds the resources ``a``, ``a + n_agents``, ...; its first is resource ``a``."""
    if n_waits == 0:
        return []
    if n_waits >= n_agents or n_locks < n_agents:
        raise ValueError(
            "each team needs more agents than waits, and at least one lock per agent "
            f"(a team here: {n_agents} agents, {n_locks} locks, {n_waits} waits)"
        )
    waits = []
    end = n_agents - 1  # the agent every chain ends on: it waits for nothing
    for k in range(n_waits):
        last_of_chain = k % CHAIN == CHAIN - 1 or k == n_waits - 1
        target = k + 1 if not last_of_chain else end
        waits.append((k, target))
    if cycle:  # the last chain closes on its first agent
        k, _ = waits[-1]
        start = k - k % CHAIN
        if start != k:
            waits[-1] = (k, start)
    return waits


def build(
    *,
    agents: int = 1000,
    teams: int = 20,
    resources: int = 10_000,
    locks: int = 2000,
    waits: int = 500,
    deadlocks: int = 3,
    value_words: int = 12,
) -> Board:
    """Fill the current (migrated, empty) database with the board described in the
    module docstring, in one transaction; the deadlock cycles are then reported by
    ``deadlock_sweep``. Returns what it made."""
    from django.db import transaction

    from orchestrator.core.deadlocks import deadlock_sweep
    from orchestrator.core.models import (
        Agent,
        AgentStatus,
        Lock,
        LockMode,
        LockRequest,
        Resource,
        ResourceVersion,
        Run,
        Step,
        Team,
    )
    from orchestrator.core.queue import db_now

    began = time.perf_counter()
    per_agents, per_resources = spread(agents, teams), spread(resources, teams)
    per_locks, per_waits = spread(locks, teams), spread(waits, teams)
    if any(n_l > n_r for n_l, n_r in zip(per_locks, per_resources, strict=True)):
        raise ValueError("more locks than resources in a team")
    plans = [
        _waits_of_team(per_agents[t], per_locks[t], per_waits[t], cycle=t < deadlocks)
        for t in range(teams)
    ]
    words = ("agent", "lock", "lease", "fence", "write", "version", "queue", "plan")
    board = Board(counts={}, seconds=0.0)
    with transaction.atomic():
        now = db_now()
        team_rows = Team.objects.bulk_create(
            Team(name=f"team-{t:02d}", default_lease_ttl=30) for t in range(teams)
        )
        board.team_ids = [team.pk for team in team_rows]
        waiting_agents = [{a for a, _ in plan} for plan in plans]
        agent_rows = Agent.objects.bulk_create(
            (
                Agent(
                    name=f"t{t:02d}-agent-{a:04d}",
                    team=team,
                    role="bench agent",
                    status=AgentStatus.WAITING_LOCK
                    if a in waiting_agents[t]
                    else AgentStatus.RUNNING,
                )
                for t, team in enumerate(team_rows)
                for a in range(per_agents[t])
            ),
            batch_size=BATCH,
        )
        resource_rows = Resource.objects.bulk_create(
            (
                Resource(
                    name=f"t{t:02d}-res-{r:05d}",
                    team=team,
                    value={
                        "n": r,
                        "text": " ".join(words[(r + w) % 8] for w in range(value_words)),
                    },
                    fence=1 if r < per_locks[t] else 0,
                )
                for t, team in enumerate(team_rows)
                for r in range(per_resources[t])
            ),
            batch_size=BATCH,
        )
        ResourceVersion.objects.bulk_create(
            (ResourceVersion(resource=res, version=0, value=res.value) for res in resource_rows),
            batch_size=BATCH,
        )
        it_a, it_r = iter(agent_rows), iter(resource_rows)
        for t, team in enumerate(team_rows):
            board.agents[team.pk] = [next(it_a).pk for _ in range(per_agents[t])]
            board.resources[team.pk] = [next(it_r).pk for _ in range(per_resources[t])]
            board.locked[team.pk] = per_locks[t]
        runs = Run.objects.bulk_create(
            Run(team=team, goal="bench: hold, wait, write", status=Run.Status.RUNNING,
                started_at=now)
            for team in team_rows
        )  # fmt: skip
        steps = Step.objects.bulk_create(
            (
                Step(
                    run=run,
                    agent_id=agent_id,
                    number=1,
                    status=Step.Status.WAITING if a in waiting_agents[t] else Step.Status.RUNNING,
                    started_at=now,
                )
                for t, (team, run) in enumerate(zip(team_rows, runs, strict=True))
                for a, agent_id in enumerate(board.agents[team.pk])
            ),
            batch_size=BATCH,
        )
        step_of = {step.agent_id: step.pk for step in steps}
        Lock.objects.bulk_create(
            (
                Lock(
                    resource_id=board.resources[team.pk][i],
                    agent_id=board.agents[team.pk][i % per_agents[t]],
                    mode=LockMode.EXCLUSIVE,
                    token=1,
                    acquired_at=now,
                    expires_at=now + timedelta(seconds=LEASE),
                )
                for t, team in enumerate(team_rows)
                for i in range(per_locks[t])
            ),
            batch_size=BATCH,
        )
        # Queue order is id order: one bulk insert, in the order the plan queues them.
        LockRequest.objects.bulk_create(
            (
                LockRequest(
                    resource_id=board.resources[team.pk][target],
                    agent_id=board.agents[team.pk][a],
                    mode=LockMode.EXCLUSIVE,
                    ttl=LEASE,
                    step_id=step_of[board.agents[team.pk][a]],
                    requested_at=now + timedelta(microseconds=n),
                )
                for n, (team, (a, target)) in enumerate(
                    (team, wait)
                    for team, plan in zip(team_rows, plans, strict=True)
                    for wait in plan
                )
            ),
            batch_size=BATCH,
        )
    found = deadlock_sweep()
    board.counts = {
        "teams": len(team_rows),
        "agents": len(agent_rows),
        "resources": len(resource_rows),
        "locks": Lock.objects.filter(released_at__isnull=True).count(),
        "waits": LockRequest.objects.filter(status="waiting").count(),
        "deadlocks": len(found.detected),
    }
    board.seconds = time.perf_counter() - began
    return board


# --- processes ------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """The environment of every process of the bench (its database and Redis)."""
    from locks import bench_database_url

    return {
        **os.environ,
        "DATABASE_URL": bench_database_url(BENCH_DB),
        "REDIS_URL": REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "PYTHONUNBUFFERED": "1",
    }


def setup() -> None:
    """Django in this process, on the bench database."""
    os.environ.update(environment())
    import django

    django.setup()


def fresh_database() -> None:
    from locks import recreate_database

    os.environ.update(environment())
    recreate_database(BENCH_DB)


def operator_login(username: str = "operator") -> tuple[str, str]:
    """A superuser in the operators group (as ``manage.py operator_account`` makes it),
    with a fresh random password: (username, password)."""
    from django.contrib.auth import get_user_model

    from orchestrator.dashboard.groups import groups_ensure
    from orchestrator.dashboard.permissions import OPERATORS_GROUP

    password = secrets.token_urlsafe(12)
    user = get_user_model().objects.create_superuser(username=username, password=password)
    user.groups.add(groups_ensure()[OPERATORS_GROUP])
    return username, password


def fixture_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "agents": args.agents,
        "teams": args.teams,
        "resources": args.resources,
        "locks": args.locks,
        "waits": args.waits,
        "deadlocks": args.deadlocks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--locks", type=int, default=2000)
    parser.add_argument("--waits", type=int, default=500)
    parser.add_argument("--deadlocks", type=int, default=3)
    parser.add_argument(
        "--only-fixture", action="store_true", help="build the board, print a login, and stop"
    )
    args = parser.parse_args()
    fresh_database()
    setup()
    board = build(**fixture_arguments(args))
    print(f"fixture in {BENCH_DB}: {board.counts} built in {board.seconds:.1f} s")
    if args.only_fixture:
        username, password = operator_login()
        print(f"login: username {username}  password {password}")
        print(
            f"serve it: DATABASE_URL={environment()['DATABASE_URL']} REDIS_URL={REDIS_URL} "
            ".venv/bin/daphne -b 127.0.0.1 -p 8000 orchestrator.asgi:application"
        )
        return
    raise SystemExit("the measurements come next: use --only-fixture for now")


if __name__ == "__main__":
    main()
