// Labels and time formatting shared by the pages.

export const STATUS_LABELS = {
  running: "running",
  waiting_lock: "waiting for a lock",
  waiting_human: "waiting for a human",
  paused: "paused",
  failed: "failed",
  done: "done",
  idle: "idle",
  pending: "pending",
  finished: "finished",
  cancelled: "cancelled",
};

export function statusLabel(status) {
  return STATUS_LABELS[status] || status;
}

export function seconds(ms) {
  const total = Math.max(0, Math.round(ms / 1000));
  if (total < 60) return `${total}s`;
  const minutes = Math.floor(total / 60);
  if (minutes < 60) return `${minutes}m ${String(total % 60).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
}

export function clockTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleTimeString([], { hour12: false });
}

export function byName(a, b) {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
