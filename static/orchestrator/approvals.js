// Approvals: a decision taken elsewhere (another operator, a standing rule, a deadline)
// shows at once on its card. A vote under the two-person rule updates the card's tally
// and an escalation its deadline: neither decides it. Deadlines count down on the
// server's clock. New approvals and standing rules are announced, revoked rules struck
// out. Agent and operator text goes in with textContent only.
import { h } from "./dom.js";
import { seconds } from "./format.js";
import { board } from "./live.js";

const DECIDED = new Set(["approval.approved", "approval.rejected", "approval.failed"]);
const banner = document.getElementById("live-banner");
const root = document.getElementById("approvals");
const arrived = new Set(); // approvals requested since the page was rendered, still pending
let newRules = 0;

// The server's clock minus ours (ms): from the page's render (data-server-now, the
// database clock the deadlines run on) until the live feed's frames, which carry the
// same clock, keep it current. A browser whose clock is off still counts down right.
const rendered = Date.parse(root ? root.dataset.serverNow : "");
let offset = Number.isNaN(rendered) ? 0 : rendered - Date.now();

function serverNow() {
  return Date.now() + offset;
}

function utcTime(iso) {
  return `${new Date(iso).toISOString().slice(11, 19)} UTC`;
}

function tick() {
  const now = serverNow();
  for (const node of document.querySelectorAll('[data-role="time-left"][data-deadline]')) {
    if (node.closest(".approval.decided")) continue;
    const left = Date.parse(node.dataset.deadline) - now;
    node.textContent = Math.round(left / 1000) > 0 ? `${seconds(left)} left` : "deadline passed";
    node.classList.toggle("due", left <= 60_000);
  }
}

function cardOf(event) {
  return document.querySelector(`.approval[data-approval-id="${Number(event.subject_id)}"]`);
}

/** Who or what took a decision: an operator, a standing rule, the policy's deadline. */
function decidedBy(event) {
  const payload = event.payload || {};
  if (event.actor.startsWith("user:")) return event.actor.slice("user:".length);
  if (payload.rule) return `rule #${payload.rule}`;
  if (payload.by_policy) return `policy: ${payload.by_policy}`;
  return event.actor;
}

function decided(card, event) {
  const status = event.kind.slice("approval.".length);
  card.classList.add("decided");
  const chip = card.querySelector('[data-role="status"]');
  chip.textContent = `${status} by ${decidedBy(event)}`;
  chip.className = `status status-${status}`;
  for (const control of card.querySelectorAll("button, textarea, input, select")) control.disabled = true;
}

function voted(card, event) {
  const payload = event.payload;
  const tally = card.querySelector('[data-role="tally"]');
  if (tally) tally.textContent = `${payload.approvals} of ${payload.required} approvals`;
  const list = card.querySelector('[data-role="voters"]');
  if (!list || payload.decision !== "approve") return;
  const name = event.actor.replace(/^user:/, "");
  for (const item of list.querySelectorAll("li")) if (item.dataset.voter === name) item.remove();
  list.append(
    h("li", { dataset: { voter: name }, class: payload.counted ? null : "not-counted" },
      "approved by ", h("strong", {}, name), ` at ${utcTime(event.created_at).slice(0, 8)}`,
      payload.counted ? "" : " (does not count: started the run that made this write)"),
  );
}

function escalated(card, event) {
  const payload = event.payload;
  const left = card.querySelector('[data-role="time-left"]');
  if (left) left.dataset.deadline = payload.deadline_at;
  const at = card.querySelector('[data-role="deadline-at"]');
  if (at) {
    at.dateTime = payload.deadline_at;
    at.textContent = utcTime(payload.deadline_at);
  }
  // An escalation extends the deadline once: when the extension passes, it rejects.
  const outcome = card.querySelector('[data-role="outcome"]');
  if (outcome) outcome.textContent = "rejected (fail closed)";
  const chip = card.querySelector('[data-role="escalated"]');
  if (chip) {
    chip.textContent = `escalated to ${payload.group}`;
    chip.hidden = false;
  }
}

function ruleRevoked(event) {
  const row = document.querySelector(`#rules-table tr[data-rule-id="${Number(event.subject_id)}"]`);
  if (!row || row.classList.contains("revoked")) return;
  row.classList.add("revoked");
  for (const button of row.querySelectorAll("button")) {
    button.disabled = true;
    button.textContent = "Revoked";
  }
}

function announce() {
  if (!banner || (!arrived.size && !newRules)) return;
  const parts = [];
  if (arrived.size) parts.push(`${arrived.size} new approval${arrived.size === 1 ? "" : "s"} waiting.`);
  if (newRules) parts.push(`${newRules} new standing rule${newRules === 1 ? "" : "s"}.`);
  document.getElementById("live-banner-text").textContent = parts.join(" ");
  banner.hidden = false;
}

function apply(event) {
  if (event.kind === "rule.created") {
    const shown = document.querySelector(`#rules-table tr[data-rule-id="${Number(event.subject_id)}"]`);
    if (!shown) newRules += 1;
    return;
  }
  if (event.kind === "rule.revoked") return ruleRevoked(event);
  if (!event.kind.startsWith("approval.")) return;
  const card = cardOf(event);
  const id = Number(event.subject_id);
  if (event.kind === "approval.requested") {
    if (!card) arrived.add(id);
    return;
  }
  if (DECIDED.has(event.kind) && !card) {
    arrived.delete(id); // decided at once (a standing rule) or before anyone looked
    return;
  }
  if (!card || card.classList.contains("decided")) return;
  if (event.kind === "approval.voted") voted(card, event);
  else if (event.kind === "approval.escalated") escalated(card, event);
  else if (DECIDED.has(event.kind)) decided(card, event);
}

board.subscribe((live, change) => {
  offset = live.clockOffset; // every frame carries the server's clock
  if (change.type === "delta") {
    for (const event of change.events) apply(event);
    announce();
  }
  tick();
});

tick();
setInterval(tick, 1000);
