// The wait-for graph as SVG: agents on the left, resources on the right; green
// "holds" edges (resource -> agent), dashed amber "waits for" edges (agent ->
// resource); deadlock cycles in red, each with a form to break it by choosing the victim.
// A waiting lock set's one edge goes to where it is queued; the list under the graph
// names every resource of each waiting set.
// Path resources (core/paths.py): a wait for a path kept out by a lock on a folder above
// it (or, for a folder, on a path under it) has a dotted "covered by" edge, on the right
// of the resources, from the waited-for path to the held one, so the chain waiter ->
// path -> folder -> holder reads as one; pathtree.js says which locks keep each waiter out.
// The server chooses what is drawn (live.js views, selectors/views.py): a page of the
// waits of the team or agent filtered for, the cycles first, with the holders of what
// they wait for; holds nobody waits for only while they are few. The info line says
// how much is not drawn.
import { canOperate, csrfToken } from "./actions.js";
import { clear, h, s } from "./dom.js";
import { byName } from "./format.js";
import { board, redrawOnChange } from "./live.js";
import { bindFilters, drawPager, teamOptions } from "./paging.js";
import { lockSetWait } from "./locksets.js";
import { blockerText, coverText, isFolder, pathForest } from "./pathtree.js";

const container = document.getElementById("graph");
const deadlocksBox = document.getElementById("deadlocks");
const lockSetsBox = document.getElementById("lock-sets");
const teamSelect = document.getElementById("graph-team");
const agentInput = document.getElementById("graph-agent");
const info = document.getElementById("graph-info");
const pagerBox = document.getElementById("graph-pager");
const ROW = 38;
const NODE_H = 26;
const AGENT_X = 20;
const AGENT_W = 220;
const RES_X = 600;
const RES_W = 240;
const COVER_MAX = 140; // how far right of the resources a "covered by" edge may bow
const WIDTH = RES_X + RES_W + COVER_MAX + 20;
const chosenVictims = new Map(); // deadlock id -> agent id

function label(name, max = 30) {
  return name.length > max ? `${name.slice(0, max - 1)}…` : name;
}

