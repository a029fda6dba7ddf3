"""Each error code of the API has its own exception class, and the client raises it
for the server's real answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from orchestrator_client import Client, errors
from orchestrator_client._ops import Call, expect, release, simple
from orchestrator_client._transport import StdlibTransport

from orchestrator.core.models import ResourceGrant
from orchestrator.core.operations import CODED_STATUS
from orchestrator.core.resources import resource_create
from tests.client.conftest import Agents, eventually, free

ROOT = Path(__file__).resolve().parents[2]

# How the server names its codes: the refusals of the core and the API, the write
# results it answers with (``"error": result.status``) and the API's own answers.
CODE_PATTERNS = [
    r'\b(?:Invalid|Conflicting|Forbidden|NotFound|Gone|Throttled)\(\s*"([a-z_]+)"',
    r'WriteResult\(\s*"([a-z_]+)"',
    r'error_response\(\s*\d+,\s*"([a-z_]+)"',
    r'"error":\s*"([a-z_]+)"',
]


def server_codes() -> set[str]:
    codes = set(CODED_STATUS)
    for folder in ("orchestrator/core", "orchestrator/api"):
        for source in (ROOT / folder).glob("*.py"):
            text = source.read_text()
            for pattern in CODE_PATTERNS:
                codes.update(re.findall(pattern, text))
    return codes - {"applied", "approval_pending"}  # write results that are not errors


def test_every_code_the_server_sends_has_a_class_of_its_own():
    codes = server_codes()
    assert {"busy", "stale_fence", "version_conflict", "lease_lost", "not_your_lock"} <= codes
    missing = sorted(code for code in codes if code not in errors.BY_CODE)
    assert not missing, f"codes without an exception class: {missing}"
    for code in codes:
        cls = errors.BY_CODE[code]
        assert cls.code == code and issubclass(cls, errors.OrchestratorError)
    assert len({errors.BY_CODE[code] for code in codes}) == len(codes)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (409, {"error": "stale_fence", "detail": "old", "conflict_id": 7}, errors.StaleFence),
        (409, {"error": "busy", "detail": "held", "holders": [{"agent": "a"}]}, errors.Busy),
        (410, {"error": "lease_lost", "detail": "ended"}, errors.LeaseLost),
        (409, {"error": "a_code_from_a_newer_server", "detail": "?"}, errors.Conflict),
        (429, {"error": "too_many_waits", "detail": "10", "retry_after": 1}, errors.TooManyWaits),
        (429, {"error": "slow_down", "detail": "?"}, errors.TooManyRequests),
        (404, {"error": "no_such_code", "detail": "?"}, errors.NotFound),
        (502, "<html>Bad gateway</html>", errors.ServerError),
        (418, None, errors.OrchestratorError),
    ],
)
def test_an_answer_becomes_its_code_s_class_or_its_status_s(status, body, cls):
    error = errors.error_from(status, body)
    assert type(error) is cls
    assert error.status == status
    if isinstance(body, dict):
        assert (error.code, error.detail) == (body["error"], body["detail"])
        assert error.extra == {k: v for k, v in body.items() if k not in ("error", "detail")}
    else:
        assert error.code == cls.code


def test_stale_fence_is_a_lease_lost_and_busy_names_the_holders():
    stale = errors.error_from(409, {"error": "stale_fence", "detail": "x", "conflict_id": 3})
    assert isinstance(stale, errors.LeaseLost) and stale.conflict_id == 3
    busy = errors.error_from(409, {"error": "busy", "detail": "b", "busy": {"a": [{"agent": "z"}]}})
    assert busy.holders == [{"agent": "z"}] and busy.busy == {"a": [{"agent": "z"}]}
    assert str(busy) == "busy: b"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("transport", ["httpx", "socket"])
def test_the_server_s_refusals_raise_their_classes(live, agents: Agents, transport: str):
    """Through httpx (the clients') and the plain socket (the guard's) alike."""

    def connect(token: str) -> Client:
        if transport == "httpx":
            return Client(live, token)
        return Client(live, token, transport=StdlibTransport(live, token, 10))

    resource_create(team=agents.team, name="doc", value=0)
    resource_create(team=agents.team, name="other", value=0)
    _, one_token = agents.make("one")
    _, two_token = agents.make("two")
    elsewhere = Agents()
    resource_create(team=elsewhere.team, name="shared", value=0)
    ResourceGrant.objects.create(owner=elsewhere.team, team=agents.team, prefix="", access="read")
    seen: dict[type, str] = {}

    def refused(cls: type[errors.OrchestratorError], call, *args, **kwargs):
        with pytest.raises(errors.OrchestratorError) as caught:
            call(*args, **kwargs)
        assert type(caught.value) is cls, caught.value
        assert caught.value.code == cls.code and caught.value.status == cls.status
        seen[cls] = caught.value.code
        return caught.value

    with connect(one_token) as one, connect(two_token) as two:
        refused(errors.Unauthorized, connect("not-a-token").whoami)
        refused(errors.ResourceNotFound, one.read, "nope")
        refused(errors.NameTaken, one.create_resource, "doc")
        refused(errors.InvalidName, one.create_resource, " doc")
        refused(errors.InvalidRequest, one.lock("doc", ttl=0).acquire)
        refused(errors.NotFound, one.run, simple("GET", "/no-such-endpoint"))
        refused(errors.VersionConflict, one.write, "doc", 1, expected_version=9)
        refused(errors.Forbidden, one.write, f"{elsewhere.team.name}::shared", 1)
        refused(errors.ValueTooLarge, one.write, "doc", "x" * (300 * 1024))
        refused(errors.RequestTooLarge, one.write, "doc", "x" * (3 * 1024 * 1024))
        refused(errors.ApprovalNotFound, one.approval(123456789).status)
        refused(errors.LockNotFound, one.run, release(123456789))
        refused(errors.RequestNotFound, one.run, simple("GET", "/lock-requests/123456789"))
        refused(errors.LockSetNotFound, one.run, simple("GET", "/lock-sets/123456789"))

        held = one.lock("doc", ttl=1, renew=False).acquire()
        busy = refused(errors.Busy, two.lock("doc", wait=False).acquire)
        assert [holder["agent"] for holder in busy.holders] == ["one"]
        refused(errors.NotHolder, two.write, "doc", 1)
        refused(errors.NotYourLock, two.run, release(held.id))
        queued = two.run(simple("POST", "/locks", ok=202, json={"resource": "doc", "wait": True}))
        refused(
            errors.NotYourRequest, one.run, simple("GET", f"/lock-requests/{queued['request_id']}")
        )
        refused(errors.AlreadyWaiting, two.lock_set(["doc", "other"], wait=True).acquire)
        two.run(simple("DELETE", f"/lock-requests/{queued['request_id']}"))

        shared = one.lock("other", mode="shared").acquire()
        refused(errors.UpgradeNotSupported, one.lock("other").acquire)
        shared.release()

        # The lease ends (1 s); once another agent takes the lock, the old fence is stale.
        taken = eventually(free(two, "doc"), "the one-second lease to end")
        refused(errors.StaleFence, one.write, "doc", 1, fence=held.fence)
        refused(errors.LeaseLost, one.run, simple("POST", f"/locks/{held.id}/renew", json={}))
        refused(errors.MethodNotAllowed, one.run, simple("PATCH", "/whoami"))
        taken.release()

    assert len(seen) == 23


def test_expect_passes_the_statuses_it_is_given():
    from orchestrator_client._ops import Reply

    assert expect(Reply(201, {"id": 1}), 200, 201) == {"id": 1}
    with pytest.raises(errors.Busy):
        expect(Reply(409, {"error": "busy", "detail": ""}), 200)
    assert Call("GET", "/x").timeout is None
