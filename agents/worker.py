"""The RQ worker class that runs agent steps (``RQ["WORKER_CLASS"]`` in settings).

RQ's default ``Worker`` forks a work horse per job, and the horse imports what
the job needs. For an agent step that is the runtime, the tools, the backends
and networkx (the wait-for graph): about 120 ms, paid again by every job
because the parent never imported them. This worker imports them once, in the
parent, so every horse starts with them loaded (measured in docs/benchmarks.md).

The horse also gets a database connection of its own: the parent closes its
connections before forking (django-rq does at start; ``execute_job`` does it
again in case the parent touched the database since), so a child never shares
a socket with its parent.
"""

from __future__ import annotations

import importlib
from typing import Any

from django.db import close_old_connections, connections
from rq.worker import SimpleWorker, Worker

# What a step job touches, heaviest first.
PRELOAD = (
    "networkx",
    "openai",
    "agents.runtime",
    "agents.tools_exec",
    "agents.backends.openai_backend",
    "agents.backends.scripted",
    "agents.backends.python_backend",
    "orchestrator.core.deadlocks",
    "orchestrator.core.approvals",
    "orchestrator.core.resources",
    "orchestrator.core.locks",
    "orchestrator.core.queue",
    "channels_redis.core",
)


def preload() -> None:
    """Import the modules a step needs, so that forked horses inherit them."""
    for name in PRELOAD:
        importlib.import_module(name)


class QuickCommandChannel:
    """RQ's command channel (pub/sub: ``rq suspend``, stop-job...) polled every second.

    RQ listens with redis-py's ``run_in_thread(sleep_time=60)``, and stopping the
    thread joins it: when the thread is still in its first wait (not yet subscribed),
    that join lasts the full 60 s. Every burst ended that way now and then (measured:
    2 of 8 empty bursts took 60.0 s, the others 0.03 s), and so did a worker's warm
    shutdown. Polling every second bounds that wait to a second, for one cheap
    wake-up a second per worker.
    """

    COMMAND_POLL_SECONDS = 1.0

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=self.COMMAND_POLL_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )


class StepWorker(QuickCommandChannel, Worker):
    """The forking worker, with the step runtime imported before the first fork."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        preload()

    def execute_job(self, *args: Any, **kwargs: Any) -> None:
        for connection in connections.all(initialized_only=True):
            connection.close()  # never share a socket with the horse
        super().execute_job(*args, **kwargs)

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        """In the horse: run the job, then let its event pushes reach the channel
        layer, since the horse exits as soon as the job is done."""
        from orchestrator.core.events import publish_flush

        try:
            return super().perform_job(*args, **kwargs)
        finally:
            publish_flush(timeout=2)


class SimpleStepWorker(QuickCommandChannel, SimpleWorker):
    """Runs jobs in the worker process itself, keeping its database connection
    (and its prepared statements) from job to job; a connection that went bad is
    dropped between jobs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        preload()

    def execute_job(self, *args: Any, **kwargs: Any) -> None:
        close_old_connections()
        try:
            super().execute_job(*args, **kwargs)
        finally:
            close_old_connections()