function markers() {
  const marker = (id, color) =>
    s("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      s("path", { d: "M 0 0 L 10 5 L 0 10 z", style: { fill: color } }));
  return s("defs", {},
    marker("arrow-hold", "var(--running)"),
    marker("arrow-wait", "var(--waiting-lock)"),
    marker("arrow-cover", "var(--muted)"),
    marker("arrow-cycle", "var(--failed)"));
}

function deadlockOf(state) {
  // agent id / resource id -> the deadlock it is part of
  const agents = new Map();
  const resources = new Map();
  for (const deadlock of Object.values(state.deadlocks || {})) {
    for (const id of deadlock.agent_ids) agents.set(id, deadlock);
    for (const id of deadlock.resource_ids) resources.set(id, deadlock);
  }
  return { agents, resources };
}

/**
 * The "covered by" links of the board: one per waited-for path resource and resource
 * whose locks keep a waiter of it out (a folder above it, or for a folder a path under
 * it), as ``{waited, blocking, under, locks, keeps}`` where ``locks`` are the blocking
 * resource's locks that keep someone out and ``keeps`` the ``[waiter, lock]`` pairs.
 */
function coverLinks(state) {
  const links = new Map();
  for (const tree of pathForest(Object.values(state.resources))) {
    for (const node of tree.nodes.values()) {
      if (!node.resource) continue;
      for (const waiter of node.resource.waiters) {
        for (const lock of node.blockers[waiter.request_id] || []) {
          const blocking = tree.nodes.get(lock.on).resource;
          const key = `${node.resource.id}:${blocking.id}`;
          // A blocker is never the waited-for resource itself: one that starts with its
          // name is a path under it (the waited-for resource is a folder), else above it.
          const under = isFolder(node.path) && lock.on.startsWith(node.path);
          if (!links.has(key)) links.set(key, { waited: node.resource, blocking, under, locks: [], keeps: [] });
          const link = links.get(key);
          if (!link.locks.some((known) => known.lock_id === lock.lock_id)) link.locks.push(lock);
          link.keeps.push([waiter, lock]);
        }
      }
    }
  }
  return [...links.values()];
}

/** "src/x.py is covered by a's exclusive lock on src/, which keeps b out" */
function coverTitle(link) {
  const kept = [...new Set(link.keeps.map(([waiter]) => waiter.agent_name))].join(", ");
  const why = link.under ? blockerText(link.locks) : coverText(link.locks);
  return `${link.waited.name} is ${why}, which keeps ${kept} out`;
}

// The deadlock a "covered by" link is part of: the waiter, the blocking lock's agent and
// the blocking resource all in one cycle (the core's cycle names the held folder, not
// the waited-for path under it: this puts the path and its wait in the cycle too).
function coverCycle(link, cycles) {
  for (const [waiter, lock] of link.keeps) {
    const deadlock = cycles.agents.get(waiter.agent);
    if (deadlock && deadlock === cycles.agents.get(lock.agent) && deadlock === cycles.resources.get(link.blocking.id)) {
      return { deadlock, waiter: waiter.agent };
    }
  }
  return null;
}

function chooseVictim(deadlockId, agentId) {
  chosenVictims.set(deadlockId, agentId);
  const select = document.getElementById(`victim-${deadlockId}`);
  if (select) select.value = String(agentId);
  render();
}

// Whether another team shares resource r with team (core/tenancy.py): a grant of the
// resource itself, or of a prefix of its name.
function sharedWith(team, r) {
  return Boolean(team) && (team.shared || []).some((g) => String(g.owner) === String(r.team)
    && (g.resource === null ? r.name.startsWith(g.prefix) : g.resource === r.id));
}

function drawGraph(state, teamId) {
  const inTeam = (item) => !teamId || String(item.team) === teamId;
  const usable = (r) => inTeam(r) || sharedWith(state.teams[teamId], r);
  const cycles = deadlockOf(state);
  const drawn = new Set(Object.values(state.resources)
    .filter((r) => (r.holders.length || r.waiters.length) && (usable(r) || cycles.resources.has(r.id)))
    .map((r) => r.id));
  // A drawn wait's covering resource is drawn too (it explains the wait), and so is a
  // covered path whose wait is part of a drawn cycle.
  const covers = [];
  const coveredInCycle = new Map(); // resource id -> deadlock
  const waitsInCycle = new Set(); // `${agent}:${resource}`
  for (const link of coverLinks(state)) {
    const cycle = coverCycle(link, cycles);
    if (!drawn.has(link.waited.id) && !cycle) continue;
    drawn.add(link.waited.id);
    drawn.add(link.blocking.id);
    covers.push({ ...link, cycle });
    if (cycle) {
      coveredInCycle.set(link.waited.id, cycle.deadlock);
      waitsInCycle.add(`${cycle.waiter}:${link.waited.id}`);
    }
  }
  const resources = Object.values(state.resources).filter((r) => drawn.has(r.id)).sort(byName);
  const agentIds = new Set();
  for (const r of resources) for (const x of [...r.holders, ...r.waiters]) agentIds.add(x.agent);
  const agents = [...agentIds].map((id) => state.agents[id]).filter(Boolean).sort(byName);
  if (!agents.length && !resources.length) {
    return h("p", { class: "empty" }, "Nobody holds or waits for anything right now.");
  }
  const agentY = new Map(agents.map((a, i) => [a.id, 20 + i * ROW]));
  const resourceY = new Map(resources.map((r, i) => [r.id, 20 + i * ROW]));
  const height = 40 + Math.max(agents.length, resources.length) * ROW;
  const svg = s("svg", { class: "graph", width: WIDTH, height, viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "Wait-for graph" }, markers());
  const edges = s("g", { class: "edges" });
  svg.append(edges);
  const sameCycle = (agentId, resourceId) => {
    const deadlock = cycles.agents.get(agentId);
    return deadlock && deadlock === cycles.resources.get(resourceId);
  };
  for (const r of resources) {
    const ry = resourceY.get(r.id) + NODE_H / 2;
    for (const holder of r.holders) {
      if (!agentY.has(holder.agent)) continue;
      const ay = agentY.get(holder.agent) + NODE_H / 2 - 5;
      const cycle = sameCycle(holder.agent, r.id);
      edges.append(s("path", {
        class: `edge hold${cycle ? " in-cycle" : ""}`,
        d: `M ${RES_X} ${ry - 5} C ${RES_X - 150} ${ry - 5}, ${AGENT_X + AGENT_W + 150} ${ay}, ${AGENT_X + AGENT_W} ${ay}`,
        "marker-end": `url(#${cycle ? "arrow-cycle" : "arrow-hold"})`,
        dataset: { edge: "hold", agent: holder.agent, resource: r.id },
      }, s("title", {}, `${r.name} is held by ${holder.agent_name} (${holder.mode})`)));
    }
    for (const waiter of r.waiters) {
      if (!agentY.has(waiter.agent)) continue;
      const ay = agentY.get(waiter.agent) + NODE_H / 2 + 5;
      const cycle = sameCycle(waiter.agent, r.id) || waitsInCycle.has(`${waiter.agent}:${r.id}`);
      const set = waiter.lock_set;
      edges.append(s("path", {
        class: `edge wait${set ? " set" : ""}${cycle ? " in-cycle" : ""}`,
        d: `M ${AGENT_X + AGENT_W} ${ay} C ${AGENT_X + AGENT_W + 150} ${ay}, ${RES_X - 150} ${ry + 5}, ${RES_X} ${ry + 5}`,
        "marker-end": `url(#${cycle ? "arrow-cycle" : "arrow-wait"})`,
        dataset: { edge: "wait", agent: waiter.agent, resource: r.id, ...(set ? { lockSet: set.id } : {}) },
      }, s("title", {}, `${waiter.agent_name} waits for ${r.name} (${waiter.mode})${set ? `, for a lock set of ${set.size}: ${set.resources.join(", ")}` : ""}`)));
    }
  }
  const right = RES_X + RES_W;
  for (const link of covers) {
    const from = resourceY.get(link.waited.id) + NODE_H / 2;
    const to = resourceY.get(link.blocking.id) + NODE_H / 2;
    const bow = Math.min(COVER_MAX, 30 + Math.abs(to - from) / 3);
    edges.append(s("path", {
      class: `edge cover${link.under ? " under" : ""}${link.cycle ? " in-cycle" : ""}`,
      d: `M ${right} ${from} C ${right + bow} ${from}, ${right + bow} ${to}, ${right} ${to}`,
      "marker-end": `url(#${link.cycle ? "arrow-cycle" : "arrow-cover"})`,
      dataset: { edge: "cover", resource: link.waited.id, coveredBy: link.blocking.id },
    }, s("title", {}, coverTitle(link))));
  }
  for (const agent of agents) {
    const deadlock = cycles.agents.get(agent.id);
    const victim = deadlock && chosenVictims.get(deadlock.id) === agent.id;
    const node = s("g", {
      class: `node agent${deadlock ? " in-cycle" : ""}${victim ? " victim" : ""}`,
      transform: `translate(${AGENT_X} ${agentY.get(agent.id)})`,
      dataset: { agentId: agent.id, agentName: agent.name },
    },
      s("rect", { width: AGENT_W, height: NODE_H, rx: 12 }),
      s("text", { x: 12, y: 17 }, label(agent.name)),
      s("title", {}, `${agent.name}: ${agent.status}`));
    if (deadlock && canOperate) {
      node.setAttribute("tabindex", "0");
      node.setAttribute("role", "button");
      node.setAttribute("aria-label", `Choose ${agent.name} as the victim of deadlock ${deadlock.id}`);
      node.addEventListener("click", () => chooseVictim(deadlock.id, agent.id));
      node.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          chooseVictim(deadlock.id, agent.id);
        }
      });
    }
    svg.append(node);
  }
  for (const r of resources) {
    const deadlock = cycles.resources.get(r.id) || coveredInCycle.get(r.id);
    svg.append(s("g", {
      class: `node resource${deadlock ? " in-cycle" : ""}`,
      transform: `translate(${RES_X} ${resourceY.get(r.id)})`,
      dataset: { resourceId: r.id, resourceName: r.name },
    },
      s("rect", { width: RES_W, height: NODE_H, rx: 3 }),
      s("text", { x: 10, y: 17 }, label(r.name)),
      s("title", {}, `${r.name}: version ${r.version}, fence ${r.fence}`)));
  }
  return svg;
}

