"""Notifications: incidents opened once from the events, told to a team's webhooks
(signed, retried) and to its operators by e-mail, by RQ jobs; and the pause-by-policy
that is one of them.

Webhooks go to a real HTTP server in the test (127.0.0.1, a port of its own), run by a
real RQ worker: in this process, in burst mode, or a ``manage.py rqworker
--with-scheduler`` process for the retry, as the project's workers run.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import django_rq
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.worker import SimpleStepWorker
from orchestrator.core import sql
from orchestrator.core.approvals import approval_deadline_pass, approval_decide
from orchestrator.core.control import agents_set_paused
from orchestrator.core.deadlocks import deadlock_sweep
from orchestrator.core.deliveries import SIGNATURE_HEADER, sign
from orchestrator.core.events import event_emit, service
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Agent,
    Approval,
    ApprovalPolicy,
    Audience,
    Delivery,
    Event,
    Incident,
    IncidentKind,
    LockRequest,
    Resource,
    Team,
    Webhook,
)
from orchestrator.core.monitor import monitor_sweep
from orchestrator.core.notifications import NewIncident
from orchestrator.core.policies import rule_create
from orchestrator.core.resources import resource_create, resource_write
from orchestrator.processes import Helper
from tests import factories
from tests.concurrency.processes import wait_until
from tests.databases import database_url

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "verify_webhook.py"
BASE_URL = "https://orchestrator.example.com"
SECRET = "whsec_test-secret"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("verify_webhook", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify = _load_example().verify  # the documented snippet, as it is in docs/


class Receiver:
    """A webhook receiver: answers each POST with the next of ``statuses`` (then 200)
    and records what it was sent."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.statuses = list(statuses)
        self.received: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.append(
                        {"path": self.path, "headers": self.headers, "body": body}
                    )
                    receiver.changed.notify_all()
                answer = b"ok" if status < 400 else b"no thanks" if status < 500 else b"boom"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"{receiver.url}/elsewhere")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/orchestrator"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} of {count} POSTs within {timeout}s"
            )
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _notifications(settings: Any, redis_conn: Any) -> None:
    """Links on a known address, and an empty test Redis (the jobs' queue)."""
    settings.ORCHESTRATOR_BASE_URL = BASE_URL


class BurstWorker(SimpleStepWorker):
    """The project's worker, without its command channel (pub/sub), which a burst does
    not use: its thread may take redis-py's 60 s poll to stop at the end of a burst."""

    def subscribe(self) -> None:
        pass


def work() -> None:
    """Run the ``default`` queue's jobs in this process until it is empty."""
    django_rq.get_worker("default", worker_class=BurstWorker).work(burst=True)


def operator(username: str, *, group: str = "operators", email: str | None = None) -> User:
    user = User.objects.create_user(username, email if email is not None else f"{username}@x.io")
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def approval_team(**team_fields: Any) -> tuple[Team, Agent, Resource]:
    team = factories.team(**team_fields)
    agent = factories.agent(team_=team)
    res = resource_create(team=team, name=f"{team.name}-config", value=1, requires_approval=True)
    return team, agent, res


def hook(team: Team, url: str, **fields: Any) -> Webhook:
    return Webhook.objects.create(team=team, url=url, secret=SECRET, **fields)


def attempts(incident: Incident, channel: str = "webhook") -> list[tuple[int, str, int | None]]:
    return list(
        incident.deliveries.filter(channel=channel)
        .order_by("attempt")
        .values_list("attempt", "outcome", "status_code")
    )


# --- webhooks -------------------------------------------------------------------------


