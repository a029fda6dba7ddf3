// Path resources (orchestrator/core/paths.py) as trees, from the live board's flat
// resource rows: pure data, no DOM (resources.js draws it).
//
// A name with a "/" is a path ("src/api/views.py"); one ending with "/" is a folder
// ("src/api/"). A lock on a folder covers every path under it, within its team: the
// core refuses a lock on a path under an exclusively held folder, and the other way
// round (shared locks stack; an agent's own folder lock does not block its own files).
//
// Everything here is derived from the board alone, so a patch that re-sends a folder's
// row (its lock granted or ended) redraws the marks on its whole subtree without any
// other row being sent. Names are agent text: this module only compares and slices them.

export const SEPARATOR = "/";

export function isPath(name) {
  return name.includes(SEPARATOR);
}

export function isFolder(name) {
  return name.endsWith(SEPARATOR);
}

/** The folders that contain ``name``, outermost first: "a/b/c.py" -> ["a/", "a/b/"]. */
export function foldersAbove(name) {
  const inner = isFolder(name) ? name.slice(0, -1) : name;
  const folders = [];
  for (let i = 0; i < inner.length; i++) if (inner[i] === SEPARATOR) folders.push(inner.slice(0, i + 1));
  return folders;
}

/** Whether ``lock`` keeps a ``mode`` lock of agent ``agentId`` from being granted. */
export function blocks(lock, mode, agentId) {
  return lock.agent !== agentId && (mode === "exclusive" || lock.mode === "exclusive");
}

function lockOn(holder, path) {
  return { lock_id: holder.lock_id, agent: holder.agent, agent_name: holder.agent_name, mode: holder.mode, on: path };
}

function byLabel(a, b) {
  if (a.folder !== b.folder) return a.folder ? -1 : 1; // folders first, as file browsers do
  return a.label < b.label ? -1 : a.label > b.label ? 1 : 0;
}

/**
 * The path resources among ``resources`` (board rows), one tree per team.
 *
 * Returns ``[{team, roots, nodes, size}]`` (teams in id order) where ``nodes`` maps a
 * path to its node and every node is::
 *
 *   {key, team, path, label, depth, folder, resource, parent, children,
 *    covered,   // locks on the folders above it: [{lock_id, agent, agent_name, mode, on}]
 *    below,     // under a folder: {paths, held, waited} (resources, held ones, waited for)
 *    blockers}  // request_id -> the locks of folders above it (or, for a folder, of
 *               // paths under it) that keep that waiter out: [{..., on}]
 *
 * ``resource`` is the board row, or null for a folder that is no resource itself but
 * is implied by the paths under it (a plain tree node). ``label`` is the node's own
 * part of the path ("api/" for "src/api/").
 */
export function pathForest(resources) {
  const trees = new Map();
  for (const resource of resources) {
    if (!isPath(resource.name)) continue;
    if (!trees.has(resource.team)) trees.set(resource.team, { team: resource.team, roots: [], nodes: new Map(), size: 0 });
    const tree = trees.get(resource.team);
    nodeFor(tree, resource.name).resource = resource;
  }
  const forest = [...trees.values()].sort((a, b) => a.team - b.team);
  for (const tree of forest) {
    tree.size = tree.nodes.size;
    tree.roots.sort(byLabel);
    for (const root of tree.roots) settle(root, []);
  }
  return forest;
}

function nodeFor(tree, path) {
  const found = tree.nodes.get(path);
  if (found) return found;
  const above = foldersAbove(path);
  const parent = above.length ? nodeFor(tree, above[above.length - 1]) : null;
  const node = {
    key: `${tree.team}:${path}`,
    team: tree.team,
    path,
    label: parent ? path.slice(parent.path.length) : path,
    depth: above.length,
    folder: isFolder(path),
    resource: null,
    parent,
    children: [],
    covered: [],
    below: { paths: 0, held: 0, waited: 0 },
    blockers: {},
  };
  tree.nodes.set(path, node);
  (parent ? parent.children : tree.roots).push(node);
  return node;
}

/** Fill in what each node inherits (``covered``) and sums up (``below``), depth first;
 *  returns the live locks at and under ``node``, for the blockers of folder waiters. */
function settle(node, covering) {
  node.covered = covering;
  node.children.sort(byLabel);
  const own = node.resource ? node.resource.holders.map((holder) => lockOn(holder, node.path)) : [];
  const inherited = own.length ? [...covering, ...own] : covering;
  const under = [];
  for (const child of node.children) {
    under.push(...settle(child, inherited));
    node.below.paths += child.below.paths + (child.resource ? 1 : 0);
    node.below.held += child.below.held + (child.resource && child.resource.holders.length ? 1 : 0);
    node.below.waited += child.below.waited + (child.resource && child.resource.waiters.length ? 1 : 0);
  }
  if (node.resource) {
    for (const waiter of node.resource.waiters) {
      const others = [...covering, ...under].filter((lock) => blocks(lock, waiter.mode, waiter.agent));
      if (others.length) node.blockers[waiter.request_id] = others;
    }
  }
  return [...own, ...under];
}

/**
 * The rows to draw, in order: each node whose folders above are all open (``isOpen(node)``).
 * With ``matches`` (a predicate), only the nodes that match and the folders above them,
 * all open: a search shows where its hits are.
 */
export function visibleNodes(tree, { isOpen, matches = null }) {
  const rows = [];
  const keep = matches ? new Set() : null;
  if (matches) {
    for (const node of tree.nodes.values()) {
      if (!matches(node)) continue;
      for (let up = node; up && !keep.has(up); up = up.parent) keep.add(up);
    }
  }
  const walk = (nodes) => {
    for (const node of nodes) {
      if (keep && !keep.has(node)) continue;
      rows.push(node);
      if (node.children.length && (keep || isOpen(node))) walk(node.children);
    }
  };
  walk(tree.roots);
  return rows;
}

/** "a0's exclusive lock on src/" */
export function lockPhrase(lock) {
  return `${lock.agent_name}'s ${lock.mode} lock on ${lock.on}`;
}

/** "covered by a0's exclusive lock on src/" (and the others, if several cover it). */
export function coverText(locks) {
  return `covered by ${listed(locks)}`;
}

/** "blocked by a0's exclusive lock on src/" */
export function blockerText(locks) {
  return `blocked by ${listed(locks)}`;
}

function listed(locks, shown = 2) {
  const names = locks.slice(0, shown).map(lockPhrase);
  const more = locks.length - shown;
  return more > 0 ? `${names.join(", ")} and ${more} more` : names.join(" and ");
}

/** "12 paths · 2 held · 1 waited for" under a folder. */
export function belowText(below) {
  const parts = [`${below.paths} path${below.paths === 1 ? "" : "s"}`];
  if (below.held) parts.push(`${below.held} held`);
  if (below.waited) parts.push(`${below.waited} waited for`);
  return parts.join(" · ");
}