function deadlockPanel(state, deadlock) {
  const name = (id) => (state.agents[id] ? state.agents[id].name : `agent ${id}`);
  const team = state.teams[deadlock.team];
  const panel = h("div", { class: "deadlock", dataset: { deadlockId: deadlock.id } },
    h("h2", {}, `Deadlock #${deadlock.id}`, team ? ` in team ${team.name}` : ""),
    h("p", {}, "Cycle: ", deadlock.cycle.length ? [...deadlock.cycle, deadlock.cycle[0]].join(" → ") : deadlock.agent_ids.map(name).join(", ")),
    h("p", { class: "muted" }, deadlock.detail),
    h("p", { class: "muted" }, deadlock.policy === "ask_operator"
      ? "The team's policy asks an operator to choose the victim."
      : `The team's policy (${deadlock.policy.replaceAll("_", " ")}) breaks it automatically.`));
  if (!canOperate) return panel;
  const chosen = chosenVictims.get(deadlock.id) ?? deadlock.agent_ids[0];
  const victim = h("select", { name: "victim", id: `victim-${deadlock.id}` },
    deadlock.agent_ids.map((id) => h("option", { value: id, selected: id === chosen }, name(id))));
  victim.addEventListener("change", () => chooseVictim(deadlock.id, Number(victim.value)));
  const form = h("form", { method: "post", action: `/actions/deadlocks/${deadlock.id}/break`, class: "row", "data-action": "" },
    h("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrfToken() }),
    h("label", { for: `victim-${deadlock.id}` }, "Victim"), victim,
    h("label", { for: `break-action-${deadlock.id}` }, "Action"),
    h("select", { name: "action", id: `break-action-${deadlock.id}` },
      h("option", { value: "abort" }, "abort: cancel its wait and revoke its locks"),
      h("option", { value: "cancel_wait" }, "cancel its wait only"),
      h("option", { value: "revoke" }, "revoke its locks only")),
    h("button", { type: "submit", class: "danger" }, "Break deadlock"));
  panel.append(form);
  return panel;
}

// The waiting lock sets of the agents shown (one team's, or all), by agent name.
function waitingSets(state, teamId) {
  const found = [];
  for (const agent of Object.values(state.agents).sort(byName)) {
    if (teamId && String(agent.team) !== teamId) continue;
    for (const wait of agent.waits) if (wait.lock_set) found.push({ agent: { id: agent.id, name: agent.name }, wait });
  }
  return found;
}

function lockSetList(sets) {
  if (!sets.length) return [];
  return [h("h2", {}, "Waiting lock sets"),
    h("p", { class: "muted" }, "A lock set takes its resources all or nothing, one at a time in one global order: it holds the first ones and waits, drawn above as one edge, for the next."),
    h("ul", { class: "locksets" }, sets.map(({ agent, wait }) =>
      h("li", { dataset: { agentId: agent.id, lockSet: wait.lock_set } },
        h("span", { class: "agent-name" }, agent.name), " waits for ", lockSetWait(wait))))];
}

function renderInfo(state) {
  const view = board.viewInfo;
  if (board.viewError) {
    info.textContent = `Filter refused: ${board.viewError}`;
    return;
  }
  if (!view) return;
  const drawnAgents = Object.keys(state.agents).length;
  const parts = [`${view.total} wait${view.total === 1 ? "" : "s"}${teamSelect.value || agentInput.value ? " in this filter" : ""}`];
  const hiddenWaits = view.total - Math.max(0, Math.min(view.size, view.total - (view.page - 1) * view.size));
  if (hiddenWaits) parts.push(`${hiddenWaits} on other pages`);
  parts.push(`${drawnAgents} of ${view.agents_total} agents drawn`);
  if (!view.holds_drawn) parts.push(`${view.holds_total} holds nobody waits for are not drawn`);
  info.textContent = `${parts.join(" · ")}.`;
  info.dataset.hiddenWaits = String(hiddenWaits);
}

let lastPanels = "";
let lastSets = "";
function render() {
  const state = board.state;
  if (!state) return;
  teamOptions(teamSelect, state.teams);
  renderInfo(state);
  drawPager(pagerBox, board.viewInfo, "waits");
  const teamId = ""; // the server drew the filter: what it sent is what is shown
  const deadlocks = Object.values(state.deadlocks || {}).filter((d) => !teamId || String(d.team) === teamId);
  // Rebuild the break forms only when the deadlocks change (keeps focus and choices).
  const key = JSON.stringify([deadlocks, deadlocks.map((d) => d.agent_ids.map((id) => (state.agents[id] || {}).name)), [...chosenVictims]]);
  if (key !== lastPanels) {
    lastPanels = key;
    deadlocksBox.replaceChildren(...deadlocks.map((deadlock) => deadlockPanel(state, deadlock)));
  }
  const sets = waitingSets(state, teamId);
  const setsKey = JSON.stringify(sets);
  if (setsKey !== lastSets) {
    lastSets = setsKey;
    lockSetsBox.replaceChildren(...lockSetList(sets));
  }
  const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("[data-agent-id]") : null;
  const focusedId = focused ? focused.dataset.agentId : null;
  clear(container);
  container.append(drawGraph(state, teamId));
  if (focusedId) container.querySelector(`[data-agent-id="${CSS.escape(focusedId)}"]`)?.focus();
}

bindFilters({ team: teamSelect, agent: agentInput });
redrawOnChange(render);