def test_a_waiting_approval_is_posted_signed_as_the_docs_say(receiver: Receiver) -> None:
    team, agent, res = approval_team()
    hook(team, receiver.url)
    result = resource_write(agent=agent, resource=res.name, value=2)
    assert result.status == "approval_pending"
    work()

    (request,) = receiver.wait_for(1)
    body = request["body"]
    header = request["headers"][SIGNATURE_HEADER]
    assert verify(SECRET, header, body)  # the snippet of docs/notifications.md
    assert not verify("whsec_another", header, body)
    assert not verify(SECRET, header, body.replace(b"config", b"c0nfig"))
    message = json.loads(body)
    approval = result.approval
    (incident,) = Incident.objects.all()
    assert message == {
        "id": incident.pk,
        "kind": "approval_waiting",
        "audience": "operators",
        "team": {"id": team.pk, "name": team.name},
        "title": f"Approval #{approval.pk} waits: {agent.name} wrote {res.name}",
        "detail": message["detail"],
        "link": f"{BASE_URL}/approvals/#approval-{approval.pk}",
        "subject": {"type": "approval", "id": approval.pk},
        "data": {"approval": approval.pk, "resource": res.name, "agent": agent.name},
        "event": "approval.requested",
        "occurred_at": incident.created_at.isoformat(),
        "attempt": 1,
    }
    assert SECRET not in body.decode()
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["path"] == "/hooks/orchestrator"
    assert attempts(incident) == [(1, "delivered", 200)]
    delivery = incident.deliveries.get(channel="webhook")
    assert delivery.response_excerpt == "ok" and delivery.delivered_at is not None


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = sign("k", b'{"a":1}', 1700000000)
    digest = hmac.new(b"k", b'1700000000.{"a":1}', "sha256").hexdigest()
    assert header == f"t=1700000000,v1={digest}"
    assert not verify("k", header, b'{"a":1}')  # five minutes old and more: refused
    assert not verify("k", "v1=abc", b"")
    assert not verify("k", "garbage", b"")


def test_the_docs_show_the_snippet_the_tests_run() -> None:
    doc = (ROOT / "docs" / "notifications.md").read_text()
    code = EXAMPLE.read_text()
    snippet = code[code.index("import hashlib") :]
    assert snippet in doc


@pytest.mark.slow
def test_a_500_is_retried_by_the_workers_scheduler_and_both_attempts_are_recorded(
    tmp_path: Path,
) -> None:
    server = Receiver(statuses=(500,))
    team, agent, res = approval_team(email_notifications=False)
    hook(team, server.url)
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "ORCHESTRATOR_DATA_DIR": str(settings.DATA_DIR),
        "ORCHESTRATOR_BASE_URL": BASE_URL,
        "SECRET_KEY": "test",
        "PYTHONUNBUFFERED": "1",
    }
    # As Procfile and `make run` start the workers: with RQ's scheduler, which enqueues
    # the retry when its delay has passed.
    worker = Helper(
        [sys.executable, "manage.py", "rqworker", "default", "--with-scheduler"],
        name="rqworker",
        ready=lambda: True,
        log=tmp_path / "worker.log",
        env=env,
        cwd=ROOT,
    )
    try:
        with worker:
            resource_write(agent=agent, resource=res.name, value=2)
            first, second = server.wait_for(2, timeout=60)
            incident = Incident.objects.get()
            try:
                wait_until(lambda: len(attempts(incident)) == 2, timeout=30, interval=0.05,
                           what="two delivery attempts recorded")  # fmt: skip
            except TimeoutError as timed_out:
                raise AssertionError(f"{timed_out}\n{worker.log_tail()}") from None
    finally:
        server.close()
    assert attempts(incident) == [(1, "retrying", 500), (2, "delivered", 200)]
    for request in (first, second):
        assert verify(SECRET, request["headers"][SIGNATURE_HEADER], request["body"])
    assert [json.loads(r["body"])["attempt"] for r in (first, second)] == [1, 2]
    assert [json.loads(r["body"])["id"] for r in (first, second)] == [incident.pk] * 2
    retrying, delivered = incident.deliveries.order_by("attempt")
    assert retrying.response_excerpt == "boom"
    assert abs(retrying.next_retry_at - retrying.created_at - timedelta(seconds=2)) < timedelta(
        seconds=0.5
    )
    # Not before its delay (RQ keeps scheduled times in whole seconds: up to 1 s early).
    assert delivered.created_at >= retrying.next_retry_at - timedelta(seconds=1)


