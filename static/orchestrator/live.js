// The live board: one WebSocket per page, a snapshot then deltas (see
// orchestrator/dashboard/consumers.py for the protocol).
//
// The board is correct or it says so: every delta names the event id it
// follows ("since"); if that is not the last id we hold, a frame was missed and
// we ask the server to replay the log from our last id. After a reconnect we
// pass ?last_id=N, and the server replays (or sends a fresh snapshot if we are
// too far behind).
//
// A page that shows part of the board (Overview, Resources, Graph: a page of rows, a
// filter) subscribes with a view (orchestrator/dashboard/selectors/views.py): its
// snapshot carries only that part, and the ids it shows. Deltas are the board's: we
// keep the rows of the ids shown, drop the others, and when a delta touched rows we
// do not show (a row that may now enter the page, counts that moved) we ask for the
// view again, at most once every REFRESH_MS. A delta that touched nothing shown does
// not redraw the page.

const COLLECTIONS = ["teams", "runs", "agents", "resources"];
const REPLACED = ["system", "counts", "deadlocks"];
const KEPT = ["agents", "resources"]; // the collections a view pages or filters
// The fields of a view (forms.BoardViewForm) a page's URL carries.
export const VIEW_FIELDS = ["q", "team", "agent", "status", "contested", "page", "size"];
const REFRESH_MS = 3000;

export class LiveBoard {
  constructor(path, view = null) {
    this.path = path;
    this.view = view; // {view: name, ...fields}, or null: the whole board
    this.viewInfo = null; // what the server chose: {total, page, pages, size, ids, ...}
    this.viewError = null;
    this.kept = null; // collection -> Set of the ids shown
    this.refreshTimer = null;
    this.lastRefresh = 0;
    this.state = null;
    this.lastId = null;
    this.clockOffset = 0; // server clock minus ours, in ms
    this.listeners = new Set();
    this.statusListeners = new Set();
    this.retry = 0;
    this.awaitingReplay = false;
    this.socket = null;
  }

  /** fn(board, {type, events}) after each snapshot or delta; called at once if we have one. */
  subscribe(fn) {
    this.listeners.add(fn);
    if (this.state) fn(this, { type: "snapshot", events: [] });
    return () => this.listeners.delete(fn);
  }

  onStatus(fn) {
    this.statusListeners.add(fn);
  }

