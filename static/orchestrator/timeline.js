// Timeline: new events appear at the top as they happen, filtered like the page.
import { h } from "./dom.js";
import { board } from "./live.js";

const body = document.querySelector("#events-table tbody");
const follow = document.getElementById("follow");
const filter = JSON.parse(document.getElementById("live-filter").textContent);
const MAX_ROWS = 500;
const shown = new Set([...body.querySelectorAll("[data-event-id]")].map((row) => Number(row.dataset.eventId)));
const newest = shown.size ? Math.max(...shown) : 0;

function matches(event) {
  if (filter.kind && !event.kind.startsWith(filter.kind)) return false;
  if (filter.team && event.team !== filter.team) return false;
  if (filter.agent && event.agent !== filter.agent) return false;
  if (filter.actor && !event.actor.toLowerCase().includes(filter.actor.toLowerCase())) return false;
  return true;
}

function time(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return `${date.toISOString().slice(11, 23)}`;
}

function teamName(id) {
  const team = board.state && board.state.teams[id];
  return team ? team.name : `team ${id}`;
}

function row(event) {
  const payload = JSON.stringify(event.payload);
  return h("tr", { class: "fresh", dataset: { eventId: event.id } },
    h("td", {}, String(event.id)),
    h("td", {}, time(event.created_at)),
    h("td", {}, h("code", {}, event.kind)),
    h("td", {}, event.actor),
    h("td", {}, event.team === null ? "" : teamName(event.team)),
    h("td", {}, event.subject_type ? `${event.subject_type} #${event.subject_id}` : ""),
    h("td", { class: "value mono" }, payload.length > 200 ? `${payload.slice(0, 199)}…` : payload));
}

board.subscribe((live, change) => {
  if (change.type !== "delta" || !follow.checked) return;
  const fresh = change.events.filter((event) => event.id > newest && !shown.has(event.id) && matches(event));
  if (!fresh.length) return;
  body.querySelector("tr.placeholder")?.remove();
  for (const old of body.querySelectorAll("tr.fresh")) old.classList.remove("fresh");
  for (const event of fresh) {
    shown.add(event.id);
    body.prepend(row(event));
  }
  while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
});
