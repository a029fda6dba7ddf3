// Overview: teams, runs with progress, agents with status, the emergency stop.
// The agents come a page at a time, filtered by the server (live.js views): the cards
// and the teams' tallies come from the view's summary of every agent's status.
import { actionForm, canOperate } from "./actions.js";
import { h } from "./dom.js";
import { byName, statusLabel } from "./format.js";
import { board, redrawOnChange } from "./live.js";
import { bindFilters, drawPager, teamOptions } from "./paging.js";
import { lockSetWait } from "./locksets.js";

const agentsBody = document.querySelector("#agents-table tbody");
const runsBody = document.querySelector("#runs-table tbody");
const teamsBody = document.querySelector("#teams-table tbody");
const filterInput = document.getElementById("agent-filter");
const statusFilter = document.getElementById("agent-status-filter");
const teamFilter = document.getElementById("agent-team-filter");
const agentsPager = document.getElementById("agents-pager");
const rowCache = new Map(); // agent id -> {key, row}

function statusChip(status) {
  return h("span", { class: `status status-${status}` }, statusLabel(status));
}

function pauseForm(url, paused, what) {
  return actionForm(url, { paused: paused ? "0" : "1" }, paused ? "Resume" : "Pause", {
    className: paused ? "small resume" : "small",
    title: `${paused ? "Resume" : "Pause"} ${what}`,
  });
}

function agentRow(agent, teams) {
  const team = teams[agent.team];
  return h(
    "tr",
    { dataset: { agentId: agent.id } },
    h("td", {}, agent.name),
    h("td", {}, team ? team.name : ""),
    h("td", {}, statusChip(agent.status)),
    h("td", { class: "holds" }, agent.holds.map((hold) => h("span", {
      class: "chip hold",
      title: `${hold.mode}, fence ${hold.fence}${hold.lock_set ? `, in lock set #${hold.lock_set}` : ""}`,
      dataset: hold.lock_set ? { lockSet: hold.lock_set } : {},
    }, hold.resource_name))),
    h("td", { class: "waits" }, agent.waits.map((wait) => (wait.lock_set
      ? lockSetWait(wait)
      : h("span", { class: "chip wait", title: wait.mode }, wait.resource_name)))),
    h("td", {}, canOperate ? pauseForm(`/actions/agents/${agent.id}/pause`, agent.paused, `agent ${agent.name}`) : null),
  );
}

function renderAgents(state) {
  // The server filtered and paged them (a row that no longer matches stays until the
  // view is read again, which the next change outside the page asks for).
  const agents = Object.values(state.agents).sort(byName);
  const rows = agents.map((agent) => {
    // Rebuild a row only when its data changed, so focus and hover stay put.
    const team = state.teams[agent.team];
    const key = JSON.stringify([agent, team ? team.name : ""]);
    const cached = rowCache.get(agent.id);
    if (cached && cached.key === key) return cached.row;
    const row = agentRow(agent, state.teams);
    if (cached && cached.row.contains(document.activeElement)) {
      // Keep keyboard focus on the same control after a re-render.
      const index = [...cached.row.querySelectorAll("button")].indexOf(document.activeElement);
      queueMicrotask(() => row.querySelectorAll("button")[index]?.focus());
    }
    rowCache.set(agent.id, { key, row });
    return row;
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 6, class: "empty" }, board.viewError ? `Filter refused: ${board.viewError}` : "No agent matches.")));
  const current = [...agentsBody.children];
  if (current.length !== rows.length || current.some((row, i) => row !== rows[i])) agentsBody.replaceChildren(...rows);
  drawPager(agentsPager, board.viewInfo, "agents");
}

function progress(run) {
  const share = run.agents ? run.agents_finished / run.agents : 0;
  return h("div", { class: "progress", title: `${run.agents_finished} of ${run.agents} agents finished` },
    h("span", { style: { width: `${Math.round(share * 100)}%` } }));
}

