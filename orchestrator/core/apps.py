from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "orchestrator.core"
    label = "core"
    verbose_name = "Orchestrator"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The wait-for graph's module imports networkx, about 0.3 s of CPU: paid at
        # start, not by the first request that queues in each process (measured in
        # bench/locks.py, where it was a tenth of a 3-second measurement).
        import orchestrator.core.deadlocks
        import orchestrator.core.lock_sets  # lock sets go on after commit
        import orchestrator.core.notifications  # noqa: F401  (its observer opens incidents)
        from orchestrator.core import metrics, wakeups

        # Agents of the HTTP API long-poll their lock requests (wakeups.wait_for_wake).
        wakeups.register(wakeups.notify_http_waiters)
        # Prometheus counters of what each service transaction committed (core/metrics.py).
        metrics.install()
