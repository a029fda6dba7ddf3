"""Views of the live board: what one page shows, not the whole board.

A page of the dashboard subscribes to the live feed with a view (the WebSocket's
query string, or its snapshot message: consumers.py); its snapshot then carries
only what that page draws, whatever the size of the board:

* ``nav`` (the server-rendered pages): the system flag, the counts, the teams;
* ``overview``: the teams, the runs (selectors.board), one page of the agents
  (filtered by name or team, team, derived status; ordered by name), and a
  ``summary`` of every agent's status, in all and by team, for the cards;
* ``resources``: one page of the resources (filtered by name, team or holder, team,
  held or waited for; ordered by name), with the folders above its paths, so that
  a path says which folder lock covers it;
* ``graph``: one page of the waits (filtered by team, or by an agent: its waits and
  the waits for what it holds), the open deadlocks of the filter with every wait and
  hold of their cycles, the resources waited for and their holders. Holds nobody
  waits for are drawn only while they are few (at most a page).

Rows have the board's shape (selectors.board). ``view`` in the snapshot says what
was chosen: ``{name, params, total, page, pages, size, ids: {agents, resources}}`` (the graph's
also ``deadlocks_open``, the ids of every open deadlock, and ``holds_total``);
a browser keeps the rows of ``ids`` from the deltas (which are the board's) and
asks for a fresh view when a delta touches rows it does not show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from django.db.models import Case, CharField, Exists, F, OuterRef, Q, Value, When

from orchestrator.core.events import last_event_id
from orchestrator.core.models import (
    Agent,
    AgentStatus,
    Lock,
    LockRequest,
    LockSet,
    RequestStatus,
    Resource,
)
from orchestrator.core.paths import folders_above, is_path
from orchestrator.dashboard.forms import BOARD_PAGE_SIZE, BoardViewForm
from orchestrator.dashboard.selectors import board

DEFAULT_VIEW = "nav"


class ViewError(ValueError):
    """A view that does not validate: ``detail`` says which field and why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class View:
    name: str
    q: str = ""
    team: int | None = None
    agent: str = ""
    status: str = ""
    contested: bool = False
    page: int = 1
    size: int = BOARD_PAGE_SIZE

    def key(self) -> tuple[Any, ...]:
        return tuple(asdict(self).values())

    def params(self) -> dict[str, Any]:
        """The view as the query string of its page would carry it (defaults left out)."""
        defaults = View(name=self.name)
        return {k: v for k, v in asdict(self).items() if k == "name" or v != getattr(defaults, k)}


def view_parse(params: Mapping[str, Any]) -> View:
    """A view from a query string's or a message's fields; raises ViewError."""
    data = {}
    for key in BoardViewForm.base_fields:
        value = params.get(key)
        if isinstance(value, list):  # a QueryDict's list, or parse_qs's
            value = value[-1] if value else None
        if value is None or isinstance(value, dict | list):
            continue
        data[key] = "1" if value is True else "0" if value is False else str(value)
    data.setdefault("view", DEFAULT_VIEW)
    form = BoardViewForm(data)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        raise ViewError(f"{field}: {errors[0]}")
    clean = form.cleaned_data
    return View(
        name=clean["view"],
        q=clean["q"],
        team=clean["team"],
        agent=clean["agent"],
        status=clean["status"],
        contested=bool(clean["contested"]),
        page=clean["page"] or 1,
        size=clean["size"] or BOARD_PAGE_SIZE,
    )


# --- paging ---------------------------------------------------------------------------


def _page(queryset: Any, view: View) -> tuple[list[int], dict[str, Any]]:
    """The ids of the view's page of ``queryset`` (ordered), and its paging info; a
    page past the end shows the last one."""
    total = queryset.count()
    pages = max(1, math.ceil(total / view.size))
    page = min(view.page, pages)
    start = (page - 1) * view.size
    ids = list(queryset.values_list("pk", flat=True)[start : start + view.size])
    return ids, {"total": total, "page": page, "pages": pages, "size": view.size}


def _live_lock(**outer: Any) -> Exists:
    return Exists(Lock.objects.filter(released_at__isnull=True, **outer))


def _waiting(**outer: Any) -> Exists:
    return Exists(LockRequest.objects.filter(status=RequestStatus.WAITING, **outer))


