"""While a step runs: its heartbeat, and its agent's leases kept from running out."""

from __future__ import annotations

import logging
import threading

from django.utils import timezone

from orchestrator.core.errors import ProtocolError
from orchestrator.core.locks import lock_renew
from orchestrator.core.models import Agent, Lock, Step

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0


class Heartbeat:
    """While a step runs: mark it alive and keep its agent's leases from running out.

    A thread wakes every ``HEARTBEAT_SECONDS``; the monitor treats a running
    step whose heartbeat is older than ``agents.recovery.STALE_AFTER`` as lost
    (its worker died) and retries it.
    """

    def __init__(self, step_id: int, agent: Agent, *, renew_now: bool = True) -> None:
        self.step_id, self.agent, self.renew_now = step_id, agent, renew_now
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{step_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        # step_begin stamped the first heartbeat when it claimed the step.
        if self.renew_now:  # the agent holds locks from its earlier steps
            renew_leases(self.agent)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(HEARTBEAT_SECONDS * 2)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                Step.objects.filter(pk=self.step_id).update(heartbeat_at=timezone.now())
                renew_leases(self.agent)
        except Exception:  # the step itself decides its fate; the monitor covers the rest
            logger.exception("heartbeat of step %s failed", self.step_id)
        finally:
            connection.close()


def renew_leases(agent: Agent) -> None:
    """Extend the agent's live leases to its team's TTL at the start of a step."""
    for lock_id in Lock.objects.filter(agent=agent, released_at__isnull=True).values_list(
        "pk", flat=True
    ):
        try:
            lock_renew(lock_id=lock_id, agent=agent)
        except ProtocolError:
            logger.info("lease %s of %s could not be renewed", lock_id, agent.name)