function renderRuns(state) {
  const runs = Object.values(state.runs).sort((a, b) => b.id - a.id);
  const rows = runs.map((run) => {
    const team = state.teams[run.team];
    const status = run.paused && run.status === "running" ? "paused" : run.status;
    const actions = [];
    if (canOperate && run.status === "running") {
      actions.push(pauseForm(`/actions/runs/${run.id}/pause`, run.paused, `run #${run.id}`));
      actions.push(" ", actionForm(`/actions/runs/${run.id}/cancel`, {}, "Cancel", {
        className: "small danger",
        confirm: `Cancel run #${run.id}? Its agents stop and release their locks.`,
      }));
    }
    return h("tr", { dataset: { runId: run.id } },
      h("td", {}, h("a", { href: `/runs/${run.id}/` }, `#${run.id}`)),
      h("td", {}, team ? team.name : ""),
      h("td", { class: "value" }, run.goal),
      h("td", {}, statusChip(status)),
      h("td", {}, progress(run)),
      h("td", { class: "num" }, String(run.steps_done)),
      h("td", { class: "num" }, `${run.agents_finished} / ${run.agents}`),
      h("td", {}, actions));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No run yet.")));
  runsBody.replaceChildren(...rows);
}

function renderTeams(state) {
  const tallies = (state.summary || {}).teams || {};
  const teams = Object.values(state.teams).sort(byName);
  teamOptions(teamFilter, state.teams);
  const rows = teams.map((team) => {
    const tally = tallies[String(team.id)] || {};
    const members = Object.values(tally).reduce((sum, n) => sum + n, 0);
    return h("tr", { dataset: { teamId: team.id } },
      h("td", {}, team.name),
      h("td", {}, Object.entries(tally).filter(([, n]) => n > 0).map(([status, n]) => h("span", { class: `status status-${status}`, title: statusLabel(status) }, `${n} ${statusLabel(status)}`)), members ? null : "none"),
      h("td", {}, team.deadlock_policy.replaceAll("_", " ")),
      h("td", {}, team.conflict_policy.replaceAll("_", " ")),
      h("td", {}, statusChip(team.paused ? "paused" : "running")),
      h("td", {}, canOperate ? [
        pauseForm(`/actions/teams/${team.id}/pause`, team.paused, `team ${team.name}`), " ",
        h("a", { class: "button small", href: `/runs/new/?team=${encodeURIComponent(team.id)}`, "aria-label": `New run of team ${team.name}` }, "New run"),
      ] : null));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No team yet.")));
  teamsBody.replaceChildren(...rows);
}

function renderSystem(state) {
  const paused = state.system.paused;
  document.getElementById("system-bar").classList.toggle("paused", paused);
  document.getElementById("system-status").textContent = paused
    ? "Everything is paused: no agent starts a new step."
    : "Agents are running under the protocol.";
  const form = document.getElementById("pause-everything-form");
  if (form) {
    form.querySelector('input[name="paused"]').value = paused ? "0" : "1";
    const button = document.getElementById("pause-everything");
    button.textContent = paused ? "Resume everything" : "Pause everything";
    button.className = paused ? "resume" : "danger";
  }
}

function renderCards(state) {
  const tally = { running: 0, waiting_lock: 0, waiting_human: 0, paused: 0, failed: 0 };
  for (const [status, n] of Object.entries((state.summary || {}).statuses || {})) if (status in tally) tally[status] = n;
  Object.assign(tally, state.counts);
  for (const node of document.querySelectorAll("[data-card]")) node.textContent = String(tally[node.dataset.card] ?? 0);
}

function render() {
  const state = board.state;
  if (!state) return;
  renderSystem(state);
  renderCards(state);
  renderRuns(state);
  renderTeams(state);
  renderAgents(state);
}

bindFilters({ q: filterInput, team: teamFilter, status: statusFilter });
redrawOnChange(render);
