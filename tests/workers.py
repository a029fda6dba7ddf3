"""RQ's SimpleWorker for the tests' in-process bursts, with the project's command
channel polled every second (agents/worker.py QuickCommandChannel): with RQ's 60 s
poll, a burst now and then took a minute to end."""

from __future__ import annotations

from rq import SimpleWorker as RQSimpleWorker

from agents.worker import QuickCommandChannel


class SimpleWorker(QuickCommandChannel, RQSimpleWorker):
    """Jobs in this process, as RQ runs them; a burst ends as soon as the queue is empty."""
