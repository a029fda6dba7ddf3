"""Telling people about incidents: signed webhooks and e-mail, as RQ jobs, retried.

:func:`notify_incident` (enqueued by core/notifications.py once the incident's
transaction commits) fans one incident out: a :func:`deliver_webhook` job per
active webhook of the team that wants it (its audience and kinds), and a
:func:`deliver_email` job for the team's operators, or, for an escalation, the
users of the second group. Jobs carry ids and re-read the rows.

Each attempt is one Delivery row (append-only): its outcome, the HTTP status code
and the start of the response, or the error. A connection error, a timeout, a 5xx
or a 429 is retried after :data:`RETRY_DELAYS` (a new job for the next attempt,
scheduled with ``enqueue_in``: the workers run RQ's scheduler,
``rqworker --with-scheduler``); another 4xx, or a redirect, is not: the receiver
said no, or points elsewhere, and redirects are never followed. An approval or a
deadlock that was decided meanwhile is not notified any more (outcome skipped).

Webhooks are delivered at least once: a receiver tells repeats apart by the
incident's ``id`` in the body. The body and its signature: docs/notifications.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import smtplib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import django_rq
import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.urls import reverse
from django.utils import timezone

from orchestrator.core.events import service
from orchestrator.core.models import (
    Approval,
    ApprovalStatus,
    Audience,
    Conflict,
    ConflictStatus,
    Delivery,
    DeliveryChannel,
    DeliveryOutcome,
    Incident,
    IncidentKind,
    Webhook,
)

logger = logging.getLogger(__name__)

QUEUE = "default"
DELIVER_WEBHOOK = "orchestrator.core.deliveries.deliver_webhook"  # RQ job
DELIVER_EMAIL = "orchestrator.core.deliveries.deliver_email"  # RQ job
# Seconds before attempt 2, 3, ...: six attempts over about 37 minutes.
RETRY_DELAYS = (2, 10, 60, 300, 1800)
# A receiver that does not answer within this is retried later (connect, read, write).
TIMEOUT = httpx.Timeout(5.0)
SIGNATURE_HEADER = "Orchestrator-Signature"
EXCERPT = 500  # characters of a response kept in its Delivery row
# The group whose members are a team's operators when the team names none
# (dashboard/permissions.py OPERATORS_GROUP, created by migration 0002).
OPERATORS_GROUP = "operators"
USER_AGENT = "Orchestrator-Webhooks/1"


def new_secret() -> str:
    """A new signing secret for a webhook (256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "{t}.{body}" keyed with the webhook's secret>`` (docs/examples/verify_webhook.py
    checks it)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def incident_link(incident: Incident) -> str:
    """The absolute URL of the dashboard page where the incident is decided."""
    data = incident.data
    if incident.kind in (IncidentKind.APPROVAL_WAITING, IncidentKind.APPROVAL_ESCALATED):
        path = reverse("dashboard:approvals") + f"#approval-{data['approval']}"
    elif incident.kind == IncidentKind.DEADLOCK:
        path = reverse("dashboard:graph")
    elif incident.kind == IncidentKind.STALE_FENCE:
        path = reverse("dashboard:conflicts") + "?kind=stale_fence"
        if data.get("agent_id"):
            path += f"&agent={data['agent_id']}"
    elif incident.kind == IncidentKind.RUN_FAILED:
        path = reverse("dashboard:run", args=[data["run"]])
    else:
        path = reverse("dashboard:overview") + "#agents-table"
    return settings.ORCHESTRATOR_BASE_URL + path


def incident_message(incident: Incident, *, audience: str, attempt: int) -> dict[str, Any]:
    """The JSON body of a webhook (docs/notifications.md): no secret, ids and names."""
    return {
        "id": incident.pk,
        "kind": incident.kind,
        "audience": audience,
        "team": {"id": incident.team_id, "name": incident.team.name},
        "title": incident.title,
        "detail": incident.detail,
        "link": incident_link(incident),
        "subject": {"type": incident.subject_type, "id": incident.subject_id},
        "data": incident.data,
        "event": incident.event_kind,
        "occurred_at": incident.created_at.isoformat(),
        "attempt": attempt,
    }


