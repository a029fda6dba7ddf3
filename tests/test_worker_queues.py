"""The workers that `make run` and the Procfile start take notification jobs before
agent steps: with the queues in the other order, a steady stream of steps (busy agents
never leave the steps queue empty) kept every notification waiting (seen in the demo:
six incidents queued, none delivered, while the demo run went on)."""

from __future__ import annotations

import shlex
from pathlib import Path

import django_rq
import pytest

from orchestrator import launch
from tests.workers import SimpleWorker

ROOT = Path(__file__).resolve().parent.parent
ORDER_KEY = "test:worker-queue-order"


def record(name: str) -> None:
    """A job that notes that it ran (RQ job, by dotted path)."""
    django_rq.get_connection("default").rpush(ORDER_KEY, name)


def queues_of(command: str) -> list[str]:
    words = shlex.split(command)
    after = words[words.index("rqworker") + 1 :]
    return [word for word in after if not word.startswith("-")][: len(after)]


def worker_commands() -> list[str]:
    procfile = (ROOT / "Procfile").read_text().splitlines()
    worker_line = next(line for line in procfile if line.startswith("worker:"))
    launched = launch.processes(8000, 1, demo=False)["worker.1"]
    return [worker_line.split(":", 1)[1], launched]


@pytest.mark.parametrize("command", worker_commands())
def test_a_notification_queued_behind_steps_runs_first(command: str, redis_conn) -> None:
    queues = [q for q in queues_of(command) if q in ("default", "steps")]
    assert set(queues) == {"default", "steps"}, command
    steps = django_rq.get_queue("steps")
    for n in range(3):
        steps.enqueue("tests.test_worker_queues.record", f"step-{n}")
    django_rq.get_queue("default").enqueue("tests.test_worker_queues.record", "notification")

    worker = SimpleWorker([django_rq.get_queue(name) for name in queues], connection=redis_conn)
    worker.work(burst=True)

    ran = [item.decode() for item in redis_conn.lrange(ORDER_KEY, 0, -1)]
    assert ran[0] == "notification", (command, ran)
    assert sorted(ran) == ["notification", "step-0", "step-1", "step-2"]
