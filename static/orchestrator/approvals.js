// Approvals: a decision taken elsewhere (another operator, the system) shows at once on
// its card, and new approvals are announced.
import { board } from "./live.js";

const banner = document.getElementById("live-banner");
let arrived = 0;

board.subscribe((live, change) => {
  if (change.type !== "delta") return;
  for (const event of change.events) {
    if (!event.kind.startsWith("approval.")) continue;
    const card = document.querySelector(`[data-approval-id="${Number(event.subject_id)}"]`);
    if (event.kind === "approval.requested") {
      if (!card) arrived += 1;
      continue;
    }
    if (!card || card.classList.contains("decided")) continue;
    const status = event.kind.slice("approval.".length);
    card.classList.add("decided");
    const chip = card.querySelector('[data-role="status"]');
    chip.textContent = `${status} by ${event.actor.replace(/^user:/, "")}`;
    chip.className = `status status-${status}`;
    for (const button of card.querySelectorAll("button, textarea, input")) button.disabled = true;
  }
  if (arrived && banner) {
    document.getElementById("live-banner-text").textContent =
      `${arrived} new approval${arrived === 1 ? "" : "s"} waiting.`;
    banner.hidden = false;
  }
});