def no_longer_waiting(incident: Incident) -> str:
    """Why the incident needs nobody any more ("" while it still does): its approval
    was decided, its deadlock broken or dissolved."""
    data = incident.data
    if incident.kind in (IncidentKind.APPROVAL_WAITING, IncidentKind.APPROVAL_ESCALATED):
        status = Approval.objects.filter(pk=data["approval"]).values_list("status", flat=True)
        status = status.first()
        if status != ApprovalStatus.PENDING:
            return f"approval #{data['approval']} is {status or 'gone'}"
    elif incident.kind == IncidentKind.DEADLOCK:
        is_open = Conflict.objects.filter(pk=data["conflict"], status=ConflictStatus.OPEN)
        if not is_open.exists():
            return f"deadlock #{data['conflict']} is resolved"
    return ""


def _audience(incident: Incident) -> str:
    if incident.kind == IncidentKind.APPROVAL_ESCALATED:
        return Audience.ESCALATION
    return Audience.OPERATORS


def email_recipients(incident: Incident) -> list[str]:
    """Whom an incident is e-mailed to: for an escalation, the active users of the
    second group (``group_id``); otherwise the team's ``operators``, or, when it names
    none, the active members of the operators group. Only those with an address,
    each once, in a stable order."""
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    if incident.kind == IncidentKind.APPROVAL_ESCALATED:
        users = users.filter(groups__pk=incident.data["group_id"])
    elif incident.team.operators.exists():
        users = users.filter(notified_teams=incident.team_id)
    else:
        users = users.filter(groups__name=OPERATORS_GROUP)
    return sorted(set(users.values_list("email", flat=True)))


def _queue() -> Any:
    return django_rq.get_queue(QUEUE)


def notify_incident(incident_id: int) -> int:
    """RQ job: enqueue the first delivery of an incident to each of its targets: the
    team's active webhooks that want it, and e-mail when the team has it on. Returns
    how many jobs it enqueued."""
    incident = Incident.objects.select_related("team").filter(pk=incident_id).first()
    if incident is None:
        return 0
    queue = _queue()
    count = 0
    for webhook in incident.team.webhooks.filter(active=True).order_by("pk"):
        if webhook.wants(incident.kind):
            queue.enqueue(DELIVER_WEBHOOK, incident.pk, webhook.pk, 1, job_timeout=60)
            count += 1
    if incident.team.email_notifications:
        queue.enqueue(DELIVER_EMAIL, incident.pk, 1, job_timeout=120)
        count += 1
    return count


@service
def delivery_record(**fields: Any) -> Delivery:
    """Record one attempt (a new Delivery row; rows are never updated)."""
    return Delivery.objects.create(**fields)


@dataclass
class Attempt:
    """What one attempt gave, before it is recorded."""

    outcome: str
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    retry: bool = False


def _post(url: str, body: bytes, headers: dict[str, str]) -> Attempt:
    """POST ``body``; never follows a redirect, never raises."""
    try:
        with (
            httpx.Client(timeout=TIMEOUT, follow_redirects=False) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) >= EXCERPT * 4:
                    break
            excerpt = raw.decode("utf-8", errors="replace")[:EXCERPT]
            code = response.status_code
            location = response.headers.get("location", "")
    except httpx.HTTPError as exc:  # connection refused, timeouts, protocol errors
        return Attempt(DeliveryOutcome.FAILED, error=f"{type(exc).__name__}: {exc}", retry=True)
    if 200 <= code < 300:
        return Attempt(DeliveryOutcome.DELIVERED, code, excerpt)
    if 300 <= code < 400:
        error = f"redirect to {location or '(no location)'} not followed"
        return Attempt(DeliveryOutcome.FAILED, code, excerpt, error)
    retry = code >= 500 or code == 429
    return Attempt(DeliveryOutcome.FAILED, code, excerpt, f"HTTP {code}", retry)


