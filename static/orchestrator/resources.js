// Resources and locks: value, version, fence, holders with a live lease countdown, the
// queue of waiters, and force release. Plain names are one flat group; path resources
// (core/paths.py) are drawn as one tree per team (pathtree.js), where a held folder
// marks the subtree it covers and a waiter kept out by a folder above names it.
// The rows come a page at a time, filtered by the server (live.js views), with the
// folders above the page's paths.
import { actionForm, canOperate } from "./actions.js";
import { h } from "./dom.js";
import { byName, seconds } from "./format.js";
import { board, redrawOnChange } from "./live.js";
import { bindFilters, drawPager, teamOptions } from "./paging.js";
import { waiterSetNote } from "./locksets.js";
import { belowText, blockerText, coverText, isPath, pathForest, visibleNodes } from "./pathtree.js";

const COLUMNS = 7;
// A team's tree with more nodes than this opens only the folders with something held
// or waited for under them; a smaller one opens everything. A folder the operator
// opened or closed stays so.
const SMALL_TREE = 100;
const body = document.querySelector("#resources-table tbody");
const filterInput = document.getElementById("resource-filter");
const onlyContested = document.getElementById("only-contested");
const teamFilter = document.getElementById("resource-team-filter");
const pagerBox = document.getElementById("resources-pager");
const expandAll = document.getElementById("expand-all");
const collapseAll = document.getElementById("collapse-all");
const rowCache = new Map(); // resource id or tree node key -> {key, row}
const chosen = new Map(); // tree node key -> open (true) or closed (false), as the operator chose
let lastTrees = [];

function countdown(expiresAt) {
  return h("span", { class: "countdown", dataset: { expires: expiresAt } }, "");
}

