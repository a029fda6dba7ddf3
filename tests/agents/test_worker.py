"""The project's RQ workers (agents/worker.py) end a burst, or stop, within a second or
so: RQ's command channel is polled every second, not every 60 s (stopping its thread
joins it, and that join could last the whole 60 s)."""

from __future__ import annotations

import time

import django_rq
import pytest

from agents.worker import SimpleStepWorker, StepWorker

# A liveness bound, far above the ~0.05 s an empty burst takes, far below RQ's 60 s.
BURST_DEADLINE = 15


@pytest.mark.parametrize("worker_class", [SimpleStepWorker, StepWorker])
def test_empty_bursts_end_promptly(worker_class, redis_conn) -> None:
    slowest = 0.0
    for _ in range(12):  # with RQ's 60 s poll, a burst now and then took 60 s
        began = time.monotonic()
        django_rq.get_worker("steps", worker_class=worker_class).work(burst=True)
        slowest = max(slowest, time.monotonic() - began)
    assert slowest < BURST_DEADLINE, slowest


@pytest.mark.parametrize("worker_class", [SimpleStepWorker, StepWorker])
def test_the_command_channel_is_polled_every_second(worker_class, redis_conn) -> None:
    # The stall above is a race (the thread's first wait, before its subscription is
    # confirmed), so the bursts do not always show it; the poll interval does.
    worker = django_rq.get_worker("steps", worker_class=worker_class)
    worker.subscribe()
    try:
        assert worker.pubsub_thread.sleep_time <= 1
    finally:
        began = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - began < BURST_DEADLINE
