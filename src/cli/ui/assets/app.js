// ckpt ui: the page of `ckpt ui`, a local time-travel debugger over a checkpoint store.
// Vanilla JS, no build step. The API is described in ../API.md.
//
// Security: state values are arbitrary user data. The DOM is only ever built with
// createElement + textContent (see `el`); no HTML string is ever parsed.
'use strict';

// ---------------------------------------------------------------- dom & formatting helpers

const $ = (id) => document.getElementById(id);

// el('a', {href: '#x', class: 'c', onclick: fn}, 'text', child, [more]): attributes through
// setAttribute, listeners through addEventListener (functions only), children as nodes or
// text nodes. null/false/undefined attributes and children are skipped.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  append(e, children);
  return e;
}

function append(parent, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(parent, c);
    else parent.append(c instanceof Node ? c : String(c)); // strings become text nodes
  }
}

const enc = encodeURIComponent;
const hashExec = (exec) => '#' + enc(exec);
const hashCp = (exec, v) => `#${enc(exec)}@${v}`;
const hashDiff = (exec, a, b) => `#${enc(exec)}@${a}..${b}`;

// Local `YYYY-MM-DD HH:MM:SS`. Microsecond timestamps are preferred: Date parsing of
// RFC 3339 strings with more than 3 fraction digits is not guaranteed everywhere.
function fmtTime(rfc, us) {
  const d = typeof us === 'number' ? new Date(us / 1000)
    : new Date(String(rfc || '').replace(/(\.\d{3})\d+/, '$1'));
  if (isNaN(d.getTime())) return rfc || '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtBytes(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}

const utf8 = new TextEncoder();
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function badge(kind, text, title) {
  return el('span', { class: `badge ${kind}`, title }, text);
}

function headerBadges(h) {
  return [
    h.interrupted && badge('interrupted', 'interrupted', 'metadata interrupted = true'),
    h.failed && badge('failed', 'failed', 'a pending write on __error__'),
    h.writes > 0 && badge('writes', plural(h.writes, 'write', 'writes'), 'pending writes'),
  ];
}

// Metadata as `key=value key=value`, each pair cut short: a one-line summary.
function metaText(meta) {
  if (meta == null || typeof meta !== 'object' || Array.isArray(meta)) {
    return meta == null ? '' : JSON.stringify(meta);
  }
  return Object.entries(meta)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .map((s) => (s.length > 60 ? s.slice(0, 59) + '…' : s))
    .join('  ');
}

// ---------------------------------------------------------------- status

function setStatus(msg, kind = 'info') {
  const s = $('status');
  s.textContent = msg || '';
  s.className = msg ? kind : '';
  s.hidden = !msg;
}

const showError = (e) => setStatus(e && e.message ? e.message : String(e), 'error');

// ---------------------------------------------------------------- api

const App = {
  info: { writes: false, csrf: '', store: '' },
  gen: 0,        // bumped on every navigation: async work from an older view must not render
  cleanup: [],   // what to undo when leaving the view (EventSource, timers)
  flash: null,   // a message to show once the next view is up (after a write)
};

async function api(path, opts = {}) {
  const init = { method: opts.method || 'GET', headers: {}, credentials: 'same-origin' };
  if (init.method !== 'GET') init.headers['X-Ckpt-Csrf'] = App.info.csrf || '';
  if (opts.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new Error(`cannot reach the ckpt ui server (${e.message}): is it still running?`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: status line below */ }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

const qs = (params) => Object.entries(params)
  .filter(([, v]) => v != null && v !== '')
  .map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&');

const execPath = (exec, rest) => `/api/executions/${enc(exec)}/${rest}`;

// ---------------------------------------------------------------- router

// '' → list; EXEC → timeline; EXEC@N → checkpoint; EXEC@A..B → diff. Ids are encoded, so
// the last raw '@' separates the version (an id's own '@' is %40).
function parseHash(hash) {
  const h = hash.replace(/^#/, '');
  if (!h) return { view: 'list' };
  const at = h.lastIndexOf('@');
  if (at > 0) {
    const exec = decodeURIComponent(h.slice(0, at));
    const rest = h.slice(at + 1);
    const m = /^(\d+)\.\.(\d+)$/.exec(rest);
    if (/^\d+$/.test(rest)) return { view: 'checkpoint', exec, version: Number(rest) };
    if (m) return { view: 'diff', exec, from: Number(m[1]), to: Number(m[2]) };
  }
  return { view: 'timeline', exec: decodeURIComponent(h) };
}

const VIEWS = {
  list: showExecutions, timeline: showTimeline, checkpoint: showCheckpoint, diff: showDiff,
};

function route() {
  const gen = ++App.gen;
  for (const undo of App.cleanup.splice(0)) undo();
  const flash = App.flash;
  App.flash = null;
  setStatus(flash && flash.msg, flash && flash.kind);
  let r;
  try { r = parseHash(location.hash); } catch (_) {
    r = { view: 'list' };
    setStatus('this link is malformed (bad %-encoding): showing the executions', 'error');
  }
  renderNav(r);
  $('view').replaceChildren(el('p', { class: 'muted loading' }, 'Loading…'));
  window.scrollTo(0, 0);
  const alive = () => gen === App.gen;
  VIEWS[r.view](r, alive).catch((e) => {
    if (!alive()) return;
    showError(e);
    $('view').replaceChildren();
  });
}

// Go to `hash` (then show `msg`); reloads the view when the hash is already that one.
function go(hash, msg, kind = 'info') {
  App.flash = msg ? { msg, kind } : null;
  if (location.hash.replace(/^#/, '') === hash.replace(/^#/, '')) route();
  else location.hash = hash;
}

function renderNav(r) {
  const sep = () => el('span', { class: 'sep' }, '/');
  const nav = $('nav');
  nav.replaceChildren(el('a', { id: 'nav-home', href: '#' }, 'Executions'));
  if (r.exec != null) nav.append(sep(), el('a', { class: 'nav-exec', href: hashExec(r.exec) }, r.exec));
  if (r.view === 'checkpoint') {
    nav.append(sep(), el('a', { class: 'nav-version', href: hashCp(r.exec, r.version) }, `v${r.version}`));
  } else if (r.view === 'diff') {
    nav.append(sep(), el('span', { class: 'nav-version' }, `v${r.from} → v${r.to}`));
  }
  document.title = r.exec != null ? `${r.exec} · ckpt ui` : 'ckpt ui';
}

// ---------------------------------------------------------------- view: executions

const EXEC_PAGE = 100;
const listState = { q: '', offset: 0 }; // kept across navigations: back to the list keeps the filter

async function showExecutions(r, alive) {
  const filter = el('input', {
    id: 'exec-filter', type: 'search', placeholder: 'filter by execution id…',
    value: listState.q, autocomplete: 'off', spellcheck: 'false',
  });
  const prev = el('button', { id: 'exec-prev', type: 'button' }, '‹ prev');
  const next = el('button', { id: 'exec-next', type: 'button' }, 'next ›');
  const count = el('span', { id: 'exec-count', class: 'muted' });
  const tbody = el('tbody');
  const heads = ['execution', 'checkpoints', 'latest', 'latest node', 'last activity', 'size', ''];
  const view = el('section', { id: 'executions' },
    el('div', { class: 'toolbar' }, filter, el('span', { class: 'spacer' }), prev, count, next),
    el('table', { id: 'exec-table', class: 'grid' },
      el('thead', null, el('tr', null, heads.map((t) => el('th', null, t)))), tbody));

  let seq = 0; // only the latest request renders (typing fires several)
  const load = async () => {
    const mine = ++seq;
    const d = await api(`/api/executions?${qs({ q: listState.q, offset: listState.offset, limit: EXEC_PAGE })}`);
    if (!alive() || mine !== seq) return;
    const rows = d.executions.map(execRow);
    if (!rows.length) {
      rows.push(el('tr', { class: 'empty' }, el('td', { colspan: heads.length },
        listState.q ? 'no execution id contains this text' : 'the store has no executions')));
    }
    tbody.replaceChildren(...rows);
    const n = d.executions.length;
    count.textContent = d.total ? `${d.offset + 1}–${d.offset + n} of ${d.total}` : '0 of 0';
    prev.disabled = d.offset <= 0;
    next.disabled = d.offset + n >= d.total;
  };
  const reload = () => load().catch((e) => alive() && showError(e));

  let timer = 0;
  App.cleanup.push(() => clearTimeout(timer));
  filter.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => { listState.q = filter.value.trim(); listState.offset = 0; reload(); }, 200);
  });
  prev.addEventListener('click', () => { listState.offset = Math.max(0, listState.offset - EXEC_PAGE); reload(); });
  next.addEventListener('click', () => { listState.offset += EXEC_PAGE; reload(); });

  await load();
  if (!alive()) return;
  $('view').replaceChildren(view);
  filter.focus();
}

function execRow(x) {
  const id = x.execution_id;
  return el('tr', { class: 'exec-row', 'data-exec': id },
    el('td', { class: 'id' }, el('a', { class: 'exec-link', href: hashExec(id) }, id)),
    el('td', { class: 'num' }, x.checkpoints),
    el('td', { class: 'num' }, x.latest_version == null ? '—'
      : el('a', { href: hashCp(id, x.latest_version) }, `v${x.latest_version}`)),
    el('td', { class: 'node' }, x.latest_node || ''),
    el('td', { class: 'time', title: x.last_time }, fmtTime(x.last_time, x.last_time_us)),
    el('td', { class: 'num' }, fmtBytes(x.bytes)),
    el('td', null, x.damaged && badge('damaged', 'damaged', 'unreadable frames or versions: see ckpt verify')));
}

// ---------------------------------------------------------------- view: timeline

const TL_PAGE = 200;

async function showTimeline(r, alive) {
  const exec = r.exec;
  // headers: newest first, as loaded; lis: version → its li (to fix badges on later loads).
  const t = { exec, headers: [], lis: new Map(), nextBefore: null, total: 0, loaded: false, queue: [] };
  const list = el('ol', { id: 'timeline' });
  const more = el('button', { id: 'timeline-more', type: 'button', hidden: true }, 'Load older');
  const count = el('span', { id: 'timeline-count', class: 'muted' });
  const live = el('span', { id: 'live', class: 'live off', title: 'new checkpoints appear as they are saved' }, 'connecting…');
  const tree = el('div', { id: 'tree' });
  const grepInput = el('input', {
    id: 'grep-input', type: 'search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'grep: a text, or path=value (e.g. step=3)',
  });
  const grepGo = el('button', { id: 'grep-go', type: 'button' }, 'grep');
  const grepFirst = el('span', { id: 'grep-first' });
  const grepCount = el('span', { class: 'muted grep-count' });
  const grepResults = el('div', { id: 'grep-results' });
  const prune = App.info.writes && el('button', {
    id: 'prune', type: 'button', class: 'danger', onclick: () => pruneFlow(exec),
  }, 'Prune…');

  const view = el('section', { id: 'timeline-view' },
    el('div', { class: 'view-head' }, el('h2', null, exec), count, live, el('span', { class: 'spacer' }), prune),
    el('div', { class: 'grep toolbar' }, grepInput, grepGo, grepFirst, grepCount),
    grepResults,
    el('div', { class: 'columns' },
      el('div', { class: 'col-main' }, list, more),
      el('aside', { class: 'col-side' }, el('h3', null, 'Branches'), tree)));

  const updateCount = () => {
    count.textContent = t.headers.length >= t.total ? plural(t.total, 'checkpoint', 'checkpoints')
      : `${t.headers.length} of ${t.total} checkpoints loaded`;
  };
  // Rebuilding the tree is O(n); live bursts are coalesced into one rebuild.
  let treeTimer = 0, treeDrawn = false;
  const scheduleTree = () => {
    if (treeTimer) return;
    treeTimer = setTimeout(() => {
      treeTimer = 0;
      const top = tree.scrollTop;
      renderTree(tree, exec, t.headers);
      if (treeDrawn) tree.scrollTop = top;
      else { tree.scrollTop = tree.scrollHeight; treeDrawn = true; } // newest is at the bottom
    }, treeDrawn ? 150 : 0);
  };
  App.cleanup.push(() => clearTimeout(treeTimer));

  const appendPage = (d) => {
    t.total = d.total;
    t.nextBefore = d.next_before;
    const start = t.headers.length;
    for (const h of d.versions) if (!t.lis.has(h.version)) t.headers.push(h);
    const frag = document.createDocumentFragment();
    for (let i = start; i < t.headers.length; i++) frag.append(versionLi(t, i));
    list.append(frag);
    if (start > 0) refreshBranch(t, start - 1); // its older neighbour is known only now
    more.hidden = t.nextBefore == null;
    updateCount();
    scheduleTree();
  };

  const addLive = (h) => {
    if (t.lis.has(h.version) || (h.execution_id && h.execution_id !== exec)) return;
    let i = 0;
    while (i < t.headers.length && t.headers[i].version > h.version) i++;
    t.headers.splice(i, 0, h);
    const li = versionLi(t, i);
    li.classList.add('new');
    setTimeout(() => li.classList.remove('new'), 4000);
    const older = t.headers[i + 1];
    list.insertBefore(li, older ? t.lis.get(older.version) : null);
    if (i > 0) refreshBranch(t, i - 1);
    t.total++;
    updateCount();
    scheduleTree();
  };

  // Subscribe before loading so that nothing saved meanwhile is missed; events that arrive
  // during the load are queued and merged after it (duplicates are skipped).
  const es = new EventSource(execPath(exec, 'events'));
  App.cleanup.push(() => es.close());
  es.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  es.onerror = () => {
    live.textContent = es.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting…';
    live.className = 'live off';
  };
  es.addEventListener('checkpoint', (ev) => {
    let h;
    try { h = JSON.parse(ev.data); } catch (_) { return; }
    if (t.loaded) addLive(h); else t.queue.push(h);
  });

  more.addEventListener('click', async () => {
    more.disabled = true;
    try {
      const d = await api(execPath(exec, `timeline?${qs({ before: t.nextBefore, limit: TL_PAGE })}`));
      if (alive()) appendPage(d);
    } catch (e) { if (alive()) showError(e); }
    more.disabled = false;
  });

  const grep = async () => {
    const q = grepInput.value;
    if (!q.trim()) { grepResults.replaceChildren(); grepFirst.textContent = ''; grepCount.textContent = ''; return; }
    grepGo.disabled = true;
    grepFirst.textContent = 'searching…';
    grepCount.textContent = '';
    try {
      const d = await api(execPath(exec, `grep?${qs({ q })}`));
      if (!alive()) return;
      grepFirst.textContent = d.first != null ? `first seen in v${d.first}` : 'not found';
      grepCount.textContent = `${plural(d.matches.length, 'version matches', 'versions match')} (${d.mode} search)`;
      const frag = document.createDocumentFragment();
      for (const m of d.matches) frag.append(grepHit(exec, m));
      grepResults.replaceChildren(frag);
    } catch (e) {
      if (alive()) { grepFirst.textContent = ''; showError(e); }
    }
    grepGo.disabled = false;
  };
  grepGo.addEventListener('click', grep);
  grepInput.addEventListener('keydown', (e) => { if (e.key === 'Enter') grep(); });

  let d;
  try {
    d = await api(execPath(exec, `timeline?${qs({ limit: TL_PAGE })}`));
  } catch (e) { es.close(); throw e; } // e.g. no such execution: stop listening too
  if (!alive()) return;
  $('view').replaceChildren(view);
  appendPage(d);
  t.loaded = true;
  for (const h of t.queue.splice(0)) addLive(h);
}

// Why a checkpoint is not the plain continuation of the one listed below it, or null.
function branchOf(t, i) {
  const h = t.headers[i], p = h.parent;
  if (!p) return null;
  if (p.execution_id !== t.exec) return { text: `forked from ${p.execution_id}@${p.version}`, p };
  const older = t.headers[i + 1];
  if (older) return p.version === older.version ? null : { text: `branch from v${p.version}`, p };
  // The oldest loaded: unknown until the next page, unless there is none.
  return t.nextBefore == null ? { text: `branch from v${p.version}`, p } : null;
}

function branchBadge(b) {
  return el('span', { class: 'badge branch' },
    el('a', { href: hashCp(b.p.execution_id, b.p.version), title: 'go to the parent' }, b.text));
}

function versionLi(t, i) {
  const h = t.headers[i], p = h.parent;
  const b = branchOf(t, i);
  const meta = metaText(h.metadata);
  const li = el('li', { class: 'version', 'data-version': h.version },
    el('div', { class: 'row' },
      el('a', { class: 'version-link', href: hashCp(t.exec, h.version) }, `v${h.version}`),
      el('span', { class: 'node' }, h.node),
      el('span', { class: 'badges' }, headerBadges(h), b && branchBadge(b)),
      el('span', { class: 'spacer' }),
      el('span', { class: 'size', title: `state ${h.state_size} bytes, stored ${fmtBytes(h.stored_size)}` }, fmtBytes(h.state_size)),
      el('span', { class: 'time', title: h.time }, fmtTime(h.time, h.time_us)),
      p && p.execution_id === t.exec
        ? el('a', { class: 'diff-link', href: hashDiff(t.exec, p.version, h.version), title: `diff v${p.version} → v${h.version}` }, 'diff')
        : el('span', { class: 'diff-link-none' })),
    meta && el('div', { class: 'meta', title: meta }, meta));
  t.lis.set(h.version, li);
  return li;
}

function refreshBranch(t, i) {
  const li = t.lis.get(t.headers[i].version);
  if (!li) return;
  const old = li.querySelector('.badge.branch');
  if (old) old.remove();
  const b = branchOf(t, i);
  if (b) li.querySelector('.badges').append(branchBadge(b));
}

function grepHit(exec, m) {
  const paths = m.paths || [];
  const shown = paths.slice(0, 12).map((p) => el('code', { class: 'path' }, p === '' ? '(root)' : p));
  return el('div', { class: 'grep-hit', 'data-version': m.version },
    el('a', { class: 'grep-link', href: hashCp(exec, m.version) }, `v${m.version}`),
    el('span', { class: 'node' }, m.node),
    el('span', { class: 'time' }, fmtTime(m.time)),
    el('span', { class: 'grep-paths' }, shown,
      paths.length > 12 && el('span', { class: 'muted' }, ` +${paths.length - 12} more`),
      !paths.length && el('span', { class: 'muted' }, 'matches the state as JSON')));
}

// ---------------------------------------------------------------- branch tree

// The loaded versions as a tree: each line follows a chain of checkpoints, where a node's
// oldest child continues the line and its other children (forks, resumes from an earlier
// point) open indented lines right after it. Lines are built with a queue, not recursion,
// and every version is placed once: O(n) DOM work, whatever the shape.
function renderTree(container, exec, headers) {
  const loaded = new Set(headers.map((h) => h.version));
  const asc = headers.slice().sort((a, b) => a.version - b.version);
  const kids = new Map();
  const roots = [];
  for (const h of asc) {
    const p = h.parent;
    if (p && p.execution_id === exec && loaded.has(p.version) && p.version !== h.version) {
      if (!kids.has(p.version)) kids.set(p.version, []);
      kids.get(p.version).push(h);
    } else roots.push(h);
  }
  const rootLabel = (h) => {
    const p = h.parent;
    if (!p) return null;
    if (p.execution_id !== exec) return `forked from ${p.execution_id}@${p.version}`;
    return `from v${p.version} (not loaded)`;
  };
  const frag = document.createDocumentFragment();
  const seen = new Set();
  const queue = roots.map((h) => [h, frag, rootLabel(h)]);
  const drain = () => {
    for (let qi = 0; qi < queue.length; qi++) {
      const [start, into, label] = queue[qi];
      const line = el('div', { class: 'tree-line' }, label && el('div', { class: 'tree-from' }, label));
      into.append(line);
      for (let h = start; h && !seen.has(h.version);) {
        seen.add(h.version);
        line.append(treeNode(exec, h));
        const ks = kids.get(h.version);
        if (!ks) break;
        if (ks.length > 1) {
          const br = el('div', { class: 'tree-branches' });
          line.append(br);
          for (const k of ks.slice(1)) queue.push([k, br, `↳ from v${h.version}`]);
        }
        h = ks[0];
      }
    }
    queue.length = 0;
  };
  drain();
  // Versions on a parent cycle (corrupt data) are reachable from no root: show them anyway.
  for (const h of asc) if (!seen.has(h.version)) { queue.push([h, frag, 'unreachable']); drain(); }
  if (!headers.length) frag.append(el('p', { class: 'muted' }, 'no checkpoints'));
  container.replaceChildren(frag);
}

function treeNode(exec, h) {
  const cls = ['tree-node', h.interrupted && 'interrupted', h.failed && 'failed'].filter(Boolean).join(' ');
  return el('a', {
    class: cls, 'data-version': h.version, href: hashCp(exec, h.version),
    title: `${h.id}  ${h.node}  ${fmtTime(h.time, h.time_us)}`,
  }, el('span', { class: 'tree-v' }, `v${h.version}`), ' ', el('span', { class: 'tree-name' }, h.node));
}

// ---------------------------------------------------------------- view: checkpoint

async function showCheckpoint(r, alive) {
  const { exec, version } = r;
  const d = await api(`/api/checkpoints/${enc(exec)}/${version}`);
  if (!alive()) return;
  const h = d.header, p = h.parent;
  const parentHere = p && p.execution_id === exec;

  const header = el('div', { id: 'cp-header' },
    el('h2', null, h.id),
    el('div', { class: 'facts' },
      el('span', { class: 'node' }, h.node),
      el('span', { class: 'time', title: h.time }, fmtTime(h.time, h.time_us)),
      el('span', { title: `${h.state_size} bytes` }, `state ${fmtBytes(h.state_size)}`),
      el('span', null, `stored ${fmtBytes(h.stored_size)}`),
      headerBadges(h),
      p && !parentHere && badge('branch', `forked from ${p.id}`),
      d.children.length > 1 && badge('branch', `${d.children.length} children`)));

  const from = el('input', { id: 'diff-from', type: 'number', min: 0, placeholder: 'from', value: parentHere ? p.version : null });
  const to = el('input', { id: 'diff-to', type: 'number', min: 0, placeholder: 'to', value: version });
  const diffForm = el('form', {
    class: 'diff-form',
    onsubmit: (e) => {
      e.preventDefault();
      const a = from.value.trim(), b = to.value.trim();
      if (!/^\d+$/.test(a) || !/^\d+$/.test(b)) return setStatus('diff: give two version numbers', 'error');
      go(hashDiff(exec, a, b));
    },
  }, 'diff', from, '→', to, el('button', { id: 'diff-go', type: 'submit' }, 'go'));

  const actions = el('div', { class: 'toolbar' },
    parentHere && el('a', { id: 'diff-parent', class: 'button', href: hashDiff(exec, p.version, version) }, `diff with parent v${p.version}`),
    diffForm,
    el('span', { class: 'spacer' }),
    App.info.writes && el('button', { id: 'fork', type: 'button', onclick: () => forkFlow(exec, version) }, 'Fork…'),
    App.info.writes && el('button', { id: 'delete', type: 'button', class: 'danger', onclick: () => deleteFlow(exec, version) }, 'Delete…'));

  const meta = h.metadata && typeof h.metadata === 'object' ? Object.entries(h.metadata) : [];
  const metaTable = el('table', { id: 'cp-metadata', class: 'kv' }, el('tbody', null,
    meta.length ? meta.map(([k, v]) => el('tr', null, el('th', null, k), el('td', null, valueText(v))))
      : el('tr', null, el('td', { class: 'muted' }, 'no metadata'))));

  const cpLink = (x) => el('a', { href: hashCp(x.execution_id, x.version) }, x.id);
  const parentEl = el('div', { id: 'cp-parent' }, !p ? el('span', { class: 'muted' }, 'none')
    : [cpLink(p), d.parent && el('span', { class: 'muted' }, ` ${d.parent.node} · ${fmtTime(d.parent.time, d.parent.time_us)}`)]);
  const childrenEl = el('div', { id: 'cp-children' }, !d.children.length ? el('span', { class: 'muted' }, 'none')
    : d.children.map((c) => el('div', null, cpLink(c), el('span', { class: 'muted' }, ` ${c.node}`))));

  const writesEl = el('div', { id: 'cp-writes' }, !d.pending_writes.length ? el('span', { class: 'muted' }, 'none')
    : d.pending_writes.map((w) => el('div', { class: 'write' + (w.channel === '__error__' ? ' error' : '') },
      el('div', { class: 'write-head' },
        el('span', { class: 'task', title: 'task' }, w.task),
        el('span', { class: 'channel', title: 'channel' }, w.channel),
        el('span', { class: 'time', title: w.time }, fmtTime(w.time))),
      el('div', { class: 'json-tree' }, jsonTree(w.value)))));

  const copy = el('button', {
    type: 'button', class: 'small',
    onclick: () => navigator.clipboard.writeText(JSON.stringify(d.state, null, 2))
      .then(() => setStatus(`copied the state of ${h.id} as JSON`), showError),
  }, 'copy JSON');

  $('view').replaceChildren(el('section', { id: 'checkpoint-view' },
    header, actions,
    el('div', { class: 'columns wide-main' },
      el('div', { class: 'col-main' },
        el('div', { class: 'section-head' }, el('h3', null, 'State'), copy),
        el('div', { id: 'state', class: 'json-tree' }, jsonTree(d.state))),
      el('aside', { class: 'col-side' },
        el('h3', null, 'Metadata'), metaTable,
        el('h3', null, 'Parent'), parentEl,
        el('h3', null, 'Children'), childrenEl,
        el('h3', null, 'Pending writes'), writesEl))));
}

// ---------------------------------------------------------------- json tree

const FOLD = 200;          // longer strings are shown folded
const WIDE = 20;           // below the top two levels, containers with more children start collapsed
const CHUNK = 500;         // children rendered per "show more" (huge arrays must not freeze the page)
const AUTO_BUDGET = 3000;  // after this many auto-expanded children, deeper levels start collapsed

const isBinary = (v) => v && typeof v === 'object' && !Array.isArray(v) &&
  Object.keys(v).length === 1 && '$binary' in v && v.$binary && typeof v.$binary === 'object';

function binaryText(v) {
  const b = v.$binary;
  return `binary, ${b.bytes} bytes, blake3 ${String(b.blake3 || '').slice(0, 8)}…`;
}

// Text cut at FOLD characters with a button revealing the rest. `show(text, whole)` renders
// a piece (JSON strings are quoted; a cut one has no closing quote).
function folded(cls, raw, show = (s) => s) {
  const span = el('span', { class: cls });
  if (raw.length <= FOLD) { span.textContent = show(raw, true); return span; }
  span.textContent = show(raw.slice(0, FOLD), false);
  const btn = el('button', { class: 'unfold', type: 'button', title: 'show the rest' },
    `… (+${raw.length - FOLD} chars, ${fmtBytes(utf8.encode(raw).length)})`);
  btn.addEventListener('click', () => { span.textContent = show(raw, true); btn.remove(); });
  return el('span', { class: 'folded' }, span, btn);
}

const quoted = (s, whole) => (whole ? JSON.stringify(s) : JSON.stringify(s).slice(0, -1));

function jsonTree(value) {
  return jsonNode(value, 0, { n: 0 });
}

function jsonNode(v, depth, budget) {
  if (v === null || typeof v === 'boolean') return el('span', { class: 'json-literal' }, String(v));
  if (typeof v === 'number') return el('span', { class: 'json-number' }, String(v));
  if (typeof v === 'string') return folded('json-string', v, quoted);
  if (typeof v !== 'object') return el('span', null, String(v));
  if (isBinary(v)) return el('span', { class: 'json-binary', title: `blake3 ${v.$binary.blake3}` }, binaryText(v));

  const arr = Array.isArray(v);
  const keys = arr ? null : Object.keys(v);
  const n = arr ? v.length : keys.length;
  const [open, close] = arr ? ['[', ']'] : ['{', '}'];
  if (n === 0) return el('span', { class: 'json-empty' }, open + close);

  const toggle = el('button', { class: 'toggle', type: 'button', 'aria-label': 'expand or collapse' });
  const count = el('span', { class: 'json-count' }, arr ? plural(n, 'item', 'items') : plural(n, 'key', 'keys'));
  const ellipsis = el('span', { class: 'json-ellipsis' }, `…${close}`);
  const body = el('div', { class: 'json-children' });
  const closer = el('div', { class: 'json-close' }, close);
  let shown = 0;

  const fill = () => { // renders the next CHUNK children (children render lazily: on first expand)
    const end = Math.min(n, shown + CHUNK);
    const frag = document.createDocumentFragment();
    for (let i = shown; i < end; i++) {
      const k = arr ? i : keys[i];
      const key = arr ? el('span', { class: 'json-index' }, String(i))
        : el('span', { class: 'json-key' }, /^[A-Za-z_$][\w$-]*$/.test(k) ? k : JSON.stringify(k));
      frag.append(el('div', { class: 'json-row' }, key, el('span', { class: 'json-colon' }, ': '),
        jsonNode(v[k], depth + 1, budget)));
    }
    shown = end;
    if (shown < n) {
      frag.append(el('button', {
        class: 'json-more', type: 'button',
        onclick: (e) => { e.target.remove(); fill(); },
      }, `show ${Math.min(CHUNK, n - shown)} more (${shown} of ${n} shown)`));
    }
    body.append(frag);
  };
  const set = (expanded) => {
    if (expanded && shown === 0) fill();
    toggle.textContent = expanded ? '▾' : '▸';
    toggle.setAttribute('aria-expanded', String(expanded));
    body.hidden = closer.hidden = !expanded;
    ellipsis.hidden = expanded;
  };
  const flip = () => set(body.hidden);
  toggle.addEventListener('click', flip);
  count.addEventListener('click', flip);
  ellipsis.addEventListener('click', flip);

  const expand = depth < 2 || (n <= WIDE && budget.n < AUTO_BUDGET);
  if (expand) budget.n += Math.min(n, CHUNK);
  set(expand);
  return el('span', { class: 'json-node' }, toggle, el('span', { class: 'json-open' }, open), ellipsis, count, body, closer);
}

// ---------------------------------------------------------------- diff

// Compact one-line JSON for diff cells and metadata values, folded when long.
function valueText(v) {
  if (v === undefined) return '';
  const text = isBinary(v) ? binaryText(v) : JSON.stringify(v);
  return folded('json-value', text);
}

// Paths in natural order: `messages.2` before `messages.10`.
function comparePaths(a, b) {
  const x = a.split('.'), y = b.split('.');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] === y[i]) continue;
    const nx = /^\d+$/.test(x[i]), ny = /^\d+$/.test(y[i]);
    if (nx && ny) return Number(x[i]) - Number(y[i]);
    return x[i] < y[i] ? -1 : 1;
  }
  return x.length - y.length;
}