@pytest.mark.parametrize("status", [404, 302])
def test_a_4xx_or_a_redirect_is_not_retried(status: int) -> None:
    server = Receiver(statuses=(status,))
    try:
        team, agent, res = approval_team(email_notifications=False)
        hook(team, server.url)
        resource_write(agent=agent, resource=res.name, value=2)
        work()
        assert len(server.wait_for(1)) == 1
    finally:
        server.close()
    incident = Incident.objects.get()
    assert attempts(incident) == [(1, "failed", status)]
    delivery = incident.deliveries.get()
    assert delivery.next_retry_at is None
    assert django_rq.get_queue("default").scheduled_job_registry.get_job_ids() == []
    if status == 302:
        assert "/elsewhere not followed" in delivery.error
        assert [r["path"] for r in server.received] == ["/hooks/orchestrator"]


def test_an_unreachable_receiver_is_retried_later() -> None:
    team, agent, res = approval_team(email_notifications=False)
    hook(team, "http://127.0.0.1:9/nobody-listens")  # the discard port: refused
    resource_write(agent=agent, resource=res.name, value=2)
    work()
    incident = Incident.objects.get()
    assert attempts(incident) == [(1, "retrying", None)]
    assert "ConnectError" in incident.deliveries.get().error
    assert len(django_rq.get_queue("default").scheduled_job_registry.get_job_ids()) == 1


def test_an_approval_decided_before_delivery_is_not_posted(receiver: Receiver) -> None:
    team, agent, res = approval_team(email_notifications=False)
    hook(team, receiver.url)
    result = resource_write(agent=agent, resource=res.name, value=2)
    approval_decide(approval_id=result.approval.pk, decision="reject", user=None)
    work()
    incident = Incident.objects.get()
    assert attempts(incident) == [(1, "skipped", None)]
    assert incident.deliveries.get().error == f"approval #{result.approval.pk} is rejected"
    assert receiver.received == []


def test_an_approval_a_standing_rule_decides_at_once_is_no_incident(receiver: Receiver) -> None:
    team, agent, res = approval_team()
    hook(team, receiver.url)
    rule_create(user=None, action="approve", team_id=team.pk, resource_id=res.pk)
    result = resource_write(agent=agent, resource=res.name, value=2)
    assert Approval.objects.get(pk=result.approval.pk).status == "approved"
    assert Event.objects.filter(kind="approval.requested").count() == 1
    work()
    assert Incident.objects.count() == 0
    assert receiver.received == []


def test_webhooks_get_the_kinds_they_ask_for_and_inactive_ones_nothing(
    receiver: Receiver,
) -> None:
    team, agent, res = approval_team(email_notifications=False)
    wanted = hook(team, receiver.url + "?wanted", kinds=["approval_waiting"])
    hook(team, receiver.url + "?runs", kinds=["run_failed"])
    hook(team, receiver.url + "?inactive", active=False)
    hook(team, receiver.url + "?escalations", audience=Audience.ESCALATION)
    resource_write(agent=agent, resource=res.name, value=2)
    work()
    assert [r["path"] for r in receiver.wait_for(1)] == ["/hooks/orchestrator?wanted"]
    assert list(Delivery.objects.values_list("webhook", flat=True)) == [wanted.pk]


# --- one notification per incident ----------------------------------------------------


def deadlock_team() -> tuple[Team, Agent, Agent, str, str]:
    team = factories.team(deadlock_policy="ask_operator", email_notifications=False)
    a, b = (factories.agent(team_=team) for _ in range(2))
    for name in ("r0", "r1"):
        resource_create(team=team, name=f"{team.name}-{name}", value=0)
    return team, a, b, f"{team.name}-r0", f"{team.name}-r1"


def twice_at_once(func: Any) -> None:
    """Run ``func`` in two threads (two database connections) and wait for both."""

    def run() -> None:
        try:
            func()
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()