def _record(
    incident: Incident,
    attempt_number: int,
    result: Attempt,
    *,
    channel: str,
    recipients: str,
    webhook: Webhook | None = None,
    retry_job: tuple[Any, ...] | None = None,
) -> Delivery:
    """Record an attempt and, for a failure worth retrying with attempts left, schedule
    the next one (``retry_job``: the job and its arguments but the attempt number)."""
    now = timezone.now()
    next_at = None
    retry = result.retry and retry_job is not None and attempt_number <= len(RETRY_DELAYS)
    if retry:
        next_at = now + timedelta(seconds=RETRY_DELAYS[attempt_number - 1])
    delivery = delivery_record(
        incident=incident,
        channel=channel,
        webhook=webhook,
        recipients=recipients,
        attempt=attempt_number,
        outcome=DeliveryOutcome.RETRYING if retry else result.outcome,
        status_code=result.status_code,
        response_excerpt=result.excerpt,
        error=result.error,
        delivered_at=now if result.outcome == DeliveryOutcome.DELIVERED else None,
        next_retry_at=next_at,
    )
    if retry:
        func, *args = retry_job
        _queue().enqueue_in(
            timedelta(seconds=RETRY_DELAYS[attempt_number - 1]),
            func,
            *args,
            attempt_number + 1,
            job_timeout=120,
        )
    elif result.outcome == DeliveryOutcome.FAILED:
        logger.warning(
            "%s of incident #%s to %s failed for good: %s",
            channel,
            incident.pk,
            recipients,
            result.error,
        )
    return delivery


def deliver_webhook(incident_id: int, webhook_id: int, attempt: int = 1) -> str:
    """RQ job: POST the incident to one webhook, signed (see :func:`sign`), and record
    the attempt; a failure worth it is retried (module docstring). Returns the outcome."""
    incident = Incident.objects.select_related("team").filter(pk=incident_id).first()
    webhook = Webhook.objects.filter(pk=webhook_id).first()
    if incident is None or webhook is None:
        return DeliveryOutcome.SKIPPED
    record = {"channel": DeliveryChannel.WEBHOOK, "recipients": webhook.url, "webhook": webhook}
    why_not = "the webhook is inactive" if not webhook.active else no_longer_waiting(incident)
    if why_not:
        result = Attempt(DeliveryOutcome.SKIPPED, error=why_not)
        return _record(incident, attempt, result, **record).outcome
    message = incident_message(incident, audience=_audience(incident), attempt=attempt)
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(webhook.secret, body, int(time.time())),
        "Orchestrator-Incident": str(incident.pk),
    }
    result = _post(webhook.url, body, headers)
    retry_job = (DELIVER_WEBHOOK, incident.pk, webhook.pk)
    return _record(incident, attempt, result, retry_job=retry_job, **record).outcome


def email_text(incident: Incident) -> str:
    """The plain-text body of an incident's e-mail: what happened, and the link."""
    lines = [incident.title, ""]
    if incident.detail:
        lines += [incident.detail, ""]
    lines += [
        f"Decide here: {incident_link(incident)}",
        "",
        f"Team {incident.team.name}; incident #{incident.pk} ({incident.kind}), "
        f"{incident.created_at.isoformat()}.",
    ]
    return "\n".join(lines)


def deliver_email(incident_id: int, attempt: int = 1) -> str:
    """RQ job: e-mail the incident to its recipients (:func:`email_recipients`), one
    message each, through Django's e-mail backend, and record the attempt; an SMTP or
    connection error is retried. Returns the outcome."""
    incident = Incident.objects.select_related("team").filter(pk=incident_id).first()
    if incident is None:
        return DeliveryOutcome.SKIPPED
    recipients = email_recipients(incident)
    record = {"channel": DeliveryChannel.EMAIL, "recipients": ", ".join(recipients)}
    why_not = no_longer_waiting(incident) or ("" if recipients else "nobody with an e-mail")
    if why_not:
        result = Attempt(DeliveryOutcome.SKIPPED, error=why_not)
        return _record(incident, attempt, result, **record).outcome
    subject = f"[Orchestrator] {incident.title}"[:200]
    body = email_text(incident)
    messages = [EmailMessage(subject=subject, body=body, to=[address]) for address in recipients]
    try:
        get_connection(fail_silently=False).send_messages(messages)
        result = Attempt(DeliveryOutcome.DELIVERED)
    except (smtplib.SMTPException, OSError) as exc:  # OSError: refused, unreachable, TLS
        result = Attempt(DeliveryOutcome.FAILED, error=f"{type(exc).__name__}: {exc}", retry=True)
    retry_job = (DELIVER_EMAIL, incident.pk)
    return _record(incident, attempt, result, retry_job=retry_job, **record).outcome