async function showDiff(r, alive) {
  const { exec, from, to } = r;
  const d = await api(execPath(exec, `diff?${qs({ from, to })}`));
  if (!alive()) return;
  const rows = [
    ...(d.added || []).map((c) => ({ kind: 'added', path: c.path, new: c.value })),
    ...(d.removed || []).map((c) => ({ kind: 'removed', path: c.path, old: c.value })),
    ...(d.changed || []).map((c) => ({ kind: 'changed', path: c.path, old: c.old, new: c.new })),
  ].sort((a, b) => comparePaths(a.path, b.path));

  const side = (h) => el('a', { href: hashCp(h.execution_id || exec, h.version), title: `${h.node} · ${fmtTime(h.time, h.time_us)}` }, `v${h.version}`);
  const sub = (h) => `${h.id}: ${h.node}, ${fmtTime(h.time, h.time_us)}`;
  const tbody = el('tbody', null, rows.length ? rows.map((x) => el('tr', { class: `diff-row ${x.kind}` },
    el('td', { class: 'diff-path' }, x.path === '' ? '(root)' : x.path),
    el('td', { class: 'diff-old' }, valueText(x.old)),
    el('td', { class: 'diff-new' }, valueText(x.new))))
    : el('tr', { class: 'empty' }, el('td', { colspan: 3 }, 'the two states are equal')));

  $('view').replaceChildren(el('section', { id: 'diff-view' },
    el('div', { class: 'view-head' }, el('h2', null, side(d.from), ' → ', side(d.to)),
      el('span', { id: 'diff-summary', class: 'muted' }, d.summary)),
    el('p', { class: 'muted small' }, `from ${sub(d.from)} — to ${sub(d.to)}`),
    el('table', { id: 'diff', class: 'grid' },
      el('thead', null, el('tr', null, el('th', null, 'path'), el('th', null, `old (v${d.from.version})`), el('th', null, `new (v${d.to.version})`))),
      tbody)));
}

