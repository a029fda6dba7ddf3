"""Every event kind is declared in core/kinds.py, with its payload: event_emit
refuses what is not, and the dashboard's change tracking reads the declarations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.core.events import event_emit, service
from orchestrator.core.kinds import FILTERS, KINDS, EventPayloadError
from orchestrator.core.models import Event
from orchestrator.dashboard.selectors.board import Touched

ROOT = Path(__file__).resolve().parents[2]


def _emitted_kinds() -> set[str]:
    """The kinds the code passes to event_emit as literals (also inside ``a if c else b``)."""
    found: set[str] = set()
    for path in [
        *ROOT.joinpath("orchestrator").rglob("*.py"),
        *ROOT.joinpath("agents").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name != "event_emit":
                continue
            # Literals, also in ``a if c else b``; f-strings are checked by the test below.
            todo = [node.args[0]]
            while todo:
                sub = todo.pop()
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.add(sub.value)
                elif isinstance(sub, ast.IfExp):
                    todo += [sub.body, sub.orelse]
    return found


def test_every_kind_the_code_emits_is_declared() -> None:
    emitted = _emitted_kinds()
    assert len(emitted) > 30  # the scan finds the calls
    assert emitted - set(KINDS) == set()


def test_the_kinds_built_at_run_time_are_declared() -> None:
    from orchestrator.core.models import ApprovalStatus, LockEnd, Run

    # Queue.end, approval_decide (f"approval.{status}") and the run's end (f"run.{status}").
    for end in (LockEnd.RELEASED, LockEnd.REVOKED, LockEnd.FORCE_RELEASED, LockEnd.EXPIRED):
        assert f"lock.{end}" in KINDS, end
    for status in (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.FAILED):
        assert f"approval.{status}" in KINDS
    for status in (Run.Status.FINISHED, Run.Status.FAILED, Run.Status.CANCELLED):
        assert f"run.{status}" in KINDS


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("lock.stolen", {}, "'lock.stolen' is not declared"),
        ("step.failed", {}, "'error' is missing"),
        ("step.failed", {"error": "x", "extra": 1}, "unknown payload field(s) extra"),
        ("step.failed", {"error": 3}, "'error' must be str, not int"),
        ("run.finished", {"run": True}, "'run' must be int, not bool"),
        ("resource.written", {"resource": "r", "version": 1, "fence": "5", "approval": None,
                              "by": None}, "'fence' must be int or NoneType, not str"),
    ],
)  # fmt: skip
def test_event_emit_refuses_an_undeclared_kind_or_a_payload_that_does_not_match(
    kind: str, payload: dict, message: str
) -> None:
    @service
    def emit() -> None:
        event_emit(kind, payload=payload)

    with pytest.raises(EventPayloadError) as refused:
        emit()
    assert message in str(refused.value)
    assert not Event.objects.exists()  # nothing half-written


@pytest.mark.django_db(transaction=True)
def test_optional_fields_may_be_left_out_and_none_is_allowed_where_declared() -> None:
    @service
    def emit() -> None:
        event_emit("write.rejected", payload={"resource": "r", "error": "not_holder"})
        event_emit("approval.requested", payload={"approval": 1, "resource": "r",
                   "reason": "x", "base_version": None, "current_version": 2})  # fmt: skip

    emit()
    assert Event.objects.count() == 2


@pytest.mark.django_db
def test_touched_reads_the_entities_the_kind_declares() -> None:
    lock = {"kind": "lock.granted", "agent": 7, "payload": {"resource_id": 3, "run": 99}}
    step = {"kind": "step.done", "agent": 8, "payload": {"run": 5, "resource_id": 4}}
    touched = Touched.by([lock, step])
    # A lock event names a resource id, a step event a run id; the other keys name nothing.
    assert (touched.agents, touched.resources, touched.runs) == ({7, 8}, {3}, {5})
    assert touched.deadlocks is False
    assert Touched.by([{"kind": "deadlock.detected", "payload": {}}]).deadlocks is True


def test_the_events_page_filters_are_the_declared_families() -> None:
    assert FILTERS[0] == "lock." and "lock.granted" in FILTERS and "approval." in FILTERS
    for prefix in FILTERS:
        assert any(kind.startswith(prefix) for kind in KINDS), prefix