def test_a_deadlock_found_again_by_every_sweep_is_posted_once(receiver: Receiver) -> None:
    team, a, b, r0, r1 = deadlock_team()
    hook(team, receiver.url)
    assert lock_acquire(agent=a, resource=r0).status == "granted"
    assert lock_acquire(agent=b, resource=r1).status == "granted"
    # Two requests that did not see each other (as if concurrent): only a sweep finds the
    # cycle they make.
    now = timezone.now()
    for agent, name in ((a, r1), (b, r0)):
        LockRequest.objects.create(
            agent=agent, resource=Resource.objects.get(name=name), mode="exclusive", ttl=30,
            requested_at=now,
        )  # fmt: skip

    # Two monitors sweeping at the same moment, then each sweep after.
    start = threading.Barrier(2)
    found: list[list[int]] = []

    def sweep() -> None:
        start.wait()
        found.append(deadlock_sweep().detected)

    twice_at_once(sweep)
    for _ in range(3):
        monitor_sweep()
    work()

    assert sorted(len(detected) for detected in found) == [0, 1]  # one of them reported it
    (incident,) = Incident.objects.all()
    conflict_id = incident.data["conflict"]
    assert (incident.kind, incident.key) == ("deadlock", f"conflict:{conflict_id}")
    (request,) = receiver.wait_for(1)
    message = json.loads(request["body"])
    assert message["link"] == f"{BASE_URL}/graph/"
    assert message["kind"] == "deadlock" and message["data"]["conflict"] == conflict_id
    assert sorted(message["data"]["agents"]) == sorted([a.name, b.name])
    assert attempts(incident) == [(1, "delivered", 200)]


def test_a_deadlock_broken_by_policy_is_no_incident() -> None:
    team, a, b, r0, r1 = deadlock_team()
    Team.objects.filter(pk=team.pk).update(deadlock_policy="abort_youngest")
    a.team.refresh_from_db()
    b.team.refresh_from_db()
    lock_acquire(agent=a, resource=r0)
    lock_acquire(agent=b, resource=r1)
    lock_acquire(agent=a, resource=r1)
    assert lock_acquire(agent=b, resource=r0).deadlock is not None
    assert Incident.objects.count() == 0


def test_two_transactions_opening_the_same_incident_make_one() -> None:
    team = factories.team()
    new = NewIncident(
        team_id=team.pk, kind=IncidentKind.DEADLOCK, key="conflict:999", event_kind="x",
        subject_type="conflict", subject_id=999, title="t", detail="",
    )  # fmt: skip
    inside = threading.Barrier(2)
    ids: list[int | None] = []

    @service
    def open_one() -> None:
        inside.wait()  # both inside their transaction before either inserts
        ids.append(sql.insert_incident(new))

    twice_at_once(open_one)
    assert len(ids) == 2 and ids.count(None) == 1
    assert list(Incident.objects.values_list("pk", flat=True)) == [i for i in ids if i]


def stale_fence_team(**team_fields: Any) -> tuple[Team, Agent, str]:
    """A team whose first agent holds a stale token (1) on its resource: the second one
    took the lock after it (token 2)."""
    team = factories.team(**team_fields)
    stale, fresh = factories.agent(team_=team), factories.agent(team_=team)
    name = f"{team.name}-doc"
    resource_create(team=team, name=name, value=0)
    old = lock_acquire(agent=stale, resource=name).lock
    lock_release(lock_id=old.pk, agent=stale)
    assert lock_acquire(agent=fresh, resource=name).lock.token == 2
    return team, stale, name


def test_a_repeated_stale_fence_write_is_posted_once(receiver: Receiver) -> None:
    team, stale, name = stale_fence_team(email_notifications=False)
    hook(team, receiver.url)
    for _ in range(3):
        assert resource_write(agent=stale, resource=name, value=9, fence=1).status == (
            "stale_fence"
        )
    work()
    assert Event.objects.filter(kind="conflict.repeated").count() == 2
    (incident,) = Incident.objects.all()
    assert incident.kind == "stale_fence"
    (request,) = receiver.wait_for(1)
    message = json.loads(request["body"])
    assert message["link"] == f"{BASE_URL}/conflicts/?kind=stale_fence&agent={stale.pk}"
    assert "fencing token 1" in message["detail"]