// ---------------------------------------------------------------- dialogs & writes

// The in-page confirmation (never window.confirm/prompt). Resolves to the input's text
// (when `input` is given) or true, or null when cancelled.
function ask({ text, input = null, yes = 'OK', danger = false }) {
  const dlg = $('confirm'), inp = $('confirm-input'), yesB = $('confirm-yes'), noB = $('confirm-no');
  $('confirm-text').textContent = text;
  inp.hidden = !input;
  inp.type = (input && input.type) || 'text';
  inp.value = input ? String(input.value ?? '') : '';
  yesB.textContent = yes;
  yesB.className = danger ? 'danger' : 'primary';
  return new Promise((resolve) => {
    const finish = (ok) => {
      yesB.onclick = noB.onclick = inp.onkeydown = dlg.oncancel = null;
      if (typeof dlg.close === 'function' && dlg.open) dlg.close(); else dlg.removeAttribute('open');
      resolve(ok ? (input ? inp.value : true) : null);
    };
    yesB.onclick = () => finish(true);
    noB.onclick = () => finish(false);
    dlg.oncancel = (e) => { e.preventDefault(); finish(false); }; // Escape
    inp.onkeydown = (e) => { if (e.key === 'Enter') { e.preventDefault(); finish(true); } };
    if (typeof dlg.showModal === 'function') dlg.showModal(); else dlg.setAttribute('open', '');
    if (input) { inp.focus(); inp.select(); } else noB.focus(); // Enter alone must not delete
  });
}

