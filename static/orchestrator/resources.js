// Resources and locks: value, version, fence, holders with a live lease countdown, the
// queue of waiters, and force release.
import { actionForm, canOperate } from "./actions.js";
import { h } from "./dom.js";
import { byName, seconds } from "./format.js";
import { board, redrawOnChange } from "./live.js";
import { waiterSetNote } from "./locksets.js";

const body = document.querySelector("#resources-table tbody");
const filterInput = document.getElementById("resource-filter");
const onlyContested = document.getElementById("only-contested");
const rowCache = new Map();

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

function resourceRow(resource, teams) {
  const team = teams[resource.team];
  return h("tr", { dataset: { resourceId: resource.id, resourceName: resource.name } },
    h("td", {}, resource.name, resource.requires_approval ? h("span", { class: "chip", title: "every write needs an operator's approval" }, "approval") : null),
    h("td", {}, team ? team.name : "all teams"),
    h("td", { class: "value mono" }, resource.value),
    h("td", { class: "num" }, String(resource.version)),
    h("td", { class: "num" }, String(resource.fence)),
    h("td", { class: "holders" }, resource.holders.length ? resource.holders.map((holder) => holderLine(resource, holder)) : h("span", { class: "muted" }, "free")),
    h("td", { class: "queue" }, resource.waiters.map((waiter, i) => waiterChip(waiter, i))));
}

function waiterChip(waiter, i) {
  const set = waiter.lock_set;
  const title = `${waiter.mode}, waiting since ${waiter.requested_at}`;
  if (!set) return h("span", { class: "chip wait", title }, `${i + 1}. ${waiter.agent_name}`);
  return h("span", {
    class: "chip wait in-set",
    title: `${title}, for lock set #${set.id} of ${set.size}: ${set.resources.join(", ")}`,
    dataset: { lockSet: set.id },
  }, `${i + 1}. ${waiter.agent_name}`, h("span", { class: "set-note" }, waiterSetNote(set)));
}

function render() {
  const state = board.state;
  if (!state) return;
  const needle = (filterInput.value || "").toLowerCase();
  const contested = onlyContested.checked;
  const resources = Object.values(state.resources).sort(byName).filter((resource) => {
    if (contested && !resource.holders.length && !resource.waiters.length) return false;
    if (!needle) return true;
    const team = state.teams[resource.team];
    const names = [resource.name, team ? team.name : "", ...resource.holders.map((x) => x.agent_name)];
    return names.join(" ").toLowerCase().includes(needle);
  });
  const rows = resources.map((resource) => {
    const key = JSON.stringify([resource, (state.teams[resource.team] || {}).name]);
    const cached = rowCache.get(resource.id);
    if (cached && cached.key === key) return cached.row;
    const row = resourceRow(resource, state.teams);
    rowCache.set(resource.id, { key, row });
    return row;
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No resource matches.")));
  const current = [...body.children];
  if (current.length !== rows.length || current.some((row, i) => row !== rows[i])) body.replaceChildren(...rows);
  tick();
}

function tick() {
  const now = board.now();
  for (const node of body.querySelectorAll("[data-expires]")) {
    const left = Date.parse(node.dataset.expires) - now;
    node.textContent = left > 0 ? seconds(left) : "expired";
    node.classList.toggle("low", left < 5000);
  }
}

redrawOnChange(render);
filterInput.addEventListener("input", render);
onlyContested.addEventListener("change", render);
setInterval(tick, 250);
