// Pages rendered by the server (conflicts, run detail): say when they went stale.
import { board } from "./live.js";

const banner = document.getElementById("live-banner");
const kinds = (banner?.dataset.kinds || "").split(",").filter(Boolean);
const run = banner?.dataset.run ? Number(banner.dataset.run) : null;
let missed = 0;

function concerns(event) {
  if (!kinds.some((kind) => event.kind.startsWith(kind))) return false;
  if (run === null) return true;
  const payload = event.payload || {};
  return payload.run === run || (event.subject_type === "run" && event.subject_id === run);
}

board.subscribe((live, change) => {
  if (!banner || change.type !== "delta") return;
  const count = change.events.filter(concerns).length;
  if (!count) return;
  missed += count;
  document.getElementById("live-banner-text").textContent =
    `${missed} ${banner.dataset.noun || "update"}${missed === 1 ? "" : "s"} since this page was loaded.`;
  banner.hidden = false;
});
