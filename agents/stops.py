"""Whether a step may go on: the one answer to "is this step stopped".

A step stops when its run is cancelled, or when its run, its agent, its team or
the whole system is paused. The state comes from wherever it was read last, so
that no question costs a query that was already made: the row that the step's
journal write returned (``sql.journal_step``), the step as its row lock loaded it
(``rowlocks.lock_step_in_context``), or else one query.
"""

from __future__ import annotations

from typing import NamedTuple

from django.db.models import Exists, OuterRef

from orchestrator.core.models import Agent, Step, Switchboard, Team


class StopState(NamedTuple):
    """What decides whether a step may go on: see stop_reason."""

    run_status: str
    run_paused: bool
    agent_paused: bool
    team_paused: bool
    system_paused: bool

    def reason(self) -> str:
        """'' (go on), 'paused' or 'cancelled'."""
        if self.run_status == "cancelled":
            return "cancelled"
        paused = self.run_paused or self.agent_paused or self.team_paused or self.system_paused
        return "paused" if paused else ""


def stop_reason(
    step: Step,
    *,
    journaled: tuple[str, bool, bool, bool, bool] | None = None,
    loaded: bool = False,
) -> str:
    """Why ``step`` must not go on now: '' (go on), 'paused' or 'cancelled'.

    From ``journaled``, the row ``sql.journal_step`` returned with the step's last
    journal write; or, with ``loaded``, from the flags ``lock_step_in_context``
    loaded with the step (in the same transaction); else from one query, now."""
    if journaled is not None:
        return StopState(*journaled).reason()
    if loaded:
        return StopState(
            step.run.status,
            step.run.paused,
            step.agent.paused,
            step.run_team_paused,
            step.system_paused,
        ).reason()
    paused_agent = Agent.objects.filter(pk=OuterRef("agent_id"), paused=True)
    paused_team = Team.objects.filter(pk=OuterRef("run__team_id"), paused=True)
    row = (
        Step.objects.filter(pk=step.pk)
        .annotate(
            agent_paused=Exists(paused_agent),
            team_paused=Exists(paused_team),
            system_paused=Exists(Switchboard.objects.filter(pk=1, paused=True)),
        )
        .values("run__status", "run__paused", "agent_paused", "team_paused", "system_paused")
        .get()
    )
    return StopState(
        row["run__status"],
        row["run__paused"],
        row["agent_paused"],
        row["team_paused"],
        row["system_paused"],
    ).reason()
