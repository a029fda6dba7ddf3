"""An agent repeating a refused write counts on one conflict (core/conflicts.py): the
table does not grow with the retries, and the event log still has every refusal."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.core.conflicts import REPEAT_WINDOW
from orchestrator.core.locks import lock_acquire, lock_release, lock_renew
from orchestrator.core.models import Conflict, ConflictStatus, Event
from orchestrator.core.resources import resource_create, resource_write
from tests import factories

pytestmark = pytest.mark.django_db

STALE = 50


def stale_write(agent, name: str = "doc") -> str:
    """A write with a fencing token that was never issued: refused as stale_fence."""
    return resource_write(agent=agent, resource=name, value="late", fence=999).status


def test_fifty_stale_writes_leave_one_conflict_counted_fifty_times() -> None:
    agent = factories.agent(name="retrier")
    resource_create(name="doc", value="v0", agent=agent)

    statuses = {stale_write(agent) for _ in range(STALE)}

    assert statuses == {"stale_fence"}
    conflict = Conflict.objects.get()
    assert (conflict.kind, conflict.occurrences) == ("stale_fence", STALE)
    assert conflict.status == ConflictStatus.RESOLVED
    assert list(conflict.agents.values_list("name", flat=True)) == ["retrier"]
    assert list(conflict.resources.values_list("name", flat=True)) == ["doc"]
    # Every refusal is in the event log: the rejection, and the conflict it counts on.
    rejected = Event.objects.filter(kind="write.rejected", payload__error="stale_fence")
    assert rejected.count() == STALE
    assert Event.objects.filter(kind="conflict.opened").count() == 1
    repeats = Event.objects.filter(kind="conflict.repeated").order_by("id")
    assert [event.payload["occurrences"] for event in repeats] == list(range(2, STALE + 1))
    assert {event.subject_id for event in repeats} == {conflict.pk}


def test_version_conflicts_refused_by_policy_count_on_one_conflict() -> None:
    agent = factories.agent(name="stale-reader")
    resource_create(name="doc", value="v0", agent=agent)
    assert resource_write(agent=agent, resource="doc", value="v1").status == "applied"

    for _ in range(STALE):
        refused = resource_write(agent=agent, resource="doc", value="v2", expected_version=0)
        assert refused.status == "version_conflict"

    conflict = Conflict.objects.get()
    assert (conflict.kind, conflict.occurrences) == ("write_conflict", STALE)
    assert refused.conflict.pk == conflict.pk
    assert Event.objects.filter(kind="write.rejected").count() == STALE


def test_renewing_an_ended_lock_again_counts_on_its_lease_lost_conflict() -> None:
    agent = factories.agent(name="forgetful")
    resource_create(name="doc", value="v0", agent=agent)
    lock = lock_acquire(agent=agent, resource="doc").lock
    other = factories.agent(team_=agent.team, name="other")
    lock_release(lock_id=lock.pk, agent=agent)
    lock_acquire(agent=other, resource="doc")

    for _ in range(3):
        assert lock_renew(lock_id=lock.pk, agent=agent).status == "lost"

    assert Conflict.objects.get(kind="lease_lost").occurrences == 3


def test_another_agent_resource_or_kind_is_a_conflict_of_its_own() -> None:
    team = factories.team()
    one, two = factories.agent(team_=team, name="one"), factories.agent(team_=team, name="two")
    resource_create(name="doc", value="v0", team=team)
    resource_create(name="memo", value="v0", team=team)

    stale_write(one)
    stale_write(one)
    stale_write(two)
    stale_write(one, "memo")
    resource_write(agent=one, resource="doc", value="v1")
    resource_write(agent=one, resource="doc", value="v2", expected_version=0)

    counted = sorted(
        (c.kind, c.agents.get().name, c.resources.get().name, c.occurrences)
        for c in Conflict.objects.all()
    )
    assert counted == [
        ("stale_fence", "one", "doc", 2),
        ("stale_fence", "one", "memo", 1),
        ("stale_fence", "two", "doc", 1),
        ("write_conflict", "one", "doc", 1),
    ]


def test_a_refusal_after_the_window_is_a_new_conflict() -> None:
    agent = factories.agent(name="patient")
    resource_create(name="doc", value="v0", agent=agent)
    stale_write(agent)
    first = Conflict.objects.get()
    Conflict.objects.filter(pk=first.pk).update(
        created_at=first.created_at - REPEAT_WINDOW - timedelta(seconds=1)
    )

    stale_write(agent)
    stale_write(agent)

    assert sorted(Conflict.objects.values_list("occurrences", flat=True)) == [1, 2]


def test_write_conflicts_waiting_for_an_operator_stay_one_per_approval() -> None:
    """Each contested write under ask_operator is an approval of its own, with its own
    open conflict: the operator decides each proposal."""
    team = factories.team(conflict_policy="ask_operator")
    agent = factories.agent(team_=team, name="proposer")
    resource_create(name="doc", value="v0", team=team)
    resource_write(agent=agent, resource="doc", value="v1")

    for value in ("v2", "v3"):
        pending = resource_write(agent=agent, resource="doc", value=value, expected_version=0)
        assert pending.status == "approval_pending"

    assert Conflict.objects.filter(status=ConflictStatus.OPEN).count() == 2
    assert set(Conflict.objects.values_list("occurrences", flat=True)) == {1}
