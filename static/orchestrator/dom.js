// Building DOM nodes from data without ever parsing it as HTML.
// Text goes in with textContent (text nodes); attributes only from a list of safe
// names, and links only to paths on this site. No innerHTML anywhere.

const SAFE_ATTRIBUTES = new Set([
  "id", "class", "title", "role", "type", "name", "value", "for", "tabindex", "colspan",
  "method", "action", "placeholder", "disabled", "hidden", "checked", "selected", "open",
  "aria-label", "aria-current", "aria-pressed", "aria-expanded", "aria-live", "aria-describedby", "href",
  "aria-disabled", "rel",
  // SVG geometry and presentation
  "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "rx", "ry", "width", "height", "d",
  "viewBox", "text-anchor", "dominant-baseline", "marker-end", "transform", "points",
  "refX", "refY", "markerWidth", "markerHeight", "orient",
]);

const SVG_NS = "http://www.w3.org/2000/svg";

function safeUrl(value) {
  // Only same-site paths ("/...", not "//host") and fragments.
  const text = String(value);
  return (text.startsWith("/") && !text.startsWith("//")) || text.startsWith("#") ? text : "#";
}

function setAttributes(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key === "style" && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) node.style.setProperty(k, String(v));
    } else if (SAFE_ATTRIBUTES.has(key) || key.startsWith("data-")) {
      node.setAttribute(key, key === "href" || key === "action" ? safeUrl(value) : value === true ? "" : String(value));
    } else {
      throw new Error(`attribute ${key} is not on the safe list`);
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** h("td", {class: "num"}, "text", otherNode) */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  return append(node, children);
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  return append(node, children);
}

export function text(node, value) {
  node.textContent = value === null || value === undefined ? "" : String(value);
}

export function clear(node) {
  node.replaceChildren();
}
