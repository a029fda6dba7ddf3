"""`python manage.py check_run RUN_ID`: the run's invariants (agents.checker)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.checker import check_run
from orchestrator.core.models import Run


class Command(BaseCommand):
    help = (
        "Report a run's double bookings, lost updates, writes by non-holders, "
        "overlapping exclusive holds (and, in a run of coding agents, lost edits and stale "
        "overwrites) and unfinished agents. The verdict (the last line; "
        '"ok" in --json) is OK only if the run finished, every agent finished and no '
        "anomaly was found; otherwise FAILED, with the reasons."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="print one JSON object"
        )

    def handle(self, *args: Any, run_id: int, as_json: bool, **options: Any) -> None:
        try:
            report = check_run(run_id=run_id)
        except Run.DoesNotExist:
            raise CommandError(f"no run with id {run_id}") from None
        if as_json:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        mode = "unguarded" if report.unguarded else "guarded"
        self.stdout.write(
            f"run {report.run} ({mode}): {report.status}; {len(report.agents)} agents, "
            f"{report.steps} steps, {report.writes} writes"
            + (f", {report.edits} file edits" if report.edits else "")
        )
        counts = report.counts()
        width = max(len(kind) for kind in report.kinds)
        self.stdout.write(f"{'anomaly':<{width}}  count")
        for kind in report.kinds:
            self.stdout.write(f"{kind:<{width}}  {counts[kind]}")
        unfinished = ", ".join(report.unfinished_agents) or "none"
        self.stdout.write(f"{'unfinished agents':<{width}}  {unfinished}")
        for anomaly in report.anomalies:
            self.stdout.write(f"  {anomaly.kind}: {anomaly.resource}: {anomaly.detail}")
        # The last line is the verdict: OK, or FAILED with the reasons.
        self.stdout.write("OK" if report.ok else f"FAILED: {'; '.join(report.failures)}")
