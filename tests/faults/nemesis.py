"""The nemesis: faults on a seeded schedule, one at a time.

* ``kill_worker``: SIGKILL a worker (whatever it is doing, usually a step), restart
  it after a pause. Its step is retried by the monitor once its heartbeat is stale.
* ``zombie``: SIGSTOP the worker of a zombie agent while that agent holds a
  counter's lock (between its acquire and its write: it is thinking before its
  read or its write), keep it stopped until the lease ran out and another agent
  took the lock and wrote, then SIGCONT it. Its write carries the old fencing token
  and must be rejected as a stale fence.
* ``restart_redis``: SIGKILL the private Redis and start it again, empty: queued
  jobs are lost and the monitor re-enqueues their steps.
* ``kill_monitor``: SIGKILL the monitor and restart it after a pause.

Where a fault strikes is seeded: each fault has a point in the run (a fraction of
the planned operations done), a worker slot, a pause. What the processes happen to
be doing at that moment is up to the machine; the checks hold whatever it was.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from tests.faults.cluster import Cluster, wait_for

KINDS = ("kill_worker", "zombie", "restart_redis", "kill_monitor")
# A zombie's stop, plus the age of its step's last heartbeat, must stay below the
# monitor's stale-after (12 s), or the monitor would retry the stopped step.
ZOMBIE_TAKEOVER_TIMEOUT = 8.0
ZOMBIE_SEARCH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Fault:
    at: float  # the fraction of the planned operations done when it strikes
    kind: str
    slot: int = -1  # worker slot, for kill_worker
    pause: float = 0.0  # seconds the victim stays down


def schedule(seed: int, *, workers: int, kills: int, zombies: int) -> list[Fault]:
    """The seeded fault schedule: ``kills`` worker kills, ``zombies`` zombie writers,
    one Redis restart and one monitor kill, in the order they strike."""
    rng = random.Random(f"nemesis-{seed}")  # a simulation, seeded
    faults = [
        Fault(rng.uniform(0.05, 0.85), "kill_worker", rng.randrange(workers), rng.uniform(0.2, 1.5))
        for _ in range(kills)
    ]
    # Zombies early, while the zombie agents still have increments to do.
    faults += [Fault(rng.uniform(0.05, 0.4), "zombie") for _ in range(zombies)]
    faults.append(Fault(rng.uniform(0.3, 0.7), "restart_redis", pause=rng.uniform(0.5, 2.0)))
    faults.append(Fault(rng.uniform(0.2, 0.8), "kill_monitor", pause=rng.uniform(2.0, 5.0)))
    return sorted(faults, key=lambda fault: fault.at)


@dataclass
class Incident:
    """A zombie writer: who was stopped holding which lock, and for how long."""

    agent_id: int
    resource_id: int
    lock_id: int
    token: int
    step_id: int
    worker: str
    stopped_for: float


@dataclass
class Kill:
    """A worker killed mid-step: the step and the live locks its agent held then."""

    worker: str
    step_id: int | None
    locks: list[int]


@dataclass
class Log:
    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    incidents: list[Incident] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    aborted_zombies: int = 0
    lines: list[str] = field(default_factory=list)


class Nemesis:
    def __init__(self, cluster: Cluster, *, zombie_agents: list[int], started: float) -> None:
        self.cluster = cluster
        self.zombie_agents = zombie_agents
        self.started = started
        self.log = Log()

    def note(self, text: str) -> None:
        self.log.lines.append(f"{time.monotonic() - self.started:7.1f}s  {text}")

    def strike(self, fault: Fault) -> None:
        """Inject one fault; it is counted once it happened (a zombie may find no
        candidate: the checks then report that no zombie incident happened)."""
        if getattr(self, fault.kind)(fault) is not False:
            self.log.injected[fault.kind] += 1

    # --- the faults ---------------------------------------------------------------

    def kill_worker(self, fault: Fault) -> None:
        name = self.cluster.names[fault.slot]
        step_id, locks = self._current_step(name)
        self.cluster.kill_worker(fault.slot)
        self.log.kills.append(Kill(name, step_id, locks))
        self.note(f"SIGKILL worker {name} (step {step_id}, holding locks {locks})")
        time.sleep(fault.pause)  # the nemesis's own pace, not a synchronisation
        self.cluster.start_worker(fault.slot)

    def restart_redis(self, fault: Fault) -> None:
        self.cluster.redis.kill()
        self.note("SIGKILL redis-server (its data is lost)")
        time.sleep(fault.pause)
        self.cluster.redis.start()
        self.note("redis-server started again, empty")

    def kill_monitor(self, fault: Fault) -> None:
        self.cluster.kill_monitor()
        self.note("SIGKILL monitor")
        deadline = time.monotonic() + fault.pause
        while time.monotonic() < deadline:
            self.cluster.supervise(monitor_down=True)
            time.sleep(0.1)
        self.cluster.start_monitor()
        self.note("monitor started again")

    def zombie(self, fault: Fault) -> bool:
        """Stop a zombie agent's worker between its acquire and its write, until
        another agent has taken the lock and written; then let it go on. False if no
        zombie agent could be caught holding a lock."""
        from orchestrator.core.models import Step

        deadline = time.monotonic() + ZOMBIE_SEARCH_TIMEOUT
        while time.monotonic() < deadline:
            self.cluster.supervise()
            if not Step.objects.filter(
                agent_id__in=self.zombie_agents, status__in=["queued", "running", "waiting"]
            ).exists():
                break  # the zombie agents are done
            candidate = self._zombie_candidate()
            if candidate is None:
                time.sleep(0.005)
                continue
            lock, step, slot = candidate
            process = self.cluster.workers[slot]
            name = self.cluster.names[slot]
            os.kill(process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            if not self._stopped_holding(lock, step, name):
                os.kill(process.pid, signal.SIGCONT)  # it moved on first; try again
                continue
            self.note(f"SIGSTOP worker {name}: zombie agent {lock['agent_id']} holds lock "
                      f"#{lock['pk']} (fence {lock['token']}) in step {step['pk']}")  # fmt: skip
            try:
                wait_for(
                    lambda held=lock: self._taken_over(held),
                    "another agent to take the zombie's lock and write",
                    timeout=ZOMBIE_TAKEOVER_TIMEOUT,
                )
            except TimeoutError:
                os.kill(process.pid, signal.SIGCONT)
                self.log.aborted_zombies += 1
                self.note(f"SIGCONT worker {name}: nobody took the lock in time, try again")
                continue
            os.kill(process.pid, signal.SIGCONT)
            held = time.monotonic() - stopped
            self.note(f"SIGCONT worker {name} after {held:.1f}s: its lease ran out, "
                      "another agent took the lock and wrote")  # fmt: skip
            self.log.incidents.append(
                Incident(lock["agent_id"], lock["resource_id"], lock["pk"], lock["token"],
                         step["pk"], name, held)
            )  # fmt: skip
            return True
        self.note("zombie: no zombie agent could be caught holding a lock")
        return False

    # --- looking at the system ----------------------------------------------------

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.cluster.redis.url, socket_connect_timeout=2)

    def _job_worker(self, job_id: str) -> str:
        """The name of the RQ worker running the job ``job_id`` ('' if unknown)."""
        import redis
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            return Job.fetch(job_id, connection=self._redis()).worker_name or ""
        except (NoSuchJobError, redis.RedisError):
            return ""

    def _current_step(self, worker: str) -> tuple[int | None, list[int]]:
        """The step the worker runs now (if any) and its agent's live locks."""
        import redis
        from rq.worker import Worker

        from orchestrator.core.models import Lock, Step

        try:
            found = Worker.find_by_key(f"rq:worker:{worker}", connection=self._redis())
            job_id = found.get_current_job_id() if found is not None else None
        except redis.RedisError:
            job_id = None
        step = Step.objects.filter(job_id=job_id).values("pk", "agent_id").first()
        if not job_id or step is None:
            return None, []
        locks = Lock.objects.filter(agent_id=step["agent_id"], released_at__isnull=True)
        return step["pk"], list(locks.values_list("pk", flat=True))

    def _zombie_candidate(self) -> tuple[dict, dict, int] | None:
        """A zombie agent's live exclusive lock under which it has not written yet,
        with the agent's running step still deciding (thinking), and its worker."""
        from django.db.models import Exists, OuterRef

        from orchestrator.core.models import Lock, ResourceVersion, Step

        written = ResourceVersion.objects.filter(
            resource_id=OuterRef("resource_id"), fence=OuterRef("token")
        )
        locks = (
            Lock.objects.filter(
                agent_id__in=self.zombie_agents, released_at__isnull=True, mode="exclusive"
            )
            .exclude(Exists(written))
            .values("pk", "token", "resource_id", "agent_id")
        )
        for lock in locks:
            step = (
                Step.objects.filter(agent_id=lock["agent_id"], status="running")
                .filter(decision__isnull=True)
                .values("pk", "job_id")
                .first()
            )
            if step is None:
                continue
            slot = self.cluster.slot_of(self._job_worker(step["job_id"]))
            if slot is not None:
                return lock, step, slot
        return None

    def _stopped_holding(self, lock: dict, step: dict, worker: str) -> bool:
        """After SIGSTOP: the worker is still in that step, the lock is still live and
        unused, and none of the worker's connections is inside a transaction (it would
        keep row locks that the other agents need)."""
        from django.db import connection

        from orchestrator.core.models import Lock, ResourceVersion, Step

        def states() -> list[str]:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT state FROM pg_stat_activity WHERE application_name = %s", [worker]
                )
                return [state for (state,) in cursor.fetchall()]

        try:  # a statement sent just before the stop completes on the server
            wait_for(lambda: "active" not in states(), "the stopped worker's statements", timeout=2)
        except TimeoutError:
            return False
        return (
            "idle in transaction" not in states()
            and Lock.objects.filter(pk=lock["pk"], released_at__isnull=True).exists()
            and not ResourceVersion.objects.filter(
                resource_id=lock["resource_id"], fence=lock["token"]
            ).exists()
            and Step.objects.filter(pk=step["pk"], status="running").exists()
        )

    def _taken_over(self, lock: dict) -> bool:
        """The zombie's lock ended and another agent wrote under a newer fence."""
        from orchestrator.core.models import Lock, ResourceVersion

        return (
            Lock.objects.filter(pk=lock["pk"], released_at__isnull=False).exists()
            and ResourceVersion.objects.filter(
                resource_id=lock["resource_id"], fence__gt=lock["token"]
            )
            .exclude(agent_id=lock["agent_id"])
            .exists()
        )
