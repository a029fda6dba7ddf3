// A waiting lock set (core/lock_sets.py) drawn as ONE wait: every resource of the set
// in the order it takes them (held green, queued amber, not reached yet grey), and a
// line saying what it holds and where it is queued. The board's shape is in
// orchestrator/dashboard/selectors/board.py. Names are agent text: text nodes only.
import { h } from "./dom.js";

const SHOWN = 12; // chips drawn; the title and the summary name the rest
const CHIP = { held: "chip hold", queued: "chip wait", later: "chip later" };
const STATE = { held: "held", queued: "queued here", later: "not reached yet" };

function names(list) {
  return list.map((r) => r.name).join(", ");
}

/** "holds a, b · queued at c" (what the set has, and where it waits now). */
export function lockSetState(wait) {
  const held = wait.resources.filter((r) => r.state === "held");
  const holds = !held.length ? "holds none yet"
    : held.length <= 3 ? `holds ${names(held)}` : `holds ${held.length} of ${wait.resources.length}`;
  const queued = wait.resource_name === null ? "taking the next" : `queued at ${wait.resource_name}`;
  return `${holds} · ${queued}`;
}

/** One line of text: "lock set of 3: a, b, c — holds a · queued at b". */
export function lockSetText(wait) {
  return `lock set of ${wait.resources.length}: ${names(wait.resources)} — ${lockSetState(wait)}`;
}

/** The set as one block of chips and its state line. */
export function lockSetWait(wait) {
  const more = wait.resources.length - SHOWN;
  return h("div", {
    class: "lockset",
    title: `${wait.mode} ${lockSetText(wait)} (lock set #${wait.lock_set})`,
    dataset: { lockSet: wait.lock_set },
  },
    h("span", { class: "lockset-label" }, `lock set of ${wait.resources.length}:`), " ",
    wait.resources.slice(0, SHOWN).map((r) =>
      h("span", { class: CHIP[r.state] || "chip", title: STATE[r.state] || r.state, dataset: { state: r.state } }, r.name)),
    more > 0 ? h("span", { class: "muted" }, `+${more} more`) : null,
    h("div", { class: "lockset-state" }, lockSetState(wait)));
}

/** A resource's waiter queued for a set: " · lock set of 3: a, b, c" (first names only). */
export function waiterSetNote(lockSet) {
  const shown = lockSet.resources.slice(0, 6).join(", ");
  return ` · lock set of ${lockSet.size}: ${shown}${lockSet.size > 6 ? ", …" : ""}`;
}
