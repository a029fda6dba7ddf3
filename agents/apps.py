from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

from agents import tracing


class AgentsConfig(AppConfig):
    """The agents' runtime: steps on RQ workers, backends, scenarios, recovery, and
    the commands that drive them (scenario, demo, check_run, monitor)."""

    name = "agents"
    verbose_name = "Agents runtime"

    def ready(self) -> None:
        # The runtime registers its wake-up handler (continuations after a lock grant,
        # an approval or a resume) in every process that can cause a wake-up.
        import agents.runtime  # noqa: F401

        # Spans of steps, model calls and tool calls, chosen once (off: nothing imported).
        tracing.configure(settings.ORCHESTRATOR_OTEL)
