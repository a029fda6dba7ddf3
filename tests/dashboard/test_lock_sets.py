"""The live board shows a waiting lock set as one wait on several resources, and keeps
it live: the patches of the events that grant or end the set bring the same rows as a
fresh snapshot (selectors/board.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator.core.events import event_messages_after, last_event_id
from orchestrator.core.lock_sets import lock_set_acquire, lock_set_release
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import Agent, Lock, LockSet
from orchestrator.core.resources import resource_create
from orchestrator.dashboard.selectors.board import Touched, board_apply, board_patch, board_snapshot
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class WaitingSet:
    waiter: Agent
    blocker: Agent
    blocking: Lock
    lock_set: LockSet
    ids: dict[str, int]  # resource name -> id


def waiting_set(prefix: str = "sheet") -> WaitingSet:
    """``waiter`` asks for a set of three resources (named in another order than their
    ids); ``blocker`` holds the middle one, so the set holds the first and queues there."""
    team = factories.team(default_lease_ttl=120)
    waiter = factories.agent(team_=team, name=f"{prefix}-waiter")
    blocker = factories.agent(team_=team, name=f"{prefix}-blocker")
    ids = {}
    for part in ("a", "b", "c"):  # ascending id: a, b, c
        ids[part] = resource_create(team=team, name=f"{prefix}-{part}", value=0).pk
    blocking = lock_acquire(agent=blocker, resource=f"{prefix}-b").lock
    names = [f"{prefix}-c", f"{prefix}-a", f"{prefix}-b"]
    result = lock_set_acquire(agent=waiter, resources=names)
    assert result.status == "waiting" and result.held == 1, result
    return WaitingSet(waiter, blocker, blocking, result.lock_set, ids)


def agent_row(state: dict[str, Any], agent: Agent) -> dict[str, Any]:
    return state["agents"][str(agent.pk)]


def resource_row(state: dict[str, Any], pk: int) -> dict[str, Any]:
    return state["resources"][str(pk)]


def patched(before: dict[str, Any], since: int) -> dict[str, Any]:
    """``before`` (a snapshot's state) with the patch of every event after ``since``."""
    return board_apply(before, board_patch(event_messages_after(since, limit=1000)))


def test_a_waiting_set_is_one_wait_naming_its_resources_held_and_queued_at() -> None:
    scene = waiting_set()
    state = board_snapshot()["state"]
    row = agent_row(state, scene.waiter)
    assert row["status"] == "waiting_lock"
    (wait,) = row["waits"]
    assert wait["lock_set"] == scene.lock_set.pk
    assert wait["mode"] == "exclusive"
    assert (wait["resource"], wait["resource_name"]) == (scene.ids["b"], "sheet-b")
    assert wait["request_id"] is not None
    assert [(r["name"], r["state"]) for r in wait["resources"]] == [
        ("sheet-a", "held"),
        ("sheet-b", "queued"),
        ("sheet-c", "later"),
    ]
    assert [r["id"] for r in wait["resources"]] == [scene.ids[p] for p in "abc"]
    # Its lock on the first resource is one of its holds, and says it is of the set.
    assert [(h["resource_name"], h["lock_set"]) for h in row["holds"]] == [
        ("sheet-a", scene.lock_set.pk)
    ]
    # The resources: the set's lock held on a, its one waiter queued on b, nothing on c.
    holder = resource_row(state, scene.ids["a"])["holders"]
    assert [(h["agent_name"], h["lock_set"]) for h in holder] == [
        ("sheet-waiter", scene.lock_set.pk)
    ]
    (waiter,) = resource_row(state, scene.ids["b"])["waiters"]
    assert waiter["agent_name"] == "sheet-waiter"
    assert waiter["lock_set"] == {
        "id": scene.lock_set.pk,
        "size": 3,
        "resources": ["sheet-a", "sheet-b", "sheet-c"],
    }
    assert [h["lock_set"] for h in resource_row(state, scene.ids["b"])["holders"]] == [None]
    assert resource_row(state, scene.ids["c"])["waiters"] == []


def test_a_plain_request_beside_a_set_stays_a_wait_of_its_own() -> None:
    scene = waiting_set()
    other = resource_create(team=scene.waiter.team, name="elsewhere").pk
    lock_acquire(agent=scene.blocker, resource="elsewhere")
    lock_acquire(agent=scene.waiter, resource="elsewhere")
    waits = agent_row(board_snapshot()["state"], scene.waiter)["waits"]
    assert [(w.get("lock_set"), w["resource"]) for w in waits] == [
        (None, other),
        (scene.lock_set.pk, scene.ids["b"]),
    ]
    (plain,) = resource_row(board_snapshot()["state"], other)["waiters"]
    assert plain["lock_set"] is None


def test_when_the_blocker_releases_the_patch_shows_the_set_granted_not_waiting() -> None:
    scene = waiting_set()
    snapshot = board_snapshot()
    lock_release(lock_id=scene.blocking.pk, agent=scene.blocker)  # the set goes on after commit
    scene.lock_set.refresh_from_db()
    assert scene.lock_set.status == "granted"

    state = patched(snapshot["state"], snapshot["last_id"])

    row = agent_row(state, scene.waiter)
    assert row["waits"] == [] and row["status"] == "idle"
    assert sorted(h["resource_name"] for h in row["holds"]) == ["sheet-a", "sheet-b", "sheet-c"]
    assert {h["lock_set"] for h in row["holds"]} == {scene.lock_set.pk}
    assert resource_row(state, scene.ids["b"])["waiters"] == []
    fresh = board_snapshot()["state"]
    for name in ("agents", "resources"):
        assert state[name] == fresh[name]


def test_a_cancelled_set_leaves_no_wait_and_releases_what_it_held() -> None:
    scene = waiting_set()
    snapshot = board_snapshot()
    lock_set_release(lock_set_id=scene.lock_set.pk, agent=scene.waiter)

    state = patched(snapshot["state"], snapshot["last_id"])

    row = agent_row(state, scene.waiter)
    assert row["waits"] == [] and row["holds"] == []
    assert resource_row(state, scene.ids["b"])["waiters"] == []
    assert resource_row(state, scene.ids["a"])["holders"] == []
    fresh = board_snapshot()["state"]
    for name in ("agents", "resources"):
        assert state[name] == fresh[name]


def test_a_set_granted_at_once_is_no_wait() -> None:
    team = factories.team()
    agent = factories.agent(team_=team, name="quick")
    for name in ("x", "y"):
        resource_create(team=team, name=name)
    granted = lock_set_acquire(agent=agent, resources=["x", "y"])
    assert granted.status == "granted"
    row = agent_row(board_snapshot()["state"], agent)
    assert row["waits"] == [] and row["status"] == "idle"
    assert {h["lock_set"] for h in row["holds"]} == {granted.lock_set.pk}


def test_an_event_of_a_set_touches_its_agent_and_its_resources() -> None:
    """An operator's end of a set may name no agent, and a grant renews every lease of
    the set without an event of each lock: the set's rows name them."""
    scene = waiting_set()
    event = {
        "id": last_event_id() + 1,
        "kind": "lockset.ended",
        "agent": None,
        "subject_type": "lockset",
        "subject_id": scene.lock_set.pk,
        "payload": {"resources": [], "status": "cancelled", "reason": "by an operator"},
    }
    touched = Touched.by([event])
    assert touched.agents == {scene.waiter.pk}
    assert touched.resources == set(scene.ids.values())


def test_the_board_reads_lock_sets_in_one_query_whatever_the_number_of_agents() -> None:
    agent_ids = [waiting_set("one").waiter.pk]
    one_set = queries(board_snapshot)
    agent_ids += [waiting_set(f"more{i}").waiter.pk for i in range(4)]
    assert queries(board_snapshot) == one_set
    # A patch for several waiting agents: one query for their sets, as for one agent.
    events = [{"id": 1, "agent": pk, "kind": "agent.paused"} for pk in agent_ids]
    assert queries(lambda: board_patch(events)) == queries(lambda: board_patch(events[:1]))


def test_no_query_for_lock_sets_while_nobody_waits_for_one() -> None:
    team = factories.team()
    plain = factories.agent(team_=team, name="plain")
    resource_create(team=team, name="plain-r")
    lock_acquire(agent=plain, resource="plain-r")
    events = [{"id": 1, "agent": plain.pk, "kind": "agent.paused"}]
    snapshot, patch = queries(board_snapshot), queries(lambda: board_patch(events))
    scene = waiting_set()
    assert queries(board_snapshot) == snapshot + 1  # the sets' one query
    assert queries(lambda: board_patch(events)) == patch
    events = [{"id": 1, "agent": scene.blocker.pk, "kind": "agent.paused"}]
    assert queries(lambda: board_patch(events)) == patch  # it holds, waits for no set


def queries(read: Any) -> int:
    """How many queries ``read()`` makes."""
    with CaptureQueriesContext(connection) as captured:
        read()
    return len(captured.captured_queries)
