"""`python manage.py scenario NAME`: start a scenario from the field (agents.scenarios)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.scenarios import SCENARIOS, scenario_start
from orchestrator.core.models import Agent, AgentStatus, Run, Step

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Create a fresh team of scripted agents and its resources for a scenario "
        "(booking, pipeline, deadlock, transfers) and start a run. The last line is the "
        "run's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=sorted(SCENARIOS))
        parser.add_argument("--agents", type=int, default=8, help="how many agents (default 8)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the agents' choices")
        parser.add_argument(
            "--unguarded", action="store_true", help="bypass the protocol to show what fails"
        )
        parser.add_argument(
            "--ask-operator",
            action="store_true",
            help="conflicts and deadlocks wait for an operator instead of the automatic policies",
        )
        parser.add_argument(
            "--follow", action="store_true", help="show progress until the run ends (Ctrl-C stops)"
        )
        parser.add_argument(
            "--interval", type=float, default=0.5, help="seconds between polls with --follow"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            started = scenario_start(
                name=options["name"],
                agents=options["agents"],
                seed=options["seed"],
                unguarded=options["unguarded"],
                ask_operator=options["ask_operator"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        run = started.run
        mode = "unguarded" if run.unguarded else "guarded"
        self.stdout.write(
            f"{options['name']} ({mode}): team {started.team.name}, "
            f"{len(started.agents)} agents, resources {', '.join(started.resources)}"
        )
        self.stdout.write(f"check it with: python manage.py check_run {run.pk}")
        if options["follow"]:
            self.follow(run.pk, len(started.agents), options["interval"])
        self.stdout.write(str(run.pk))

    def follow(self, run_id: int, agents: int, interval: float) -> None:
        """Poll the run until it ends; Ctrl-C stops following, not the run."""
        try:
            while True:
                run = Run.objects.only("status").get(pk=run_id)
                done = Step.objects.filter(run_id=run_id, status=Step.Status.DONE).count()
                ended = (
                    Agent.objects.filter(
                        steps__run_id=run_id, status__in=[AgentStatus.DONE, AgentStatus.FAILED]
                    )
                    .distinct()
                    .count()
                )
                filled = BAR_WIDTH * ended // max(agents, 1)
                bar = "#" * filled + "-" * (BAR_WIDTH - filled)
                self.stderr.write(
                    f"\r[{bar}] {done} steps done, {ended}/{agents} agents finished, {run.status}",
                    ending="",
                )
                self.stderr.flush()
                if run.status != Run.Status.RUNNING:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            self.stderr.write("\nstopped following; the run goes on")
            return
        self.stderr.write("")