  now() {
    return Date.now() + this.clockOffset;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(this.view || {})) if (value !== "" && value !== null) params.set(key, value);
    if (this.lastId !== null) params.set("last_id", this.lastId);
    const query = params.toString() ? `?${params}` : "";
    const socket = new WebSocket(`${scheme}//${location.host}${this.path}${query}`);
    this.socket = socket;
    this.setStatus("connecting");
    socket.addEventListener("open", () => {
      this.retry = 0;
      this.setStatus("live");
    });
    socket.addEventListener("message", (message) => this.receive(message.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      if (event.code === 4401 || event.code === 4403) {
        this.setStatus("refused");
        return; // signed out or not allowed: reconnecting would not help
      }
      this.setStatus("down");
      const delay = Math.min(10000, 500 * 2 ** this.retry++) * (0.75 + Math.random() / 2);
      setTimeout(() => this.connect(), delay);
    });
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.server_time) this.clockOffset = Date.parse(frame.server_time) - Date.now();
    if (frame.type === "snapshot") {
      this.state = frame.state;
      this.lastId = frame.last_id;
      this.awaitingReplay = false;
      this.viewInfo = frame.view || null;
      this.viewError = null;
      this.kept = frame.view ? Object.fromEntries(KEPT.map((name) => [name, new Set((frame.view.ids[name] || []).map(String))])) : null;
      this.deadlockIds = new Set(Object.keys(frame.state.deadlocks || {}));
      // Every open deadlock (the view draws those of its filter): a delta's news are others.
      this.openDeadlocks = new Set(((frame.view || {}).deadlocks_open || Object.keys(frame.state.deadlocks || {})).map(String));
      this.notify({ type: "snapshot", events: [] });
    } else if (frame.type === "delta") {
      if (this.state === null || frame.since !== this.lastId) {
        // A gap: ask once for everything after what we hold, ignore frames until then.
        if (!this.awaitingReplay) {
          this.awaitingReplay = true;
          if (this.lastId === null) this.send({ type: "snapshot" });
          else this.send({ type: "resume", last_id: this.lastId });
        }
        return;
      }
      this.awaitingReplay = false;
      const patch = frame.state || {};
      const shown = this.kept ? this.keepShown(patch) : true;
      applyPatch(this.state, patch);
      this.lastId = frame.last_id;
      this.notify({ type: "delta", events: frame.events || [], shown });
    } else if (frame.type === "error") {
      console.warn("live feed:", frame.error, frame.detail);
      if (frame.error === "invalid_view") {
        this.viewError = frame.detail;
        this.notify({ type: "error", events: [] });
      }
    }
  }

  /** Cut ``patch`` to the rows the view shows; whether it changes anything shown. A row
   *  not shown asks for the view again (soon): it may belong on the page now. */
  keepShown(patch) {
    let shown = ["system", "counts", "teams", "runs"].some((key) => key in patch);
    let outside = false;
    for (const name of KEPT) {
      const rows = patch[name] || {};
      for (const id of Object.keys(rows)) {
        if (this.kept[name].has(id)) {
          shown = true;
          if (name === "agents") this.recount(this.state.agents[id], rows[id]);
        } else {
          delete rows[id];
          outside = true;
        }
      }
      const removed = (patch.removed || {})[name] || [];
      if (removed.some((id) => this.kept[name].has(id))) shown = outside = true;
    }
    if ("deadlocks" in patch && this.view.view !== "graph") {
      delete patch.deadlocks; // only the Graph shows them
    } else if ("deadlocks" in patch) {
      const ids = Object.keys(patch.deadlocks);
      const open = this.openDeadlocks;
      if (ids.length !== open.size || ids.some((id) => !open.has(id))) outside = shown = true;
      this.openDeadlocks = new Set(ids);
      const known = this.deadlockIds;
      // Until the view comes again, only the deadlocks it chose (their rows are here).
      patch.deadlocks = Object.fromEntries(Object.entries(patch.deadlocks).filter(([id]) => known.has(id)));
    }
    if (outside && this.view && this.view.view !== "nav") this.refreshSoon();
    return shown;
  }

  /** Keep the view's status summary (Overview's cards) right for the agents it shows. */
  recount(before, after) {
    const summary = this.state.summary;
    if (!summary || !before || before.status === after.status) return;
    for (const tally of [summary.statuses, summary.teams[String(before.team)] || {}]) {
      tally[before.status] = Math.max(0, (tally[before.status] || 0) - 1);
      tally[after.status] = (tally[after.status] || 0) + 1;
    }
  }

  refreshSoon() {
    if (this.refreshTimer !== null) return;
    const wait = Math.max(0, this.lastRefresh + REFRESH_MS - Date.now());
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.lastRefresh = Date.now();
      this.send({ type: "snapshot", view: this.view });
    }, wait);
  }

  /** Show another part of the board: new filters or another page (fields of VIEW_FIELDS). */
  setView(fields) {
    this.view = { view: this.view.view, ...fields };
    this.lastRefresh = Date.now();
    this.send({ type: "snapshot", view: this.view });
  }

  notify(change) {
    for (const fn of this.listeners) {
      try {
        fn(this, change);
      } catch (error) {
        console.error(error);
      }
    }
  }

  setStatus(status) {
    for (const fn of this.statusListeners) fn(status);
  }
}

export function applyPatch(state, patch) {
  for (const key of REPLACED) if (key in patch) state[key] = patch[key];
  for (const name of COLLECTIONS) {
    state[name] = Object.assign(state[name] || {}, patch[name] || {});
    for (const id of (patch.removed || {})[name] || []) delete state[name][id];
  }
}

/** Call ``render`` after the board changes, at most once per animation frame. */
export function redrawOnChange(render) {
  let scheduled = false;
  board.subscribe((live, change) => {
    if (scheduled || change.shown === false) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      render();
    });
  });
}

// One board per page, shared by every module that imports it.
// A page that shows part of the board names its view (data-ws-view); its URL's query
// carries the view's fields, so that a filtered page or a page of rows is a bookmark.
export function viewFromUrl() {
  const params = new URLSearchParams(location.search);
  const fields = {};
  for (const key of VIEW_FIELDS) if (params.get(key)) fields[key] = params.get(key);
  return fields;
}

const viewName = document.body.dataset.wsView;
export const board = new LiveBoard(
  document.body.dataset.wsPath || "/ws/events/",
  viewName ? { view: viewName, ...(viewName === "nav" ? {} : viewFromUrl()) } : null,
);
