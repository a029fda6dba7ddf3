"""Incidents: what an operator who is not watching must be told, once each.

An observer of every service transaction (``events.observe``) turns the few event
kinds worth a notification into Incident rows, in the transaction that emits them:

* ``approval.requested``: an approval waits (not when a standing rule decided it in
  the same transaction);
* ``approval.escalated``: its deadline passed and it goes to the second group;
* ``deadlock.detected`` under the ``ask_operator`` policy: a deadlock waits for an
  operator to choose the victim;
* ``conflict.opened`` of kind ``stale_fence``: a write with a stale fencing token was
  refused (its repeats, ``conflict.repeated``, count on the same conflict);
* ``run.failed``;
* ``agent.paused`` by "policy" (control.agent_pause_by_policy).

An incident is keyed (``approval:12``, ``conflict:7``, ``run:3``): the insert does
nothing when the key exists (``ON CONFLICT DO NOTHING``, sql.insert_incident), so
concurrent detectors and repeated sweeps give one incident, and so one notification.
Once the transaction commits, a job (deliveries.notify_incident, on the ``default``
queue) tells the team's webhooks and e-mails its operators (core/deliveries.py).

Every other event costs one frozenset lookup: the lock path emits events all the time.
A bug here must not fail the service that emitted the events: building an incident
is guarded, and the insert cannot conflict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import django_rq
from django.db import transaction
from django.utils import timezone

from orchestrator.core import sql
from orchestrator.core.events import observe
from orchestrator.core.models import DeadlockPolicy, Event, IncidentKind

logger = logging.getLogger(__name__)

QUEUE = "default"
NOTIFY = "orchestrator.core.deliveries.notify_incident"  # RQ job: fan out one incident

NOTIFIED = frozenset(
    {
        "approval.requested",
        "approval.escalated",
        "deadlock.detected",
        "conflict.opened",
        "run.failed",
        "agent.paused",
    }
)
_DECIDED = frozenset({"approval.approved", "approval.rejected", "approval.failed"})


@dataclass
class NewIncident:
    """An incident as the observer builds it from one event (no query)."""

    team_id: int
    kind: str
    key: str
    event_kind: str
    subject_type: str
    subject_id: int | None
    title: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _agent_name(event: Event) -> str:
    return event.agent.name if event.agent is not None else ""


def incident_for(event: Event, decided: frozenset[int] = frozenset()) -> NewIncident | None:
    """The incident ``event`` opens, or None if it is not one to notify. ``decided``:
    the approvals decided in the same transaction (by a standing rule), which wait for
    nobody."""
    if event.team_id is None:
        return None
    payload = event.payload
    agent = _agent_name(event)
    common = {
        "team_id": event.team_id,
        "event_kind": event.kind,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
    }
    if event.kind == "approval.requested":
        approval = payload["approval"]
        if approval in decided:
            return None
        return NewIncident(
            kind=IncidentKind.APPROVAL_WAITING,
            key=f"approval:{approval}",
            title=f"Approval #{approval} waits: {agent or 'an agent'} wrote {payload['resource']}",
            detail=f"Reason: {payload['reason'].replace('_', ' ')}; based on version "
            f"{payload['base_version']}, current version {payload['current_version']}.",
            data={"approval": approval, "resource": payload["resource"], "agent": agent},
            **common,
        )
    if event.kind == "approval.escalated":
        approval = payload["approval"]
        return NewIncident(
            kind=IncidentKind.APPROVAL_ESCALATED,
            key=f"approval:{approval}",
            title=f"Escalated to {payload['group']}: approval #{approval} on "
            f"{payload['resource']} was not decided in time",
            detail=f"{payload['agent']}'s write to {payload['resource']} waits for a "
            f"decision; the new deadline is {payload['deadline_at']}.",
            data={
                "approval": approval,
                "resource": payload["resource"],
                "agent": payload["agent"],
                "group": payload["group"],
                "group_id": payload["group_id"],
                "deadline_at": payload["deadline_at"],
            },
            **common,
        )
    if event.kind == "deadlock.detected":
        if payload["policy"] != DeadlockPolicy.ASK_OPERATOR:
            return None  # broken automatically
        conflict = payload["conflict"]
        return NewIncident(
            kind=IncidentKind.DEADLOCK,
            key=f"conflict:{conflict}",
            title=f"Deadlock #{conflict}: {', '.join(payload['agents'])} wait for each other; "
            "choose a victim",
            detail=payload["detail"],
            data={
                "conflict": conflict,
                "agents": payload["agents"],
                "resources": payload["resources"],
            },
            **common,
        )
    if event.kind == "conflict.opened":
        if payload["kind"] != "stale_fence":
            return None
        return NewIncident(
            kind=IncidentKind.STALE_FENCE,
            key=f"conflict:{event.subject_id}",
            title=f"Stale-fence write refused: {agent or 'an agent'} on {payload['resource']}",
            detail=payload["detail"],
            data={
                "conflict": event.subject_id,
                "resource": payload["resource"],
                "agent": agent,
                "agent_id": event.agent_id,
            },
            **common,
        )
    if event.kind == "run.failed":
        run = payload["run"]
        return NewIncident(
            kind=IncidentKind.RUN_FAILED,
            key=f"run:{run}",
            title=f"Run #{run} failed",
            detail="",
            data={"run": run},
            **common,
        )
    if event.kind == "agent.paused":
        if event.actor != "policy" or event.agent is None:
            return None  # an operator's pause is no news to operators
        # One incident per pause: the pause happens once, under the agent's row lock.
        return NewIncident(
            kind=IncidentKind.AGENT_PAUSED,
            key=f"agent:{event.agent.pk}:{timezone.now().isoformat()}",
            title=f"Agent {agent} paused by policy",
            detail=payload.get("reason", ""),
            data={"agent": agent, "agent_id": event.agent.pk},
            **common,
        )
    return None


def _enqueue_notify(incident_id: int) -> None:
    django_rq.get_queue(QUEUE).enqueue(
        NOTIFY, incident_id, job_id=f"notify-{incident_id}", job_timeout=60
    )


@observe
def incidents_from_events(events: list[Event]) -> None:
    """The observer (see the module docstring): open the incidents of a transaction's
    events, and enqueue their notification once it commits."""
    if not any(event.kind in NOTIFIED for event in events):
        return
    decided = frozenset(event.payload.get("approval") for event in events if event.kind in _DECIDED)
    for event in events:
        if event.kind not in NOTIFIED:
            continue
        try:
            incident = incident_for(event, decided)
        except Exception:  # a notification lost is better than a service failed
            logger.exception("could not build the incident of a %s event", event.kind)
            continue
        if incident is None:
            continue
        incident_id = sql.insert_incident(incident)
        if incident_id is not None:
            # robust: Redis being down must not fail a request after its commit.
            transaction.on_commit(lambda pk=incident_id: _enqueue_notify(pk), robust=True)