# --- overview -------------------------------------------------------------------------


def agents_with_status() -> Any:
    """Every agent annotated with ``derived``: board.derive_status in SQL."""
    waiting_set = LockSet.objects.filter(agent_id=OuterRef("pk"), status=RequestStatus.WAITING)
    return Agent.objects.annotate(
        waits_for_human=board._waits_for_human(),
        waits_for_lock=_waiting(agent_id=OuterRef("pk")) | Exists(waiting_set),
        derived=Case(
            When(status__in=[AgentStatus.DONE, AgentStatus.FAILED], then=F("status")),
            When(Q(paused=True) | Q(team__paused=True), then=Value("paused")),
            When(waits_for_human=True, then=Value(AgentStatus.WAITING_HUMAN.value)),
            When(waits_for_lock=True, then=Value(AgentStatus.WAITING_LOCK.value)),
            default=F("status"),
            output_field=CharField(),
        ),
    )


def status_summary() -> dict[str, Any]:
    """How many agents are in each derived status, in all and by team."""
    statuses: dict[str, int] = {}
    teams: dict[str, dict[str, int]] = {}
    for team_id, status in agents_with_status().order_by().values_list("team_id", "derived"):
        statuses[status] = statuses.get(status, 0) + 1
        tally = teams.setdefault(str(team_id), {})
        tally[status] = tally.get(status, 0) + 1
    return {"statuses": statuses, "teams": teams}


def _overview(view: View) -> tuple[dict[str, Any], dict[str, Any]]:
    agents = agents_with_status()
    if view.q:
        agents = agents.filter(Q(name__icontains=view.q) | Q(team__name__icontains=view.q))
    if view.team:
        agents = agents.filter(team_id=view.team)
    if view.status:
        agents = agents.filter(derived=view.status)
    ids, info = _page(agents.order_by("name", "pk"), view)
    state = {
        "teams": board._keyed(board._teams()),
        "runs": board._keyed(board._runs()),
        "agents": board._keyed(board._agents(ids)),
        "resources": {},
        "summary": status_summary(),
    }
    info["ids"] = {"agents": ids, "resources": []}
    return state, info


# --- resources ------------------------------------------------------------------------


def _folders_of(ids: list[int], limit: int) -> list[int]:
    """The folder resources above the paths among ``ids``, in their teams (at most ``limit``)."""
    wanted: dict[int | None, set[str]] = {}
    for team_id, name in Resource.objects.filter(pk__in=ids).values_list("team_id", "name"):
        if is_path(name):
            wanted.setdefault(team_id, set()).update(folders_above(name))
    if not wanted:
        return []
    match = Q(pk__in=[])
    for team_id, names in wanted.items():
        match |= Q(team_id=team_id, name__in=sorted(names))
    found = Resource.objects.filter(match).exclude(pk__in=ids).order_by("name", "pk")
    return list(found.values_list("pk", flat=True)[:limit])


def _resources(view: View) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = Resource.objects.all()
    if view.q:
        holder = Lock.objects.filter(
            released_at__isnull=True, resource_id=OuterRef("pk"), agent__name__icontains=view.q
        )
        resources = resources.filter(
            Q(name__icontains=view.q) | Q(team__name__icontains=view.q) | Exists(holder)
        )
    if view.team:
        resources = resources.filter(team_id=view.team)
    if view.contested:
        resources = resources.filter(
            _live_lock(resource_id=OuterRef("pk")) | _waiting(resource_id=OuterRef("pk"))
        )
    ids, info = _page(resources.order_by("name", "pk"), view)
    shown = ids + _folders_of(ids, limit=view.size)
    live = board.LiveRows(resource_ids=shown)
    state = {
        "teams": board._keyed(board._teams()),
        "runs": {},
        "agents": {},
        "resources": board._keyed(board._resources(shown, live=live)),
    }
    info["ids"] = {"agents": [], "resources": shown}
    return state, info


# --- graph ----------------------------------------------------------------------------