def test_a_failed_run_is_an_incident_linking_to_its_page(receiver: Receiver) -> None:
    team = factories.team(email_notifications=False)
    hook(team, receiver.url)
    run = factories.run(team=team)

    @service
    def fail() -> None:  # as agents/runs.py ends a run
        event_emit("run.failed", team=team.pk, subject=run, payload={"run": run.pk})

    fail()
    fail()  # an event seen twice is still one incident
    work()
    (request,) = receiver.wait_for(1)
    message = json.loads(request["body"])
    assert (message["kind"], message["title"]) == ("run_failed", f"Run #{run.pk} failed")
    assert message["link"] == f"{BASE_URL}/runs/{run.pk}/"
    assert Incident.objects.count() == 1


# --- e-mail ---------------------------------------------------------------------------


def test_the_teams_operators_get_one_email_with_the_link(mailoutbox: list) -> None:
    operator("ada")
    operator("bob", email="")  # no address: not told
    operator("vic", group="viewers")  # not an operator
    _team, agent, res = approval_team()
    result = resource_write(agent=agent, resource=res.name, value=2)
    work()
    (message,) = mailoutbox
    assert message.to == ["ada@x.io"]
    link = f"{BASE_URL}/approvals/#approval-{result.approval.pk}"
    assert f"Decide here: {link}" in message.body
    assert message.subject.startswith(f"[Orchestrator] Approval #{result.approval.pk} waits")
    incident = Incident.objects.get()
    assert attempts(incident, "email") == [(1, "delivered", None)]
    assert incident.deliveries.get().recipients == "ada@x.io"


def test_a_team_that_names_its_operators_emails_them_only(mailoutbox: list) -> None:
    operator("ada")
    named = User.objects.create_user("cyd", "cyd@x.io")
    team, agent, res = approval_team()
    team.operators.add(named)
    resource_write(agent=agent, resource=res.name, value=2)
    work()
    assert [m.to for m in mailoutbox] == [["cyd@x.io"]]


