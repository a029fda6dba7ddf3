// Pages of rows and filters kept in the URL, for the pages that show part of the board
// (live.js views): the query string is the view, so a filtered page is a bookmark, and
// Back goes to the page of rows shown before.
import { h } from "./dom.js";
import { byName } from "./format.js";
import { board, VIEW_FIELDS, viewFromUrl } from "./live.js";

const FILTER_DELAY_MS = 250;

function cleaned(fields) {
  const kept = {};
  for (const key of VIEW_FIELDS) {
    const value = fields[key];
    if (value !== undefined && value !== null && value !== "" && value !== false) kept[key] = String(value === true ? "1" : value);
  }
  if (kept.page === "1") delete kept.page;
  return kept;
}

function urlOf(fields) {
  const query = new URLSearchParams(cleaned(fields)).toString();
  return `${location.pathname}${query ? `?${query}` : ""}`;
}

/** Show the view ``fields`` (filters, page): in the URL, and asked of the server. */
export function showView(fields, { push = false } = {}) {
  const url = urlOf(fields);
  if (url !== `${location.pathname}${location.search}`) {
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }
  board.setView(cleaned(fields));
}

/**
 * Wire a page's filter controls to its view: ``controls`` maps a view field to its
 * input, select or checkbox. They start from the URL; a change shows page 1 of the new
 * filter (typing is debounced); Back and Forward restore what the URL says.
 */
export function bindFilters(controls) {
  const read = () => {
    const fields = {};
    for (const [key, control] of Object.entries(controls)) fields[key] = control.type === "checkbox" ? control.checked : control.value.trim();
    return fields;
  };
  const fill = () => {
    const fields = viewFromUrl();
    for (const [key, control] of Object.entries(controls)) {
      if (control.type === "checkbox") {
        control.checked = fields[key] === "1";
        continue;
      }
      const value = fields[key] || "";
      // A select's options may come with the board (teams): the URL's value is one to be.
      if (control.tagName === "SELECT" && value && ![...control.options].some((o) => o.value === value)) {
        control.append(h("option", { value }, `${key} ${value}`));
      }
      control.value = value;
    }
  };
  fill();
  let timer = null;
  const changed = () => {
    clearTimeout(timer);
    timer = setTimeout(() => showView(read()), FILTER_DELAY_MS);
  };
  for (const control of Object.values(controls)) {
    control.addEventListener(control.tagName === "INPUT" && control.type !== "checkbox" ? "input" : "change", changed);
  }
  window.addEventListener("popstate", () => {
    fill();
    board.setView(cleaned(viewFromUrl()));
  });
  return { read, fill };
}

/** The teams of the board as ``select``'s options (after "all teams"), kept selected. */
export function teamOptions(select, teams) {
  const current = select.value;
  const sorted = Object.values(teams).sort(byName);
  const options = [h("option", { value: "" }, "all teams"), ...sorted.map((team) => h("option", { value: team.id }, team.name))];
  const same = select.options.length === options.length && [...select.options].every((option, i) => option.value === options[i].value && option.textContent === options[i].textContent);
  if (same) return;
  select.replaceChildren(...options);
  select.value = current;
}

/** Go to page ``page`` of the current view (a new history entry). */
export function goToPage(page) {
  showView({ ...viewFromUrl(), page }, { push: true });
}

/**
 * "Showing 51–100 of 300 resources", with Previous and Next links (their href is the
 * page's URL, so they open in a new tab too), from the view the server chose.
 */
export function pager(info, noun, { label = noun } = {}) {
  if (!info || info.total === undefined) return h("nav", { class: "pager", hidden: true });
  const first = info.total ? (info.page - 1) * info.size + 1 : 0;
  const last = Math.min(info.total, info.page * info.size);
  const link = (page, text, rel) => {
    if (page < 1 || page > info.pages) return h("span", { class: "button small disabled", "aria-disabled": "true" }, text);
    return h("a", {
      class: "button small",
      href: urlOf({ ...viewFromUrl(), page }),
      rel,
      dataset: { page },
      on: { click: (event) => { event.preventDefault(); goToPage(page); } },
    }, text);
  };
  return h("nav", { class: "pager", "aria-label": `Pages of ${label}`, dataset: { total: info.total, page: info.page, pages: info.pages } },
    h("span", { class: "pager-count", role: "status" }, info.total
      ? `Showing ${first} to ${last} of ${info.total} ${noun}`
      : `No ${noun}`),
    info.pages > 1 ? [
      link(info.page - 1, "Previous", "prev"),
      h("span", { class: "muted" }, `page ${info.page} of ${info.pages}`),
      link(info.page + 1, "Next", "next"),
    ] : null);
}

/** Replace ``node``'s pager only when what it says changed (keeps focus on its links). */
export function drawPager(node, info, noun) {
  const key = JSON.stringify([info && info.total, info && info.page, info && info.pages, info && info.size, location.search]);
  if (node.dataset.key === key) return;
  const focusedPage = document.activeElement && node.contains(document.activeElement) ? document.activeElement.getAttribute("rel") : null;
  node.dataset.key = key;
  node.replaceChildren(pager(info, noun));
  if (focusedPage) (node.querySelector(`a[rel="${focusedPage}"]`) || node.querySelector("a"))?.focus();
}
