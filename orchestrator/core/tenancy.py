"""Teams as tenants: which resources an agent may act on, and how it names them.

A resource belongs to one team. An agent names its own team's resources by their
names, and another team's as ``owner::name``, which it may use only when a
:class:`~orchestrator.core.models.ResourceGrant` of the owner shares that
resource (or a name prefix it falls under) with the agent's team:

* a read grant allows reading and shared locks;
* a read-write grant also allows exclusive locks, writes and approval requests.

A resource the agent's team neither owns nor was granted is not found
(``resource_not_found``, 404), exactly as one that does not exist: telling the
two apart would tell another tenant's names. A resource shared read-only that
the agent tries to change is ``forbidden`` (403): the grant says it exists.

The check runs on the resource row the service has read or locked, before the
service decides anything (``queue.open_queue``, ``resources.resource_read``); a
refusal rolls the service's transaction back (with the leases that reading the
queue found expired), so a refused call writes nothing, and records no Conflict
on the other team's resource.
An agent's own resources cost no query; another team's cost one (the grants).
Calls without an agent (operators, the runtime's own bookkeeping) are not scoped.
"""

from __future__ import annotations

from typing import Any

from django.db.models import CharField, Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Cast

from orchestrator.core.errors import Forbidden, NotFound
from orchestrator.core.models import (
    TEAM_SEPARATOR,
    Agent,
    GrantAccess,
    LockMode,
    Resource,
    ResourceGrant,
    Team,
)

READ = "read"
WRITE = "write"
# The team of resources created without one (by operators' tools and tests), and of
# those that had none before resources belonged to teams (migration 0008).
DEFAULT_TEAM = "default"


def default_team() -> Team:
    team, _ = Team.objects.get_or_create(
        name=DEFAULT_TEAM, defaults={"description": "Owns the resources created without a team."}
    )
    return team


def split_name(name: str) -> tuple[str | None, str]:
    """``("owner", "name")`` for ``"owner::name"``, ``(None, name)`` for a plain name."""
    team, separator, rest = name.partition(TEAM_SEPARATOR)
    return (team, rest) if separator else (None, name)


def need_for_mode(mode: str) -> str:
    """The access a lock of ``mode`` needs: a shared lock is a consistent read."""
    return READ if mode == LockMode.SHARED else WRITE


def not_found(name: object) -> NotFound:
    """The refusal for a resource that does not exist or that the agent may not see."""
    return NotFound("resource_not_found", f"no resource named {name!s:.200}")


def qualify(team: str, name: str) -> str:
    """``team::name``: how another team's resource is named."""
    return f"{team}{TEAM_SEPARATOR}{name}"


def shared_with(agent: Agent, *, owner_id: int | None = None) -> list[dict[str, Any]]:
    """The grants other teams (or the team ``owner_id``) gave ``agent``'s team, for
    :func:`access_to`."""
    grants = ResourceGrant.objects.filter(team_id=agent.team_id)
    if owner_id is not None:
        grants = grants.filter(owner_id=owner_id)
    return list(grants.values("owner_id", "resource_id", "prefix", "access"))


def access_to(grants: list[dict[str, Any]], resource_id: int, team_id: int, name: str) -> str:
    """The widest access ``grants`` (:func:`shared_with`) give on a resource: ``read``,
    ``read_write``, or ``""`` for none. A grant covers its resource, or, without one,
    the names that start with its prefix."""
    found = {
        grant["access"]
        for grant in grants
        if grant["owner_id"] == team_id
        and (
            grant["resource_id"] == resource_id
            or (grant["resource_id"] is None and name.startswith(grant["prefix"]))
        )
    }
    if GrantAccess.READ_WRITE in found:
        return GrantAccess.READ_WRITE
    return GrantAccess.READ if found else ""


def authorize(agent: Agent | None, resource: Resource, need: str, *, asked: object = None) -> None:
    """Raise unless ``agent`` may act on ``resource`` as ``need`` (READ or WRITE) says.

    ``asked`` is how the caller named the resource, for the not-found message.
    """
    if agent is None or resource.team_id == agent.team_id:
        return
    grants = shared_with(agent, owner_id=resource.team_id)
    access = access_to(grants, resource.pk, resource.team_id, resource.name)
    if not access:
        raise not_found(resource.name if asked is None else asked)
    if need == WRITE and access != GrantAccess.READ_WRITE:
        raise Forbidden(
            "forbidden",
            f"{qualified_name(agent, resource)} is shared with your team read-only: "
            "read it, or take a shared lock",
        )


def qualified_name(agent: Agent | None, resource: Resource) -> str:
    """How ``agent`` names ``resource``: its name, or ``owner::name`` for another team's."""
    if agent is None or resource.team_id == agent.team_id:
        return resource.name
    return qualify(resource.team.name, resource.name)


def visible_resources(agent: Agent) -> QuerySet[Resource]:
    """The resources ``agent`` may at least read: its team's, and those shared with it."""
    shared = ResourceGrant.objects.filter(team_id=agent.team_id, owner_id=OuterRef("team_id"))
    by_resource = shared.filter(resource_id=OuterRef("pk"))
    # A prefix grant covers the names that start with it (the empty prefix: all).
    by_prefix = (
        shared.filter(resource__isnull=True)
        .annotate(outer_name=Cast(OuterRef("name"), output_field=CharField()))
        .filter(outer_name__startswith=F("prefix"))
    )
    return Resource.objects.filter(
        Q(team_id=agent.team_id) | Exists(by_resource) | Exists(by_prefix)
    )
