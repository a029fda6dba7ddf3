"""Path resources (core/paths.py): a lock on a folder covers every path under it, and
the other way round, by the usual shared / exclusive rules."""

from __future__ import annotations

import pytest
from django.db import connection

from orchestrator.core import paths
from orchestrator.core.errors import Invalid
from orchestrator.core.lock_sets import lock_set_acquire
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import Conflict, ConflictKind, LockRequest, RequestStatus, Resource
from orchestrator.core.resources import resource_create
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    return factories.team(default_lease_ttl=30)


@pytest.fixture
def agents(team):
    return [factories.agent(team_=team, name=f"a{i}") for i in range(3)]


@pytest.fixture
def tree(team):
    for name in ("src/", "src/api/", "src/api/views.py", "src/app.py", "srcs/x.py", "doc"):
        resource_create(team=team, name=name, value=None)


def test_names() -> None:
    assert paths.folders_above("a/b/c.py") == ["a/", "a/b/"]
    assert paths.folders_above("a/b/") == ["a/"]
    assert paths.folders_above("doc") == []
    assert paths.contains("a/", "a/b/c") and not paths.contains("a/", "a/")
    assert not paths.contains("a/", "ab/c") and not paths.contains("a", "a/b")
    assert paths.overlapping(["a/", "b/c", "a/x"]) == ("a/", "a/x")
    assert paths.overlapping(["a/", "ab/c", "b/"]) is None


def test_a_folder_lock_blocks_a_file_under_it_and_the_other_way_round(agents, tree) -> None:
    a, b, _ = agents
    folder = lock_acquire(agent=a, resource="src/")
    assert folder.status == "granted"
    busy = lock_acquire(agent=b, resource="src/api/views.py", wait=False)
    assert busy.status == "busy"
    assert [(h["agent"], h["resource"]) for h in busy.holders] == [("a0", "src/")]
    assert lock_acquire(agent=b, resource="srcs/x.py").status == "granted"  # not under src/
    assert lock_acquire(agent=b, resource="doc").status == "granted"
    lock_release(lock_id=folder.lock.pk, agent=a)

    file = lock_acquire(agent=b, resource="src/api/views.py")
    assert file.status == "granted"
    for folder_name in ("src/", "src/api/"):
        refused = lock_acquire(agent=a, resource=folder_name, wait=False)
        assert refused.status == "busy"
        assert [h["resource"] for h in refused.holders] == ["src/api/views.py"]
    assert lock_acquire(agent=a, resource="src/app.py").status == "granted"  # a sibling


def test_shared_folder_locks_stack_and_block_only_exclusive_files(agents, tree) -> None:
    a, b, c = agents
    assert lock_acquire(agent=a, resource="src/", mode="shared").status == "granted"
    assert lock_acquire(agent=b, resource="src/", mode="shared").status == "granted"
    assert lock_acquire(agent=c, resource="src/app.py", mode="shared").status == "granted"
    refused = lock_acquire(agent=c, resource="src/api/views.py", wait=False)
    assert refused.status == "busy"
    assert sorted(h["agent"] for h in refused.holders) == ["a0", "a1"]


def test_an_agents_own_folder_lock_does_not_block_its_files(agents, tree) -> None:
    a, b, _ = agents
    lock_acquire(agent=a, resource="src/")
    assert lock_acquire(agent=a, resource="src/app.py").status == "granted"
    assert lock_acquire(agent=b, resource="src/app.py", wait=False).status == "busy"


def test_a_queued_file_is_granted_when_the_folder_above_is_released(agents, tree) -> None:
    a, b, _ = agents
    folder = lock_acquire(agent=a, resource="src/")
    queued = lock_acquire(agent=b, resource="src/api/views.py")
    assert queued.status == "waiting"
    assert queued.holders[0]["resource"] == "src/"
    lock_release(lock_id=folder.lock.pk, agent=a)  # its queue is empty; views.py's goes
    request = LockRequest.objects.get(pk=queued.request.pk)
    assert request.status == RequestStatus.GRANTED


def test_a_queued_folder_is_granted_when_the_last_file_under_it_is_released(agents, tree) -> None:
    a, b, c = agents
    one = lock_acquire(agent=a, resource="src/app.py")
    two = lock_acquire(agent=b, resource="src/api/views.py")
    queued = lock_acquire(agent=c, resource="src/")
    assert queued.status == "waiting"
    lock_release(lock_id=one.lock.pk, agent=a)
    assert LockRequest.objects.get(pk=queued.request.pk).status == RequestStatus.WAITING
    lock_release(lock_id=two.lock.pk, agent=b)
    assert LockRequest.objects.get(pk=queued.request.pk).status == RequestStatus.GRANTED


