// The live board: one WebSocket per page, a snapshot then deltas (see
// orchestrator/dashboard/consumers.py for the protocol).
//
// The board is correct or it says so: every delta names the event id it
// follows ("since"); if that is not the last id we hold, a frame was missed and
// we ask the server to replay the log from our last id. After a reconnect we
// pass ?last_id=N, and the server replays (or sends a fresh snapshot if we are
// too far behind).

const COLLECTIONS = ["teams", "runs", "agents", "resources"];
const REPLACED = ["system", "counts", "deadlocks"];

export class LiveBoard {
  constructor(path) {
    this.path = path;
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
    const query = this.lastId === null ? "" : `?last_id=${encodeURIComponent(this.lastId)}`;
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
      applyPatch(this.state, frame.state || {});
      this.lastId = frame.last_id;
      this.notify({ type: "delta", events: frame.events || [] });
    } else if (frame.type === "error") {
      console.warn("live feed:", frame.error, frame.detail);
    }
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
  board.subscribe(() => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      render();
    });
  });
}

// One board per page, shared by every module that imports it.
export const board = new LiveBoard(document.body.dataset.wsPath || "/ws/events/");