def test_an_escalation_goes_to_the_second_group(receiver: Receiver, mailoutbox: list) -> None:
    operator("ada")
    lead = operator("lee", group="leads")
    team, agent, res = approval_team()
    ApprovalPolicy.objects.create(
        team=team, deadline_seconds=60, on_deadline="escalate",
        escalate_to=Group.objects.get(name="leads"),
    )  # fmt: skip
    first_group = hook(team, receiver.url + "?operators")
    second_group = hook(team, receiver.url + "?escalation", audience=Audience.ESCALATION)
    result = resource_write(agent=agent, resource=res.name, value=2)
    work()
    assert [m.to for m in mailoutbox] == [["ada@x.io"]]  # the approval waits: operators
    assert [r["path"] for r in receiver.wait_for(1)] == ["/hooks/orchestrator?operators"]

    # Its deadline passes: the monitor escalates it (core/approvals.py, a real service).
    Approval.objects.filter(pk=result.approval.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert approval_deadline_pass(result.approval.pk) == "escalated"
    work()

    escalation = Incident.objects.get(kind="approval_escalated")
    assert escalation.data["group_id"] == lead.groups.get().pk
    assert [m.to for m in mailoutbox] == [["ada@x.io"], ["lee@x.io"]]
    assert f"{BASE_URL}/approvals/#approval-{result.approval.pk}" in mailoutbox[1].body
    assert "Escalated to leads" in mailoutbox[1].subject
    paths = [r["path"] for r in receiver.wait_for(2)]
    assert paths == ["/hooks/orchestrator?operators", "/hooks/orchestrator?escalation"]
    message = json.loads(receiver.received[1]["body"])
    assert (message["kind"], message["audience"]) == ("approval_escalated", "escalation")
    assert message["data"]["group"] == "leads"
    assert Delivery.objects.filter(webhook=first_group).count() == 1
    assert Delivery.objects.filter(webhook=second_group).count() == 1


# --- pause by policy ------------------------------------------------------------------


def test_an_agent_reaching_the_conflict_limit_is_paused_and_the_operators_told(
    receiver: Receiver, mailoutbox: list
) -> None:
    operator("ada")
    team, stale, name = stale_fence_team(pause_after_conflicts=3)
    hook(team, receiver.url, kinds=["agent_paused"])
    for _ in range(2):
        resource_write(agent=stale, resource=name, value=9, fence=1)
    assert not Agent.objects.get(pk=stale.pk).paused  # 2 of 3
    resource_write(agent=stale, resource=name, value=9, fence=1)  # a repeat counts too
    assert Agent.objects.get(pk=stale.pk).paused

    paused = Event.objects.get(kind="agent.paused")
    assert paused.actor == "policy"
    assert paused.payload["reason"].startswith("3 stale-fence or write conflicts within 10 min")
    work()
    incident = Incident.objects.get(kind="agent_paused")
    assert incident.detail == paused.payload["reason"]
    (request,) = receiver.wait_for(1)
    assert json.loads(request["body"])["title"] == f"Agent {stale.name} paused by policy"
    assert [m.subject for m in mailoutbox if "paused" in m.subject] == [
        f"[Orchestrator] Agent {stale.name} paused by policy"
    ]

    # Resumed by an operator, it starts from zero: one more conflict does not pause it.
    agents_set_paused(agents=[stale], paused=False)
    resource_write(agent=stale, resource=name, value=9, fence=1)
    assert not Agent.objects.get(pk=stale.pk).paused
    assert Event.objects.filter(kind="agent.paused").count() == 1


def test_write_conflicts_count_and_teams_without_the_policy_never_pause() -> None:
    team, stale, name = stale_fence_team()
    for _ in range(5):
        resource_write(agent=stale, resource=name, value=9, fence=1)
    assert not Agent.objects.get(pk=stale.pk).paused

    team = factories.team(pause_after_conflicts=2)
    agent = factories.agent(team_=team)
    resource_create(team=team, name=f"{team.name}-v", value=0)
    resource_write(agent=agent, resource=f"{team.name}-v", value=1)
    for _ in range(2):  # based on version 0, now at 1: refused by the reject policy
        assert resource_write(
            agent=agent, resource=f"{team.name}-v", value=2, expected_version=0
        ).status == ("version_conflict")
    assert Agent.objects.get(pk=agent.pk).paused
    assert Event.objects.get(kind="agent.paused", agent=agent).actor == "policy"


def test_an_operators_pause_is_no_incident() -> None:
    agent = factories.agent()
    agents_set_paused(agents=[agent], paused=True)
    assert Incident.objects.count() == 0


# --- admin ----------------------------------------------------------------------------


def test_the_admin_shows_a_new_secret_once_and_the_deliveries_with_status_codes(
    receiver: Receiver,
) -> None:
    client = Client()
    client.force_login(factories.superuser())
    team = factories.team(email_notifications=False)
    page = client.post(
        reverse("admin:core_webhook_add"),
        {"team": team.pk, "url": receiver.url, "audience": "operators", "kinds": [],
         "active": "on", "note": ""},
        follow=True,
    )  # fmt: skip
    webhook = Webhook.objects.get()
    assert webhook.secret.startswith("whsec_")
    assert webhook.secret in page.content.decode()  # shown this once
    change = client.get(reverse("admin:core_webhook_change", args=[webhook.pk])).content.decode()
    assert webhook.secret not in change
    assert f"{webhook.secret[:6]}…{webhook.secret[-4:]}" in change

    refused = client.post(
        reverse("admin:core_webhook_add"),
        {"team": team.pk, "url": "ftp://example.com/x", "audience": "operators"},
    )
    assert refused.status_code == 200 and Webhook.objects.count() == 1  # the form again

    res = resource_create(team=team, name="r", value=0, requires_approval=True)
    resource_write(agent=factories.agent(team_=team), resource=res.name, value=1)
    work()
    incident = Incident.objects.get()
    page = client.get(reverse("admin:core_incident_change", args=[incident.pk]))
    assert page.status_code == 200
    assert "delivered" in page.content.decode().lower()
    listing = client.get(reverse("admin:core_delivery_changelist")).content.decode()
    assert ">200<" in listing