def test_a_deadlock_through_a_folder_and_a_file_is_found(agents, tree) -> None:
    """a holds the folder src/ and waits for doc; b holds doc and waits for a file under
    src/: a cycle, though no resource is both held by one and waited for by the other."""
    a, b, _ = agents
    lock_acquire(agent=a, resource="src/")
    lock_acquire(agent=b, resource="doc")
    assert lock_acquire(agent=a, resource="doc").status == "waiting"
    closing = lock_acquire(agent=b, resource="src/api/views.py")
    assert closing.status == "waiting"
    assert closing.deadlock is not None
    conflict = Conflict.objects.get(kind=ConflictKind.DEADLOCK)
    assert sorted(conflict.data["agent_ids"]) == sorted([a.pk, b.pk])
    assert "src/" in conflict.detail


def test_a_lock_set_may_not_name_a_folder_and_a_path_under_it(agents, tree) -> None:
    a = agents[0]
    with pytest.raises(Invalid) as refused:
        lock_set_acquire(agent=a, resources=["src/", "src/app.py"])
    assert refused.value.code == "overlapping_paths"
    granted = lock_set_acquire(agent=a, resources=["src/api/", "src/app.py", "doc"])
    assert granted.status == "granted"


def test_a_lock_set_waits_for_a_folder_above_one_of_its_paths(agents, tree) -> None:
    a, b, _ = agents
    folder = lock_acquire(agent=a, resource="src/api/")
    waiting = lock_set_acquire(agent=b, resources=["doc", "src/api/views.py"])
    assert waiting.status == "waiting"
    assert waiting.waiting_on.name == "src/api/views.py"
    lock_release(lock_id=folder.lock.pk, agent=a)
    waiting.lock_set.refresh_from_db()
    assert waiting.lock_set.status == RequestStatus.GRANTED


def test_like_wildcards_in_a_folder_name_match_only_themselves(team, agents) -> None:
    a, b, _ = agents
    for name in ("a_b/", "axb/c", "a_b/c", "50%/", "500/x"):
        resource_create(team=team, name=name, value=None)
    lock_acquire(agent=a, resource="a_b/")
    lock_acquire(agent=a, resource="50%/")
    assert lock_acquire(agent=b, resource="axb/c", wait=False).status == "granted"
    assert lock_acquire(agent=b, resource="500/x", wait=False).status == "granted"
    assert lock_acquire(agent=b, resource="a_b/c", wait=False).status == "busy"


def test_another_teams_folder_does_not_cover_yours(agents, tree) -> None:
    other = factories.team(name="other")
    outsider = factories.agent(team_=other, name="outsider")
    resource_create(team=other, name="src/", value=None)
    assert lock_acquire(agent=outsider, resource="src/").status == "granted"
    assert lock_acquire(agent=agents[0], resource="src/app.py").status == "granted"


def test_the_paths_under_a_folder_are_found_through_the_index(team, tree) -> None:
    """The prefix match is served by resource_path_prefix (an index range on the prefix),
    not by a scan of the team's resources."""
    Resource.objects.bulk_create(
        Resource(team=team, name=f"d{i % 50}/f{i}", value=None) for i in range(5000)
    )
    folder = Resource.objects.get(team=team, name="src/")
    query = Resource.objects.filter(paths.related_filter(folder.team_id, folder.name))
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE core_resource")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "resource_path_prefix" in plan, plan
    assert "~>=~" in plan, plan  # the prefix is an index condition, not a filter


@pytest.mark.parametrize("name", ["/abs", "a//b", "a/./b", "../x", "a/..", "a//", "/"])
def test_a_path_name_is_relative_and_normalized(team, name) -> None:
    with pytest.raises(Invalid) as refused:
        resource_create(team=team, name=name, value=None)
    assert refused.value.code == "invalid_name"


@pytest.mark.parametrize("name", ["a/", "a/b", "a/b/", "a.b/c.d", "a b/c"])
def test_relative_paths_and_folders_are_names(team, name) -> None:
    assert resource_create(team=team, name=name, value=None).name == name