function holderLine(resource, holder) {
  return h("div", { class: "holder", dataset: { lockId: holder.lock_id } },
    h("span", { class: "chip hold" }, holder.agent_name),
    h("span", { class: "muted" }, `${holder.mode}, fence ${holder.fence}${holder.lock_set ? `, in lock set #${holder.lock_set}` : ""}, lease `),
    countdown(holder.expires_at),
    canOperate
      ? actionForm(`/actions/locks/${holder.lock_id}/release`, { reason: "" }, "Force release", {
          className: "small danger",
          confirm: `Force release ${holder.agent_name}'s lock on ${resource.name}? Its fencing token stops working.`,
          title: `Force release ${holder.agent_name}'s lock on ${resource.name}`,
        })
      : null);
}

function approvalChip(resource) {
  return resource.requires_approval ? h("span", { class: "chip", title: "every write needs an operator's approval" }, "approval") : null;
}

function holdersCell(resource, covered = []) {
  const lines = resource ? resource.holders.map((holder) => holderLine(resource, holder)) : [];
  if (covered.length) lines.push(h("div", { class: "cover" }, coverText(covered)));
  if (!lines.length) return h("td", { class: "holders" }, resource ? h("span", { class: "muted" }, "free") : null);
  return h("td", { class: "holders" }, lines);
}

function queueCell(resource, blockers = {}) {
  return h("td", { class: "queue" }, resource ? resource.waiters.map((waiter, i) => waiterChip(waiter, i, blockers[waiter.request_id])) : null);
}

function resourceRow(resource, teams) {
  const team = teams[resource.team];
  return h("tr", { dataset: { resourceId: resource.id, resourceName: resource.name } },
    h("td", {}, resource.name, approvalChip(resource)),
    h("td", {}, team ? team.name : "all teams"),
    h("td", { class: "value mono" }, resource.value),
    h("td", { class: "num" }, String(resource.version)),
    h("td", { class: "num" }, String(resource.fence)),
    holdersCell(resource),
    queueCell(resource));
}

function waiterChip(waiter, i, blockers) {
  const set = waiter.lock_set;
  const title = `${waiter.mode}, waiting since ${waiter.requested_at}`;
  const blocked = blockers ? h("span", { class: "blocker" }, ` · ${blockerText(blockers)}`) : null;
  if (!set) return h("span", { class: `chip wait${blockers ? " blocked" : ""}`, title }, `${i + 1}. ${waiter.agent_name}`, blocked);
  return h("span", {
    class: `chip wait in-set${blockers ? " blocked" : ""}`,
    title: `${title}, for lock set #${set.id} of ${set.size}: ${set.resources.join(", ")}`,
    dataset: { lockSet: set.id },
  }, `${i + 1}. ${waiter.agent_name}`, h("span", { class: "set-note" }, waiterSetNote(set)), blocked);
}

// --- the trees of paths ----------------------------------------------------------------

function isOpen(tree, node) {
  if (chosen.has(node.key)) return chosen.get(node.key);
  return tree.size <= SMALL_TREE || node.below.held > 0 || node.below.waited > 0;
}

function toggle(node, open) {
  chosen.set(node.key, open);
  render();
  // The row was drawn anew: keep the keyboard where it was.
  body.querySelector(`tr[data-node-key="${CSS.escape(node.key)}"] button.twisty`)?.focus();
}

function twisty(node, open) {
  if (!node.children.length) return h("span", { class: "twisty-space" });
  return h("button", {
    type: "button",
    class: "twisty",
    "aria-expanded": open ? "true" : "false",
    "aria-label": `${open ? "Collapse" : "Expand"} ${node.path}`,
    title: `${open ? "Collapse" : "Expand"} ${node.path}`,
    on: { click: () => toggle(node, !open) },
  }, open ? "▾" : "▸");
}

function timelineLink(node, teamName) {
  const name = teamName ? `${teamName}::${node.path}` : node.path;
  return h("a", {
    class: "path-label",
    href: `/timeline/?resource=${encodeURIComponent(name)}#lock-timeline`,
    title: `${node.path}${node.resource ? "" : " (no resource of its own: the folder of the paths under it)"}: its lock timeline, with the folders above it${node.folder ? " and the paths under it" : ""}`,
  }, node.label);
}

function nodeRow(node, open, teamName) {
  const resource = node.resource;
  const classes = ["tree-node", node.folder ? "folder" : "file"];
  if (!resource) classes.push("implied");
  if (node.covered.length) classes.push("covered");
  const covering = node.folder && resource && resource.holders.length > 0 && node.children.length > 0;
  if (covering) classes.push("covering");
  const dataset = { nodeKey: node.key, path: node.path, depth: node.depth };
  if (resource) Object.assign(dataset, { resourceId: resource.id, resourceName: resource.name });
  return h("tr", { class: classes.join(" "), dataset },
    h("td", { class: "path", style: { "--depth": node.depth } },
      twisty(node, open),
      timelineLink(node, teamName),
      resource ? approvalChip(resource) : null,
      node.folder && node.children.length ? h("span", { class: "below muted" }, ` · ${covering ? "covers " : ""}${belowText(node.below)}${paged() ? " on this page" : ""}`) : null),
    h("td", { class: "muted" }, teamName || "all teams"),
    h("td", { class: "value mono" }, resource ? resource.value : ""),
    h("td", { class: "num" }, resource ? String(resource.version) : ""),
    h("td", { class: "num" }, resource ? String(resource.fence) : ""),
    holdersCell(resource, node.covered),
    queueCell(resource, node.blockers));
}

// Whether the rows are one page of several: a folder's counts are then those of the page.
function paged() {
  return Boolean(board.viewInfo && board.viewInfo.pages > 1);
}

function groupRow(key, ...content) {
  return h("tr", { class: "group", dataset: { group: key } }, h("th", { colspan: COLUMNS }, ...content));
}

function cached(key, data, build) {
  const cachedRow = rowCache.get(key);
  if (cachedRow && cachedRow.key === data) return cachedRow.row;
  const row = build();
  rowCache.set(key, { key: data, row });
  return row;
}

// What a tree row shows, for the cache: a row is drawn anew only when this changes.
function nodeKey(node, open, teamName) {
  return JSON.stringify([node.resource, node.covered, node.blockers, node.below, node.children.length, open, teamName, paged()]);
}

function treeRows(tree, state, matches) {
  const team = state.teams[tree.team];
  const teamName = team ? team.name : "";
  const nodes = visibleNodes(tree, { isOpen: (node) => isOpen(tree, node), matches });
  if (!nodes.length) return [];
  const paths = [...tree.nodes.values()].filter((node) => node.resource).length;
  const held = [...tree.nodes.values()].filter((node) => node.resource && node.resource.holders.length).length;
  const rows = [cached(`team:${tree.team}`, JSON.stringify([teamName, paths, held]), () =>
    groupRow(`team-${tree.team}`, `Paths of ${teamName || "all teams"}`, h("span", { class: "muted" }, ` · ${paths} path${paths === 1 ? "" : "s"}, ${held} held`)))];
  for (const node of nodes) {
    const open = isOpen(tree, node);
    rows.push(cached(node.key, nodeKey(node, open, teamName), () => nodeRow(node, open, teamName)));
  }
  return rows;
}

// --- the page -----------------------------------------------------------------------------

function render() {
  const state = board.state;
  if (!state) return;
  teamOptions(teamFilter, state.teams);
  // The server filtered and paged the rows; a search shows its hits' folders open.
  const needle = (filterInput.value || "").toLowerCase();
  const contested = onlyContested.checked;
  const wanted = (resource) => {
    if (contested && !resource.holders.length && !resource.waiters.length) return false;
    if (!needle) return true;
    const team = state.teams[resource.team];
    const names = [resource.name, team ? team.name : "", ...resource.holders.map((x) => x.agent_name)];
    return names.join(" ").toLowerCase().includes(needle);
  };
  const all = Object.values(state.resources);
  const plain = all.filter((resource) => !isPath(resource.name)).sort(byName);
  const rows = plain.map((resource) =>
    cached(resource.id, JSON.stringify([resource, (state.teams[resource.team] || {}).name]), () => resourceRow(resource, state.teams)));
  const trees = pathForest(all);
  lastTrees = trees;
  const filtering = needle || contested;
  const matches = filtering ? (node) => Boolean(node.resource) && wanted(node.resource) : null;
  const treeRowsAll = trees
    .sort((a, b) => byName({ name: (state.teams[a.team] || {}).name || "" }, { name: (state.teams[b.team] || {}).name || "" }))
    .flatMap((tree) => treeRows(tree, state, matches));
  if (treeRowsAll.length && rows.length) rows.unshift(cached("plain", "plain", () => groupRow("plain", "Named resources")));
  rows.push(...treeRowsAll);
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: COLUMNS, class: "empty" }, board.viewError ? `Filter refused: ${board.viewError}` : "No resource matches.")));
  const current = [...body.children];
  if (current.length !== rows.length || current.some((row, i) => row !== rows[i])) body.replaceChildren(...rows);
  drawPager(pagerBox, board.viewInfo, "resources");
  expandAll.hidden = collapseAll.hidden = !trees.length;
  tick();
}

function setAll(open) {
  for (const tree of lastTrees) for (const node of tree.nodes.values()) if (node.children.length) chosen.set(node.key, open);
  render();
}

function tick() {
  const now = board.now();
  for (const node of body.querySelectorAll("[data-expires]")) {
    const left = Date.parse(node.dataset.expires) - now;
    node.textContent = left > 0 ? seconds(left) : "expired";
    node.classList.toggle("low", left < 5000);
  }
}

bindFilters({ q: filterInput, team: teamFilter, contested: onlyContested });
redrawOnChange(render);
expandAll.addEventListener("click", () => setAll(true));
collapseAll.addEventListener("click", () => setAll(false));
setInterval(tick, 250);
