"""`python manage.py monitor`: the periodic sweep (leases, waiters, deadlocks)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from agents.recovery import STALE_AFTER, recover_steps
from orchestrator.core.monitor import monitor_sweep

RECOVERY_INTERVAL = 5.0  # seconds between passes over lost steps and jobs


class Command(BaseCommand):
    help = "Expire leases, grant waiters and detect deadlocks every --interval seconds."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=0.5, help="seconds between sweeps")
        parser.add_argument("--once", action="store_true", help="run one sweep and exit")
        parser.add_argument(
            "--stale-after",
            type=float,
            default=STALE_AFTER,
            help="seconds without a heartbeat before a running step counts as lost and is retried",
        )

    def handle(
        self, *args: Any, interval: float, once: bool, stale_after: float, **options: Any
    ) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"monitor: sweeping every {interval}s")
        last_recovery = 0.0
        while not stop.is_set():
            close_old_connections()
            try:
                report = monitor_sweep()
            except Exception as exc:  # keep sweeping: the database may come back
                self.stderr.write(f"monitor: sweep failed: {exc!r}")
            else:
                if report:
                    self.stdout.write(
                        f"monitor: expired={report.expired} granted={report.granted} "
                        f"deadlocks={report.deadlocks} dissolved={report.dissolved}"
                    )
            if once or time.monotonic() - last_recovery >= RECOVERY_INTERVAL:
                last_recovery = time.monotonic()
                try:
                    recovered = recover_steps(stale_after=stale_after)
                except Exception as exc:
                    self.stderr.write(f"monitor: step recovery failed: {exc!r}")
                else:
                    if recovered:
                        self.stdout.write(f"monitor: {recovered}")
            if once:
                break
            stop.wait(interval)
        self.stdout.write("monitor: stopped")
