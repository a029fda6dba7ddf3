"""Teams as tenants (core/tenancy.py): an agent acts on its team's resources, and on
another team's only as a grant allows; a refusal writes nothing."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from orchestrator.core.errors import Conflicting, Forbidden, Invalid, NotFound
from orchestrator.core.locks import lock_acquire, lock_release
from orchestrator.core.models import (
    Approval,
    Conflict,
    ConflictKind,
    Event,
    GrantAccess,
    Lock,
    LockRequest,
    Resource,
    ResourceGrant,
    ResourceVersion,
)
from orchestrator.core.resources import (
    approval_request,
    resource_create,
    resource_read,
    resource_write,
)
from orchestrator.core.selectors import conflicts_recent
from orchestrator.core.tenancy import DEFAULT_TEAM, visible_resources
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def red():
    return factories.team(name="red")


@pytest.fixture
def blue():
    return factories.team(name="blue")


@pytest.fixture
def ann(red):
    return factories.agent(team_=red, name="ann")


@pytest.fixture
def bob(blue):
    return factories.agent(team_=blue, name="bob")


def counts() -> dict[str, int]:
    """What a refused call must not have added to."""
    models = (Lock, LockRequest, Conflict, Approval, ResourceVersion, Event)
    return {model.__name__: model.objects.count() for model in models}


def grant(owner, team, access, *, resource=None, prefix=""):
    return ResourceGrant.objects.create(
        owner=owner, team=team, access=access, resource=resource, prefix=prefix
    )


def test_a_name_is_unique_within_a_team_and_each_team_has_its_own(ann, bob, red, blue) -> None:
    resource_create(team=red, name="calendar", value="red's")
    resource_create(team=blue, name="calendar", value="blue's")

    assert resource_read(resource="calendar", agent=ann).resource.value == "red's"
    assert resource_read(resource="calendar", agent=bob).resource.value == "blue's"
    # Both granted at once: they are two resources.
    assert lock_acquire(agent=ann, resource="calendar").status == "granted"
    assert lock_acquire(agent=bob, resource="calendar").status == "granted"
    with pytest.raises(Conflicting, match="already has a resource named"):
        resource_create(agent=ann, name="calendar")


@pytest.mark.parametrize("name", ["calendar", "red::calendar"])
def test_another_teams_resource_is_not_found_through_every_operation(ann, bob, red, name) -> None:
    calendar = resource_create(team=red, name="calendar", value=1)
    held = lock_acquire(agent=ann, resource="calendar").lock
    before = counts()

    for asked, call in (
        (name, lambda: resource_read(resource=name, agent=bob)),
        (name, lambda: lock_acquire(agent=bob, resource=name)),
        (name, lambda: lock_acquire(agent=bob, resource=name, mode="shared")),
        (name, lambda: resource_write(agent=bob, resource=name, value=2, expected_version=0)),
        (name, lambda: resource_write(agent=bob, resource=name, value=2, fence=held.token)),
        (name, lambda: approval_request(agent=bob, resource=name, value=2, expected_version=0)),
        (calendar.pk, lambda: lock_acquire(agent=bob, resource=calendar.pk)),  # by id: the same
    ):
        with pytest.raises(NotFound) as refused:
            call()
        assert (refused.value.code, refused.value.detail) == (
            "resource_not_found",
            f"no resource named {asked}",
        )
    # Exactly what a name that does not exist gets: nothing tells "not yours" apart.
    with pytest.raises(NotFound) as absent:
        resource_read(resource="red::nothing-here", agent=bob)
    assert absent.value.code == "resource_not_found"
    assert counts() == before
    assert Resource.objects.get(pk=calendar.pk).version == 0


def test_a_read_grant_allows_reads_and_shared_locks_only(ann, bob, red, blue) -> None:
    calendar = resource_create(team=red, name="calendar", value="v0")
    grant(red, blue, GrantAccess.READ, resource=calendar)

    assert resource_read(resource="red::calendar", agent=bob).resource.value == "v0"
    shared = lock_acquire(agent=bob, resource="red::calendar", mode="shared")
    assert shared.status == "granted"
    lock_release(lock_id=shared.lock.pk, agent=bob)
    before = counts()

    for call in (
        lambda: lock_acquire(agent=bob, resource="red::calendar"),
        lambda: resource_write(agent=bob, resource="red::calendar", value=1, expected_version=0),
        lambda: resource_write(agent=bob, resource="red::calendar", value=1, expected_version=9),
        lambda: approval_request(agent=bob, resource="red::calendar", value=1),
    ):
        with pytest.raises(Forbidden) as refused:
            call()
        assert refused.value.code == "forbidden"
        assert "read-only" in refused.value.detail
    assert counts() == before  # no Conflict on red's resource, no event, no version
    assert Resource.objects.get(pk=calendar.pk).version == 0


def test_a_read_write_prefix_grant_covers_the_names_under_it(ann, bob, red, blue) -> None:
    resource_create(team=red, name="shared/cal", value=0)
    resource_create(team=red, name="private", value=0)
    grant(red, blue, GrantAccess.READ_WRITE, prefix="shared/")

    held = lock_acquire(agent=bob, resource="red::shared/cal")
    assert held.status == "granted"
    written = resource_write(
        agent=bob, resource="red::shared/cal", value=1, expected_version=0, fence=held.lock.token
    )
    assert (written.status, written.version) == ("applied", 1)
    # Red's own agent contends for the same resource: one lock manager for both teams.
    assert lock_acquire(agent=ann, resource="shared/cal", wait=False).status == "busy"
    with pytest.raises(NotFound):
        lock_acquire(agent=bob, resource="red::private")


def test_a_grant_shares_only_its_owners_resources(ann, bob, red, blue) -> None:
    green = factories.team(name="green")
    resource_create(team=red, name="doc")
    grant(green, blue, GrantAccess.READ_WRITE)  # green shares everything it has: not red's

    with pytest.raises(NotFound):
        resource_read(resource="red::doc", agent=bob)
    with pytest.raises(NotFound):
        resource_read(resource="green::doc", agent=bob)


def test_visible_resources_are_the_teams_and_the_granted(ann, bob, red, blue) -> None:
    resource_create(team=blue, name="mine")
    one = resource_create(team=red, name="one")
    resource_create(team=red, name="pub/a")
    resource_create(team=red, name="pub/b")
    resource_create(team=red, name="secret")
    grant(red, blue, GrantAccess.READ, resource=one)
    grant(red, blue, GrantAccess.READ, prefix="pub/")

    names = sorted(visible_resources(bob).values_list("name", flat=True))
    assert names == ["mine", "one", "pub/a", "pub/b"]
    assert sorted(visible_resources(ann).values_list("name", flat=True)) == [
        "one",
        "pub/a",
        "pub/b",
        "secret",
    ]


def test_an_agent_sees_its_teams_conflicts_only(ann, bob, red, blue) -> None:
    ours = Conflict.objects.create(kind=ConflictKind.STALE_FENCE, team=red, detail="red")
    theirs = Conflict.objects.create(kind=ConflictKind.STALE_FENCE, team=blue, detail="blue")
    involving = Conflict.objects.create(kind=ConflictKind.DEADLOCK, team=blue, detail="both")
    involving.agents.add(ann, bob)

    assert {c.pk for c in conflicts_recent(agent=ann)} == {ours.pk, involving.pk}
    assert {c.pk for c in conflicts_recent(agent=bob)} == {theirs.pk, involving.pk}


def test_names_cannot_contain_the_team_separator(ann, red) -> None:
    with pytest.raises(Invalid) as refused:
        resource_create(agent=ann, name="a::b")
    assert refused.value.code == "invalid_name"
    with pytest.raises(ValidationError):
        type(red)(name="x::y").full_clean()  # a team's name, as the admin checks it


def test_an_agent_creates_in_its_own_team_only(ann, blue) -> None:
    with pytest.raises(Forbidden):
        resource_create(agent=ann, team=blue, name="doc")
    assert not Resource.objects.exists()


def test_without_an_agent_a_plain_name_must_be_unique(red, blue) -> None:
    resource_create(team=red, name="doc", value="r")
    assert resource_read(resource="doc").resource.value == "r"
    resource_create(team=blue, name="doc", value="b")
    with pytest.raises(Invalid) as refused:
        resource_read(resource="doc")
    assert refused.value.code == "ambiguous_name"
    assert resource_read(resource="blue::doc").resource.value == "b"


def test_a_grant_of_a_resource_must_name_one_of_its_owners(red, blue) -> None:
    doc = resource_create(team=red, name="doc")
    with pytest.raises(ValidationError):
        ResourceGrant(owner=blue, team=red, resource=doc, access=GrantAccess.READ).full_clean()


def test_the_migration_gives_every_resource_a_team() -> None:
    """0008 gives a resource without a team its creator's team, or the default team."""
    executor = MigrationExecutor(connection)
    executor.migrate([("core", "0007_event_log_shared_lock")])
    old = (
        MigrationExecutor(connection)
        .loader.project_state([("core", "0007_event_log_shared_lock")])
        .apps
    )
    team = old.get_model("core", "Team").objects.create(name="makers")
    maker = old.get_model("core", "Agent").objects.create(team=team, name="maker")
    made = old.get_model("core", "Resource").objects.create(name="made")
    orphan = old.get_model("core", "Resource").objects.create(name="orphan")
    old.get_model("core", "ResourceVersion").objects.create(resource=made, version=0, agent=maker)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert Resource.objects.get(pk=made.pk).team.name == "makers"
    assert Resource.objects.get(pk=orphan.pk).team.name == DEFAULT_TEAM