async function forkFlow(exec, version) {
  const name = await ask({
    text: `Fork ${exec}@${version} into a new execution (its first checkpoint will be this state). Name of the new execution:`,
    input: { value: `${exec}-fork` }, yes: 'Fork',
  });
  if (name == null) return;
  if (!name.trim()) return setStatus('fork: the new execution needs a name', 'error');
  try {
    const res = await api(execPath(exec, 'fork'), { method: 'POST', body: { version, new_execution: name.trim() } });
    go(hashExec(res.execution_id), `forked ${exec}@${version} into ${res.id}`);
  } catch (e) { showError(e); }
}

async function deleteFlow(exec, version) {
  const ok = await ask({ text: `Delete checkpoint ${exec}@${version}? This cannot be undone.`, yes: 'Delete', danger: true });
  if (!ok) return;
  try {
    const res = await api(`/api/checkpoints/${enc(exec)}/${version}`, { method: 'DELETE' });
    go(hashExec(exec), `deleted ${res.deleted}`);
  } catch (e) { showError(e); }
}

async function pruneFlow(exec) {
  const n = await ask({
    text: `Prune ${exec}: keep the latest N checkpoints and delete all older ones. This cannot be undone. N:`,
    input: { value: 10, type: 'number' }, yes: 'Prune', danger: true,
  });
  if (n == null) return;
  if (!/^\d+$/.test(n.trim())) return setStatus('prune: give a whole number of checkpoints to keep', 'error');
  try {
    const res = await api(execPath(exec, 'prune'), { method: 'POST', body: { keep_latest: Number(n) } });
    go(hashExec(exec), `pruned ${exec}: deleted ${plural(res.deleted, 'checkpoint', 'checkpoints')}`);
  } catch (e) { showError(e); }
}

// ---------------------------------------------------------------- boot

async function boot() {
  // The token has done its job (the server set a cookie): keep it out of history and screenshots.
  const u = new URL(location.href);
  if (u.searchParams.has('token')) {
    u.searchParams.delete('token');
    history.replaceState(history.state, '', u.pathname + u.search + u.hash);
  }
  $('status').addEventListener('click', () => setStatus(null));
  window.addEventListener('hashchange', route);
  try {
    App.info = await api('/api/info');
    $('store').textContent = App.info.store || '';
    $('store').title = `ckpt ${App.info.version || ''}${App.info.writes ? ' · writes allowed' : ' · read-only'}`;
  } catch (e) {
    App.flash = { msg: e.message, kind: 'error' };
  }
  route();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
