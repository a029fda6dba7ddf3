// Operator actions: ordinary POST forms with the CSRF token. With JavaScript they are
// sent with fetch() (the page stays, a toast says what happened); without, they post
// and come back with a message. Forms marked data-confirm ask first.
import { h } from "./dom.js";

export const canOperate = document.body.dataset.canOperate === "1";

export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

export function toast(message, ok = true) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast ${ok ? "ok" : "error"}`, role: ok ? "status" : "alert" }, message);
  box.append(item);
  setTimeout(() => item.remove(), ok ? 6000 : 12000);
}

/** A one-button form posting `fields` to `action`. */
export function actionForm(action, fields, label, { className = "small", confirm = null, title = null } = {}) {
  const form = h("form", { method: "post", action, class: "inline", "data-action": "" });
  if (confirm) form.dataset.confirm = confirm;
  form.append(h("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrfToken() }));
  for (const [name, value] of Object.entries(fields)) {
    form.append(h("input", { type: "hidden", name, value }));
  }
  form.append(h("button", { type: "submit", class: className, title }, label));
  return form;
}

async function submit(form, submitter) {
  const body = new FormData(form);
  if (submitter && submitter.name) body.append(submitter.name, submitter.value);
  const buttons = form.querySelectorAll("button");
  buttons.forEach((button) => (button.disabled = true));
  try {
    // getAttribute: a field named "action" would shadow the form.action property.
    const response = await fetch(form.getAttribute("action"), {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    });
    let answer = {};
    try {
      answer = await response.json();
    } catch {
      answer = { ok: false, detail: `The server answered ${response.status}.` };
    }
    const ok = response.ok && answer.ok !== false;
    let detail = answer.detail || (ok ? "Done." : "Refused.");
    if (answer.errors) {
      detail += " " + Object.entries(answer.errors).map(([k, v]) => `${k}: ${v.join(" ")}`).join("; ");
    }
    toast(detail, ok);
    form.dispatchEvent(new CustomEvent("action:done", { bubbles: true, detail: { ok, answer } }));
  } catch (error) {
    toast(`Could not reach the server: ${error.message}`, false);
  } finally {
    buttons.forEach((button) => (button.disabled = false));
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
  event.preventDefault();
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  submit(form, event.submitter);
});
