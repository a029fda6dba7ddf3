"""`python manage.py demo`: keep a demo run going (what `make run` starts)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from agents.scenarios import SCENARIOS, scenario_start
from orchestrator.core.models import Run

DEMO_TEAMS = "demo-"  # scenario teams are named "<scenario>-<random suffix>"


def demo_running() -> bool:
    return Run.objects.filter(status=Run.Status.RUNNING, team__name__startswith=DEMO_TEAMS).exists()


class Command(BaseCommand):
    help = (
        "On an empty database, run the booking, pipeline, deadlock and transfers scenarios "
        "once; then keep one demo run going (agents.scenarios.plan_demo: contention, "
        "deadlocks and approvals left to the operator), starting a new one whenever none "
        "is running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="start what is missing and exit")
        parser.add_argument("--agents", type=int, default=8, help="agents per run (default 8)")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="seconds between checks (default 5)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not Run.objects.exists():
            for name in sorted(set(SCENARIOS) - {"demo"}):
                started = scenario_start(name=name, agents=options["agents"], seed=1)
                self.stdout.write(f"started the {name} scenario: run {started.run.pk}")
        while True:
            if not demo_running():
                started = scenario_start(
                    name="demo", agents=options["agents"], seed=int(time.time()), ask_operator=True
                )
                self.stdout.write(
                    f"started a demo run ({started.run.pk}): open the dashboard to break its "
                    "deadlocks and decide its approvals",
                    self.style.SUCCESS,
                )
            if options["once"]:
                return
            close_old_connections()
            time.sleep(options["interval"])
