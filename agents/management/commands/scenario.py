"""`python manage.py scenario NAME`: start a scenario from the field (agents.scenarios),
or run the coding scenario (agents.coding) to its end."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.checker import FILE_KINDS, check_run
from agents.coding import CODING, EDITS_PER_AGENT, CodingError, coding_run, local_server
from agents.scenarios import SCENARIOS, scenario_start
from orchestrator.core.models import Agent, AgentStatus, Run, Step
from orchestrator.processes import HelperError

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Create a fresh team of scripted agents and its resources for a scenario "
        "(booking, pipeline, deadlock, transfers) and start a run; or run the coding "
        "scenario, where coding agents edit a temporary git repository through "
        "orchestrator-guard, to its end. The last line is the run's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=sorted([*SCENARIOS, CODING]))
        parser.add_argument(
            "--agents", type=int, default=None, help="how many agents (default 8; coding: 3)"
        )
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
        coding = parser.add_argument_group("coding")
        coding.add_argument(
            "--edits",
            type=int,
            default=EDITS_PER_AGENT,
            help=f"edits per agent (default {EDITS_PER_AGENT})",
        )
        coding.add_argument(
            "--url",
            help="the server the guard talks to, on this command's database (default: a "
            "daphne started for the run on a free loopback port)",
        )
        coding.add_argument(
            "--repo", type=Path, help="make the repository there and keep it (a new folder)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["name"] == CODING:
            self.coding(options)
            return
        try:
            started = scenario_start(
                name=options["name"],
                agents=8 if options["agents"] is None else options["agents"],
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

    def coding(self, options: dict[str, Any]) -> None:
        """Run the coding scenario to its end, then say what check_run finds."""
        unguarded = options["unguarded"]
        with ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coding-")))
            root = options["repo"] or work / "repo"
            try:
                url = options["url"]
                if not unguarded and not url:
                    url = stack.enter_context(local_server(work / "daphne.log"))
                    self.stdout.write(f"server: {url} (daphne, started for this run)")
                result = coding_run(
                    root=root,
                    url=url,
                    agents=3 if options["agents"] is None else options["agents"],
                    edits=options["edits"],
                    seed=options["seed"],
                    unguarded=unguarded,
                    state_dir=work / "guard-state",
                    say=self.stdout.write,
                )
            except (CodingError, HelperError, ValueError) as exc:
                raise CommandError(str(exc)) from None
        refused = ", ".join(f"{count} as {kind}" for kind, count in sorted(result.refusals.items()))
        self.stdout.write(
            f"{result.made} edits made in {result.rounds} rounds"
            + (f"; the guard refused {refused}" if refused else "")
        )
        self.stdout.write(f"the final files hold {result.present} of the {result.planned} edits")
        if result.records:
            records = ", ".join(
                f"{path} at version {version}"
                + (" (the file's hash)" if same else " (NOT the file's hash)")
                for path, (version, same) in result.records.items()
            )
            self.stdout.write(f"the server's record: {records}")
        if options["repo"] is not None:
            self.stdout.write(f"the repository is kept at {result.root}")
        report = check_run(run_id=result.run.pk)
        counts = report.counts()
        found = ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in FILE_KINDS)
        verdict = "OK" if report.ok else f"FAILED: {'; '.join(report.failures)}"
        self.stdout.write(f"check_run: {found}: {verdict}")
        self.stdout.write(f"check it with: python manage.py check_run {result.run.pk}")
        self.stdout.write(str(result.run.pk))

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