def _graph(view: View) -> tuple[dict[str, Any], dict[str, Any]]:
    deadlocks = board._deadlocks()
    in_cycles = {pk for d in deadlocks.values() for pk in d["agent_ids"]}
    names = dict(Agent.objects.filter(pk__in=in_cycles).values_list("pk", "name"))
    teams = dict(Agent.objects.filter(pk__in=in_cycles).values_list("pk", "team_id"))
    needle = view.agent.lower()

    def shown(deadlock: dict[str, Any]) -> bool:
        agents = deadlock["agent_ids"]
        of_team = deadlock["team"] == view.team or any(teams.get(pk) == view.team for pk in agents)
        if view.team and not of_team:
            return False
        return not needle or any(needle in names.get(pk, "").lower() for pk in agents)

    open_ids = sorted(deadlocks)
    deadlocks = {pk: d for pk, d in deadlocks.items() if shown(d)}
    cycle_agents = {pk for d in deadlocks.values() for pk in d["agent_ids"]}
    cycle_resources = {pk for d in deadlocks.values() for pk in d["resource_ids"]}

    waits = LockRequest.objects.filter(status=RequestStatus.WAITING)
    locks = Lock.objects.filter(released_at__isnull=True)
    if view.team:
        waits = waits.filter(agent__team_id=view.team)
        locks = locks.filter(agent__team_id=view.team)
    if needle:
        held = Lock.objects.filter(released_at__isnull=True, agent__name__icontains=view.agent)
        waits = waits.filter(
            Q(agent__name__icontains=view.agent) | Q(resource_id__in=held.values("resource_id"))
        )
        locks = locks.filter(agent__name__icontains=view.agent)
    # The waits of the cycles first, then the oldest: a page of waits.
    ordered = waits.annotate(
        cycle=Case(When(agent_id__in=cycle_agents, then=Value(0)), default=Value(1))
    ).order_by("cycle", "requested_at", "pk")
    wait_ids, info = _page(ordered, view)
    rows = LockRequest.objects.filter(pk__in=wait_ids).values_list("agent_id", "resource_id")
    agent_ids = set(cycle_agents) | {agent for agent, _ in rows}
    resource_ids = set(cycle_resources) | {resource for _, resource in rows}
    # Every wait of the cycles' agents, so that a cycle is drawn whole.
    cycle_waits = LockRequest.objects.filter(
        status=RequestStatus.WAITING, agent_id__in=cycle_agents
    )
    resource_ids |= set(cycle_waits.values_list("resource_id", flat=True))
    holds_total = locks.count()
    if holds_total <= view.size:  # a small board: its holds too, as before
        resource_ids |= set(locks.values_list("resource_id", flat=True))
    resource_ids |= set(_folders_of(sorted(resource_ids), limit=view.size))
    holders = Lock.objects.filter(released_at__isnull=True, resource_id__in=resource_ids)
    agent_ids |= set(holders.values_list("agent_id", flat=True))
    live = board.LiveRows(agent_ids=sorted(agent_ids), resource_ids=sorted(resource_ids))
    state = {
        "teams": board._keyed(board._teams()),
        "runs": {},
        "agents": board._keyed(board._agents(sorted(agent_ids), live=live)),
        "resources": board._keyed(board._resources(sorted(resource_ids), live=live)),
        "deadlocks": board._keyed(deadlocks),
    }
    info["deadlocks_open"] = open_ids  # all of them: a delta's new one is news to the view
    info["holds_total"] = holds_total
    info["holds_drawn"] = holds_total <= view.size
    info["agents_total"] = Agent.objects.count()
    info["ids"] = {"agents": sorted(agent_ids), "resources": sorted(resource_ids)}
    return state, info


def _nav(view: View) -> tuple[dict[str, Any], dict[str, Any]]:
    state = {"teams": board._keyed(board._teams()), "runs": {}, "agents": {}, "resources": {}}
    return state, {"ids": {"agents": [], "resources": []}}


BUILDERS = {"nav": _nav, "overview": _overview, "resources": _resources, "graph": _graph}


def view_snapshot(view: View) -> dict[str, Any]:
    """What ``view`` shows, and the id of the last event it includes (read first, as
    board.board_snapshot does: later events come as deltas, which re-read what they touch)."""
    last_id = last_event_id()
    state, info = BUILDERS[view.name](view)
    state = {
        "system": board.system_state(),
        "counts": board.board_counts(),
        "deadlocks": {},
        **state,
    }
    return {
        "last_id": last_id,
        "state": state,
        "view": {"name": view.name, "params": view.params(), **info},
    }
