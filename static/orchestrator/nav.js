// Every page: the live counts in the navigation bar and the connection status.
import { board } from "./live.js";
import "./actions.js";

const status = document.getElementById("live-status");
const LABELS = { connecting: "connecting…", live: "live", down: "reconnecting…", refused: "signed out" };

board.onStatus((state) => {
  if (!status) return;
  status.textContent = LABELS[state] || state;
  status.className = `live-status ${state === "live" ? "live" : state === "connecting" ? "" : "down"}`;
});

board.subscribe((live) => {
  const counts = live.state.counts || {};
  for (const node of document.querySelectorAll("[data-count]")) {
    const value = counts[node.dataset.count];
    if (value === undefined) continue;
    node.textContent = String(value);
    node.classList.toggle(node.dataset.count === "approvals" ? "ask" : "hot", value > 0);
  }
  document.body.dataset.lastEventId = String(live.lastId);
});

board.connect();
