// taskpulse status page. One file, no framework: hash routing over four views (overview with
// the in-flight tasks, a task, the WAIT queue, the repairs audit), live updates from the
// server-sent event stream, and a token prompt when the API asks for a bearer token.
//
// Everything shown comes from /api/v1 (same origin). Data is always put into the page with
// textContent / setAttribute, never as HTML, so nothing a worker reports can inject markup.
'use strict';

const TOKEN_KEY = 'taskpulse.token';
const PAGE_SIZE = 50;
const TERMINAL = new Set([
  'COMPLETED', 'COMPLETED_WITH_ERRORS', 'FAILED', 'FAILED_WITH_TERMINAL_ERROR',
  'TIMED_OUT', 'CANCELED', 'SKIPPED',
]);
const SORTS = [
  ['updated', 'Last update'], ['started', 'Start time'], ['progress', 'Progress'],
  ['deadline', 'Deadline'], ['taskId', 'Task id'],
];
// Which in-flight table column shows each sort key (for aria-sort on its header).
const SORT_COLUMN = { started: 'started', progress: 'progress', deadline: 'predicted', taskId: 'task' };

const state = {
  token: readToken(),
  locked: false, // the server wants a token we don't have: show nothing but the prompt
  gen: 0, // bumped on every view change and on sign-out; older responses are then dropped
  tickets: {}, // per-slot request counters, so only the newest response of a slot is shown
  route: { name: 'overview' },
  overview: null,
  list: { taskType: '', workflowType: '', status: '', sort: 'updated', order: 'desc', cursor: null, offset: 0 },
  rows: new Map(), // taskId -> row of the in-flight table on screen
  slots: {}, // containers of the current view that are refreshed on their own
  taskPanel: null, // the in-flight table and pager, kept across refetches
  overviewSeen: '', // the last overview drawn from an event, to skip unchanged ones
  waitIds: [], // the task ids the WAIT table shows
  events: null, // the running event-stream reader
  everConnected: false,
};

// ---------------------------------------------------------------------------------------------
// small helpers

const $ = (sel) => document.querySelector(sel);

// Builds an element: h('a', {href: '#/', class: 'x'}, 'text', child, [more]). Strings become
// text nodes; null/false children and attributes are skipped.
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...nodes(kids));
  return el;
}

// Children as DOM accepts them: nested arrays flattened, null/false dropped (the DOM would
// otherwise print them as "null"), the rest as text.
function nodes(kids) {
  return kids.flat(Infinity).filter((k) => k != null && k !== false).map((k) => (k instanceof Node ? k : String(k)));
}

// Replaces an element's content.
function put(el, ...kids) {
  el.replaceChildren(...nodes(kids));
}

// sessionStorage can throw (storage disabled); the page then just asks again after a reload.
function readToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
function writeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* kept in memory only */ }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const isMissing = (v) => v === null || v === undefined || v === '';
const dash = (v) => (isMissing(v) ? '—' : String(v));

// Runs fn at most once per `ms`: a call inside the window is folded into one trailing run, so a
// burst of events costs one refetch, and the last change is never missed.
function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

// A ticket for one request slot: the response may be shown only while no newer request for the
// same slot has started, the view hasn't changed and we are not locked out.
function ticket(slot) {
  const gen = state.gen;
  const n = (state.tickets[slot] = (state.tickets[slot] || 0) + 1);
  return () => gen === state.gen && state.tickets[slot] === n && !state.locked;
}

// ---------------------------------------------------------------------------------------------
// formatting: times as local time plus relative, durations as humans write them

function fmtDuration(ms) {
  if (isMissing(ms) || !Number.isFinite(Number(ms))) return '—';
  const abs = Math.abs(Number(ms));
  if (abs < 1000) return `${Math.round(abs)} ms`;
  const s = Math.round(abs / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} m ${s % 60} s` : `${m} m`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return m % 60 ? `${hrs} h ${m % 60} m` : `${hrs} h`;
  const d = Math.floor(hrs / 24);
  return hrs % 24 ? `${d} d ${hrs % 24} h` : `${d} d`;
}

// "in 2 m", "5 s ago": one unit only, that is what a glance needs.
function fmtRelative(ms, now = Date.now()) {
  const diff = ms - now;
  const abs = Math.abs(diff);
  if (abs < 1000) return 'now';
  const units = [[86400000, 'd'], [3600000, 'h'], [60000, 'm'], [1000, 's']];
  const [size, unit] = units.find(([u]) => abs >= u);
  const text = `${Math.floor(abs / size)} ${unit}`;
  return diff > 0 ? `in ${text}` : `${text} ago`;
}

function fmtClock(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

// <time> with the local time and a relative part that the ticker keeps current.
function timeEl(ms) {
  if (isMissing(ms) || !Number.isFinite(Number(ms))) return '—';
  const t = Number(ms);
  const d = new Date(t);
  return h('time', { datetime: d.toISOString(), title: d.toString(), 'data-ts': t },
    h('span', { class: 'clock' }, fmtClock(t)), ' ', h('span', { class: 'rel' }, `(${fmtRelative(t)})`));
}

function tickRelativeTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll('time[data-ts] .rel')) {
    el.textContent = `(${fmtRelative(Number(el.parentElement.dataset.ts), now)})`;
  }
}

function fmtNum(v) {
  return isMissing(v) ? '—' : Number(v).toLocaleString();
}

function clampPercent(v) {
  if (isMissing(v) || !Number.isFinite(Number(v))) return null;
  return Math.min(100, Math.max(0, Number(v)));
}

// A badge says its meaning in words; colour only backs it up.
function badge(text, kind) {
  return h('span', { class: `badge ${kind || ''}` }, text);
}

function taskHref(id) {
  return `#/task/${encodeURIComponent(id)}`;
}

function taskLink(id) {
  return isMissing(id) ? '—' : h('a', { href: taskHref(id), class: 'id' }, String(id));
}

// ---------------------------------------------------------------------------------------------
// API: every request goes through apiFetch, which adds the token and handles 401

class ApiError extends Error {
  constructor(endpoint, status, message) {
    super(message);
    this.endpoint = endpoint;
    this.status = status;
  }
}
class AuthNeeded extends Error {}

async function apiFetch(path, options = {}) {
  const headers = Object.assign({ Accept: 'application/json' }, options.headers);
  const sentToken = state.token;
  if (sentToken) headers.Authorization = `Bearer ${sentToken}`;
  let res;
  try {
    res = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(path, 0, 'network error (is taskpulse running?)');
  }
  if (res.status === 401) {
    lockOut(Boolean(sentToken));
    throw new AuthNeeded('token needed');
  }
  return res;
}

async function apiJson(path) {
  const res = await apiFetch(path);
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: the status says enough */ }
  if (!res.ok) {
    throw new ApiError(path, res.status, (body && body.error) || res.statusText || 'request failed');
  }
  return body || {};
}

// An inline error naming the endpoint and status; the rest of the page keeps working.
function errorBox(err) {
  if (err instanceof ApiError) {
    const status = err.status ? `HTTP ${err.status}` : 'no answer';
    return h('p', { class: 'error', role: 'alert' },
      'Could not load ', h('code', {}, `GET ${err.endpoint}`), `: ${status} — ${err.message}`);
  }
  return h('p', { class: 'error', role: 'alert' }, `Something went wrong: ${err && err.message}`);
}

// Loads into a container: the old content stays until the new one is ready (no flicker, no
// scroll jump), stale answers are dropped, failures show inline in that container only.
async function loadInto(slot, el, load) {
  const current = ticket(slot);
  try {
    const content = [await load(current)].flat();
    const same = content.length === el.childNodes.length && content.every((n, i) => el.childNodes[i] === n);
    if (current() && !same) {
      // <details> the user opened stay open through a refetch
      const open = [...el.querySelectorAll('details[open][data-key]')].map((d) => d.dataset.key);
      put(el, content);
      for (const d of el.querySelectorAll('details[data-key]')) if (open.includes(d.dataset.key)) d.open = true;
    }
  } catch (err) {
    if (err instanceof AuthNeeded || !current()) return;
    put(el, errorBox(err));
  }
}

// ---------------------------------------------------------------------------------------------
// auth: a 401 anywhere hides all data and shows the token prompt

function lockOut(tokenWasRejected) {
  if (state.locked) return;
  state.locked = true;
  state.gen++;
  state.token = '';
  writeToken('');
  stopEvents();
  state.overview = null;
  state.overviewSeen = '';
  state.rows.clear();
  state.slots = {};
  state.taskPanel = null;
  state.waitIds = [];
  $('#view').replaceChildren();
  $('#version').textContent = '';
  $('#auth-msg').textContent = tokenWasRejected
    ? 'The token was not accepted. Enter the access token this taskpulse runs with.'
    : 'This taskpulse asks for a token before it shows any task data.';
  $('#auth').hidden = false;
  setLive('off', 'signed out');
  $('#auth-token').focus();
}

function onTokenSubmit(event) {
  event.preventDefault();
  const input = $('#auth-token');
  const token = input.value.trim();
  if (!token) return;
  input.value = '';
  state.token = token;
  writeToken(token);
  state.locked = false;
  $('#auth').hidden = true;
  showRoute(true); // opens the stream once the view knows what to watch
}

// ---------------------------------------------------------------------------------------------
// routing

function parseRoute() {
  const hash = location.hash.replace(/^#/, '') || '/';
  if (hash.startsWith('/task/')) {
    let id = hash.slice('/task/'.length);
    try { id = decodeURIComponent(id); } catch { /* shown as typed */ }
    return { name: 'task', id };
  }
  if (hash === '/wait') return { name: 'wait' };
  if (hash === '/repairs') return { name: 'repairs' };
  return { name: 'overview' };
}

function markNav() {
  const current = state.route.name === 'task' ? '' : state.route.name;
  for (const a of document.querySelectorAll('nav a[data-route]')) {
    if (a.dataset.route === current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

const VIEWS = { overview: overviewView, task: taskView, wait: waitView, repairs: repairsView };

// Builds the current route's view from scratch. `focus`: move focus to its heading, so a
// keyboard or screen-reader user lands on the new content after following a link.
async function showRoute(focus) {
  state.route = parseRoute();
  markNav();
  if (state.locked) return;
  state.gen++;
  state.rows.clear();
  state.slots = {};
  state.taskPanel = null;
  state.waitIds = [];
  const gen = state.gen;
  const view = $('#view');
  view.setAttribute('aria-busy', 'true');
  view.replaceChildren();
  const done = VIEWS[state.route.name](view);
  if (focus) {
    const heading = view.querySelector('h2');
    if (heading) heading.focus({ preventScroll: false });
  }
  await done;
  if (gen !== state.gen) return;
  view.setAttribute('aria-busy', 'false');
  syncWatch();
}

// Refetches what the current view shows (after a resync, or a reconnect that may have missed
// events, or as the poll that stands in for a refused stream), in place. `maxAge` (ms): the
// lists accept an answer the server computed that long ago for another page.
function refreshView(maxAge) {
  if (state.locked) return;
  const name = state.route.name;
  if (name === 'overview') return Promise.all([refreshOverview(), refreshTasks(maxAge)]);
  if (name === 'task') return refreshTask();
  if (name === 'wait') return Promise.all([refreshWaitFigures(), refreshWaitTable(maxAge)]);
  if (name === 'repairs') return refreshRepairs();
}

function viewHeading(text) {
  return h('h2', { tabindex: '-1' }, text);
}

function section(title, id, ...kids) {
  return h('section', { class: 'panel', 'aria-labelledby': id },
    h('h3', { id }, title), ...kids);
}

// ---------------------------------------------------------------------------------------------
// overview view: the figures, then the in-flight tasks table with filters, sort and pages

function overviewView(view) {
  const figures = h('div', { class: 'figures' }, h('p', { class: 'muted' }, 'Loading…'));
  const tasks = h('div', { class: 'tasks' }, h('p', { class: 'muted' }, 'Loading…'));
  state.slots = { figures, tasks };
  view.append(
    viewHeading('Overview'),
    figures,
    h('section', { class: 'panel', 'aria-labelledby': 'inflight-title' },
      h('h3', { id: 'inflight-title' }, 'In-flight tasks'),
      filtersForm(),
      tasks),
  );
  return Promise.all([refreshOverview(), refreshTasks()]);
}

async function fetchOverview() {
  const data = await apiJson('/api/v1/overview');
  applyOverview(data);
  return data;
}

// Keeps the newest overview and what depends on it outside the figures (version, filters).
function applyOverview(data) {
  state.overview = data;
  $('#version').textContent = data && data.version ? `v${data.version}` : '';
  updateFilterOptions();
}

function refreshOverview() {
  const el = state.slots.figures;
  if (!el) return Promise.resolve();
  return loadInto('overview', el, async () => overviewFigures(await fetchOverview()));
}

function overviewFigures(ov) {
  const inFlight = ov.inFlight || {};
  const byStatus = inFlight.byStatus || {};
  const byType = Array.isArray(inFlight.byType) ? inFlight.byType : [];
  const wait = ov.wait || {};
  const checker = ov.checker || {};
  return h('div', { class: 'cards' },
    card('In flight', 'ov-inflight',
      h('p', { class: 'big' }, fmtNum(inFlight.total)),
      dl(Object.entries(byStatus).map(([s, n]) => [s, fmtNum(n)])),
      byType.length ? typeTable(byType) : null),
    // nothing focusable in here: the figures are redrawn every second (the header links to the queue)
    card('WAIT queue', 'ov-wait', waitFigures(wait)),
    card('Predicted to time out', 'ov-late',
      h('p', { class: `big ${ov.predictedLate > 0 ? 'warn-text' : ''}` }, fmtNum(ov.predictedLate)),
      h('p', { class: 'muted' }, 'in-flight tasks expected to finish after their deadline')),
    card('Stalled', 'ov-stalled',
      h('p', { class: `big ${ov.stalled > 0 ? 'warn-text' : ''}` }, fmtNum(ov.stalled)),
      h('p', { class: 'muted' }, 'in-flight tasks whose progress has not moved')),
    card('Consistency checker', 'ov-checker', checkerFigures(checker)),
  );
}

function card(title, id, ...kids) {
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h4', { id }, title), ...kids);
}

function dl(pairs) {
  return h('dl', { class: 'pairs' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function typeTable(byType) {
  return tableWrap(h('table', { class: 'compact' },
    h('caption', {}, 'In-flight tasks by type'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Task type'), h('th', { scope: 'col', class: 'num' }, 'Tasks'))),
    h('tbody', {}, byType.map((t) => h('tr', {}, h('td', {}, dash(t.taskType)), h('td', { class: 'num' }, fmtNum(t.count)))))));
}

function waitFigures(wait) {
  // the label says what the number is; colour only draws the eye to a non-zero one
  const overdue = h('span', { class: Number(wait.overdue) > 0 ? 'bad-text' : null }, fmtNum(wait.overdue));
  return dl([
    ['Waiting', fmtNum(wait.waiting)],
    ['Due within a minute', fmtNum(wait.dueWithinMinute)],
    ['Overdue', overdue],
    ['Wake-up lag', isMissing(wait.wakeLagSeconds) ? '—' : fmtDuration(Number(wait.wakeLagSeconds) * 1000)],
  ]);
}

function checkerFigures(c) {
  const yesNo = (v) => (v === true ? 'yes' : v === false ? 'no' : '—');
  const open = h('span', { class: Number(c.openViolations) > 0 ? 'bad-text' : null }, fmtNum(c.openViolations));
  return dl([
    ['Enabled', yesNo(c.enabled)],
    ['Leader', yesNo(c.leader)],
    ['Last run', timeEl(c.lastRun)],
    ['Open violations', open],
  ]);
}

// ---- filters and sort

function selectControl(id, label, options, value, onChange) {
  const select = h('select', { id, name: id, onchange: (e) => onChange(e.target.value) },
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  return h('div', { class: 'control' }, h('label', { for: id }, label), select);
}

function filtersForm() {
  const l = state.list;
  const set = (key) => (value) => {
    l[key] = value;
    if (key === 'sort') setOrder(DESC_FIRST.has(value) ? 'desc' : 'asc');
    l.cursor = null; // a filter or order change starts again at the first page
    l.offset = 0;
    refreshTasks();
  };
  return h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter and sort in-flight tasks', onsubmit: (e) => e.preventDefault() },
    selectControl('f-task-type', 'Task type', typeOptions('taskTypes', l.taskType), l.taskType, set('taskType')),
    selectControl('f-workflow-type', 'Workflow type', typeOptions('workflowTypes', l.workflowType), l.workflowType, set('workflowType')),
    selectControl('f-status', 'Status', [['', 'All'], ['SCHEDULED', 'SCHEDULED'], ['IN_PROGRESS', 'IN_PROGRESS']], l.status, set('status')),
    selectControl('f-sort', 'Sort by', SORTS, l.sort, set('sort')),
    selectControl('f-order', 'Order', [['desc', 'Descending'], ['asc', 'Ascending']], l.order, set('order')),
  );
}

// A new sort key comes in its natural order: newest/most first for times and progress, soonest
// deadline and A-Z ids first; the order select can still flip it.
const DESC_FIRST = new Set(['updated', 'started', 'progress']);
function setOrder(order) {
  state.list.order = order;
  const select = document.getElementById('f-order');
  if (select) select.value = order;
}

// Options of a type filter from the overview; a chosen value stays even if it left the list.
function typeOptions(key, chosen) {
  const names = (state.overview && Array.isArray(state.overview[key])) ? state.overview[key].map(String) : [];
  if (chosen && !names.includes(chosen)) names.push(chosen);
  return [['', 'All'], ...names.sort().map((n) => [n, n])];
}

function updateFilterOptions() {
  for (const [id, key, listKey] of [['f-task-type', 'taskTypes', 'taskType'], ['f-workflow-type', 'workflowTypes', 'workflowType']]) {
    const select = document.getElementById(id);
    if (!select) continue;
    const chosen = state.list[listKey];
    const opts = typeOptions(key, chosen);
    const same = opts.length === select.options.length && opts.every(([v], i) => select.options[i].value === v);
    if (same) continue; // leave an open select alone when nothing changed
    select.replaceChildren(...opts.map(([v, text]) => h('option', { value: v, selected: v === chosen }, text)));
  }
}

// ---- the in-flight table

// `maxAge` (ms): a refresh that only looks for new tasks accepts an answer the server computed
// that long ago for another page, so many open pages cost the server one walk of its tasks.
function listUrl(maxAge) {
  const l = state.list;
  const q = new URLSearchParams({ inFlight: 'true', sort: l.sort, order: l.order, limit: String(PAGE_SIZE) });
  if (maxAge) q.set('maxAge', String(maxAge));
  if (l.taskType) q.set('taskType', l.taskType);
  if (l.workflowType) q.set('workflowType', l.workflowType);
  if (l.status) q.set('status', l.status);
  if (l.cursor) q.set('cursor', l.cursor);
  return `/api/v1/tasks?${q}`;
}

function refreshTasks(maxAge) {
  const el = state.slots.tasks;
  if (!el) return Promise.resolve();
  return loadInto('tasks', el, async (current) => {
    const data = await apiJson(listUrl(maxAge));
    if (!current()) return [];
    const panel = state.taskPanel || (state.taskPanel = taskPanel());
    updateTaskPanel(panel, data);
    queueMicrotask(syncWatch); // the shown rows are the ones the stream should watch
    return panel.nodes;
  });
}

// The in-flight table and its pager are built once per visit and then updated in place: the
// page is refetched every few seconds under load, and that must not take keyboard focus away
// from a link or button the user is on.
function taskPanel() {
  const l = state.list;
  const panel = { thead: h('thead'), tbody: h('tbody'), text: h('span', { class: 'muted', 'aria-live': 'polite' }), nextCursor: null, count: 0 };
  panel.first = h('button', { type: 'button', onclick: () => { l.cursor = null; l.offset = 0; refreshTasks(); } }, 'First page');
  panel.next = h('button', {
    type: 'button',
    onclick: () => {
      if (!panel.nextCursor) return;
      l.cursor = panel.nextCursor;
      l.offset += panel.count;
      refreshTasks();
    },
  }, 'Next page');
  panel.nodes = [
    tableWrap(h('table', { class: 'tasks-table' }, h('caption', {}, 'In-flight tasks'), panel.thead, panel.tbody)),
    h('div', { class: 'pager' }, panel.first, panel.next, panel.text),
  ];
  return panel;
}

function updateTaskPanel(panel, data) {
  const l = state.list;
  const tasks = Array.isArray(data.tasks) ? data.tasks : [];
  const sortCol = SORT_COLUMN[l.sort];
  const sortDir = l.order === 'asc' ? 'ascending' : 'descending';
  put(panel.thead, h('tr', {}, COLUMNS.map(([key, title]) =>
    h('th', { scope: 'col', class: `col-${key}`, 'aria-sort': key === sortCol ? sortDir : null }, title))));
  // rows already on screen are refilled and kept, new ones built
  const rows = new Map();
  const trs = tasks.map((t) => {
    const id = String(t.taskId);
    let row = state.rows.get(id);
    if (row) fillRow(row, t); else row = taskRow(t);
    rows.set(id, row);
    return row.tr;
  });
  if (!trs.length) trs.push(h('tr', {}, h('td', { colspan: COLUMNS.length, class: 'empty' }, 'No in-flight tasks match.')));
  arrange(panel.tbody, trs);
  state.rows = rows;
  // the pager
  panel.nextCursor = data.next || null;
  panel.count = tasks.length;
  panel.first.disabled = !l.cursor && l.offset === 0;
  panel.next.disabled = !data.next;
  const total = isMissing(data.total) ? null : Number(data.total);
  const range = tasks.length ? `${l.offset + 1}–${l.offset + tasks.length}` : '0';
  const text = total === null ? `${range} shown` : `${range} of ${total.toLocaleString()}`;
  if (panel.text.textContent !== text) panel.text.textContent = text;
}

// Puts `children` into `parent` in order, moving only what is out of place (an element that is
// removed and re-inserted loses focus), and removes the rest.
function arrange(parent, children) {
  let at = parent.firstChild;
  for (const child of children) {
    if (child === at) at = at.nextSibling;
    else parent.insertBefore(child, at);
  }
  while (at) {
    const next = at.nextSibling;
    at.remove();
    at = next;
  }
}

const COLUMNS = [
  ['task', 'Task'], ['type', 'Type'], ['workflow', 'Workflow'], ['status', 'Status'],
  ['progress', 'Progress'], ['worker', 'Worker'], ['started', 'Started'],
  ['predicted', 'Predicted / deadline'],
];

// One row; its cells are kept so that a live update can refill them in place (the task link
// stays the same element, so keyboard focus on it survives an update).
function taskRow(t) {
  const cells = {};
  const tr = h('tr', {});
  for (const [key] of COLUMNS) {
    cells[key] = h('td', { class: `col-${key}` });
    tr.append(cells[key]);
  }
  cells.task.append(taskLink(t.taskId));
  const row = { tr, cells };
  fillRow(row, t);
  return row;
}

function fillRow(row, t) {
  const c = row.cells;
  put(c.type, dash(t.taskType));
  put(c.workflow, h('span', {}, dash(t.workflowType)), h('br'), h('span', { class: 'muted id' }, dash(t.workflowId)));
  fillStatus(row, t);
  fillProgress(c.progress, t);
  put(c.worker, dash(t.workerId));
  put(c.started, timeEl(t.startTime));
  put(c.predicted, predictedContent(t));
}

function fillStatus(row, t) {
  const finished = TERMINAL.has(t.status);
  row.tr.classList.toggle('finished', finished);
  // the stalled marker sits with the status: one column less to scroll at narrow widths
  put(row.cells.status, statusBadge(t.status), finished ? [' ', h('span', { class: 'muted' }, '(finished)')] : null,
    t.stalled ? [' ', badge('⚠ stalled', 'warn')] : null);
}

function statusBadge(status) {
  const kind = { IN_PROGRESS: 'info', SCHEDULED: '', COMPLETED: 'ok', SKIPPED: '' }[status];
  return badge(dash(status), kind === undefined ? 'bad' : kind);
}

// The progress bar: role=progressbar with its value, and an inner bar sized from JS (the CSP
// allows element.style, not style attributes). No percent: a dash and no progressbar.
function fillProgress(cell, t) {
  const p = clampPercent(t.progressPercent);
  const bar = cell.querySelector('[role="progressbar"]');
  if (p !== null && bar) {
    setBar(bar, p);
    cell.querySelector('.pct').textContent = `${Math.round(p)} %`;
    cell.querySelector('.msg').textContent = t.progressMessage || '';
    return;
  }
  put(cell, progressContent(t, `Progress of task ${t.taskId}`));
}

function progressContent(t, label) {
  const p = clampPercent(t.progressPercent);
  if (p === null) {
    return [h('span', { class: 'muted' }, '—'), t.progressMessage ? h('span', { class: 'msg' }, ' ', t.progressMessage) : null];
  }
  const fill = h('span', { class: 'fill' });
  const bar = h('div', {
    class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': label,
  }, fill);
  setBar(bar, p);
  return [h('div', { class: 'progress' }, bar, h('span', { class: 'pct' }, `${Math.round(p)} %`)),
    h('span', { class: 'msg' }, t.progressMessage || '')];
}

function setBar(bar, p) {
  bar.setAttribute('aria-valuenow', String(Math.round(p)));
  bar.firstChild.style.width = `${p}%`;
}

// Predicted completion against the deadline; late is said in words and marked in colour.
function predictedContent(t) {
  return [
    h('div', {}, h('span', { class: 'muted' }, 'predicted '), timeEl(t.predictedCompletion)),
    h('div', {}, h('span', { class: 'muted' }, 'deadline '), timeEl(t.deadline)),
    t.predictedLate ? h('div', {}, badge('✕ late: predicted after deadline', 'bad')) : null,
  ];
}

function tableWrap(table) {
  return h('div', { class: 'table-wrap' }, table);
}

// ---------------------------------------------------------------------------------------------
// task view

function taskView(view) {
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  state.slots = { task: body };
  view.append(
    h('p', { class: 'back' }, h('a', { href: '#/' }, '← In-flight tasks')),
    viewHeading(`Task ${state.route.id}`),
    body);
  return refreshTask();
}

function refreshTask() {
  const el = state.slots.task;
  if (!el) return Promise.resolve();
  const id = state.route.id;
  const enc = encodeURIComponent(id);
  return loadInto('task', el, async () => {
    // The repairs are their own request: when they fail, the task is still shown.
    const repairs = apiJson(`/api/v1/repairs?taskId=${enc}`).then((r) => ({ r }), (err) => ({ err }));
    let task;
    try {
      // the query form: a browser would resolve an id of `.` or `..` in a path
      task = await apiJson(`/api/v1/task?taskId=${enc}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        return h('p', { class: 'notice' }, 'Unknown task: taskpulse has no task ', h('code', {}, id), '.');
      }
      throw err;
    }
    return taskDetails(task, await repairs);
  });
}

function taskDetails(t, repairs) {
  const late = t.predictedLate ? [' ', badge('✕ late: predicted after deadline', 'bad')] : null;
  const fields = [
    ['Status', [statusBadge(t.status), t.stalled ? [' ', badge('⚠ stalled', 'warn')] : null]],
    ['Progress', progressContent(t, `Progress of task ${t.taskId}`)],
    ['Task type', dash(t.taskType)],
    ['Workflow', [dash(t.workflowType), ' ', h('span', { class: 'id muted' }, dash(t.workflowId))]],
    ['Reference name', dash(t.referenceTaskName)],
    ['Seq / iteration', `${dash(t.seq)} / ${dash(t.iteration)}`],
    ['Retry count / attempt', `${dash(t.retryCount)} / ${dash(t.attempt)}`],
    ['Worker', dash(t.workerId)],
    ['Started', timeEl(t.startTime)],
    ['Last update', timeEl(t.updateTime)],
    ['Progress changed', timeEl(t.progressChanged)],
    ['Deadline', timeEl(t.deadline)],
    ['Predicted completion', [timeEl(t.predictedCompletion), late]],
    ['Timeout', isMissing(t.timeoutSeconds) ? '—' : fmtDuration(t.timeoutSeconds * 1000)],
    ['Response timeout', isMissing(t.responseTimeoutSeconds) ? '—' : fmtDuration(t.responseTimeoutSeconds * 1000)],
    ['Wait until', timeEl(t.waitUntil)],
    ['First seen', timeEl(t.firstSeen)],
    ['Last seen', timeEl(t.lastSeen)],
    ['Finished', timeEl(t.terminalAt)],
  ];
  return [
    t.historyUnavailable ? h('p', { class: 'warning', role: 'alert' }, '⚠ History unavailable: ', String(t.historyUnavailable)) : null,
    section('Details', 'task-details', dl(fields), extraFields(t)),
    section('Progress over time', 'task-chart', progressChart(chartPoints(t))),
    section('Attempts', 'task-attempts', attemptsTable(t.attempts)),
    section('History', 'task-history', historyTable(t.history)),
    section('Repairs', 'task-repairs', repairs.err ? errorBox(repairs.err) : repairsTable(repairs.r.repairs, false)),
  ];
}

// Fields the server sends that this page doesn't know yet are still shown, as they are.
const KNOWN_FIELDS = new Set(['taskId', 'workflowId', 'taskType', 'workflowType', 'referenceTaskName', 'seq',
  'iteration', 'retryCount', 'status', 'progressPercent', 'progressMessage', 'workerId', 'startTime',
  'updateTime', 'timeoutSeconds', 'responseTimeoutSeconds', 'waitUntil', 'firstSeen', 'lastSeen',
  'progressChanged', 'terminalAt', 'attempt', 'deadline', 'predictedCompletion', 'predictedLate', 'stalled',
  'history', 'attempts', 'progressSamples', 'historyUnavailable']);

function extraFields(t) {
  const extra = Object.entries(t).filter(([k, v]) => !KNOWN_FIELDS.has(k) && (v === null || typeof v !== 'object'));
  return extra.length ? h('details', { 'data-key': 'extra' }, h('summary', {}, 'Other fields'), dl(extra.map(([k, v]) => [k, dash(v)]))) : null;
}

function attemptsTable(attempts) {
  const list = Array.isArray(attempts) ? attempts : [];
  return simpleTable('Attempts and their workers',
    ['Attempt', 'Worker', 'Host', 'Status', 'Started', 'Ended', 'First seen', 'Last seen'],
    list.map((a) => [dash(a.attempt), dash(a.workerId), dash(a.host), a.status ? statusBadge(a.status) : '—',
      timeEl(a.startTime), timeEl(a.endTime), timeEl(a.firstSeen), timeEl(a.lastSeen)]),
    'No attempts recorded.', 'attempts-table');
}

function historyTable(history) {
  const list = Array.isArray(history) ? history : [];
  const rows = list.map((e) => {
    const accepted = e.outcome !== 'rejected';
    const outcome = e.outcome === 'accepted' ? badge('✓ accepted', 'ok')
      : e.outcome === 'reopened' ? badge('↺ reopened', 'info') : badge(`✕ ${dash(e.outcome)}`, 'bad');
    const count = Number(e.count) > 1
      ? [`×${e.count}`, e.lastAt ? [' (last ', timeEl(e.lastAt), ')'] : null] : '';
    const progress = clampPercent(e.progressPercent);
    return {
      class: accepted ? null : 'rejected',
      cells: [timeEl(e.at), outcome, `${dash(e.from)} → ${dash(e.to)}`, dash(e.reason), dash(e.workerId),
        progress === null ? '—' : `${Math.round(progress)} %`, count],
    };
  });
  return simpleTable('History, newest first',
    ['At', 'Outcome', 'From → to', 'Reason', 'Worker', 'Progress', 'Count'], rows, 'No history.', 'history-table');
}

// A plain table: rows are arrays of cells, or {class, cells}.
function simpleTable(caption, headers, rows, emptyText, cls) {
  const body = h('tbody', {}, rows.map((r) => {
    const cells = Array.isArray(r) ? r : r.cells;
    return h('tr', { class: Array.isArray(r) ? null : r.class }, cells.map((c) => h('td', {}, c)));
  }));
  if (!rows.length) body.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, emptyText)));
  return tableWrap(h('table', { class: cls || null }, h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), body));
}

// Progress points over time: the samples, plus the progress of accepted history lines.
function chartPoints(t) {
  const points = [];
  if (Array.isArray(t.progressSamples)) {
    for (const s of t.progressSamples) {
      if (Array.isArray(s) && Number.isFinite(Number(s[0])) && clampPercent(s[1]) !== null) points.push([Number(s[0]), clampPercent(s[1])]);
    }
  }
  if (Array.isArray(t.history)) {
    for (const e of t.history) {
      if (e.outcome === 'accepted' && Number.isFinite(Number(e.at)) && clampPercent(e.progressPercent) !== null) {
        points.push([Number(e.at), clampPercent(e.progressPercent)]);
      }
    }
  }
  points.sort((a, b) => a[0] - b[0]);
  return points.filter((p, i) => i === 0 || p[0] !== points[i - 1][0] || p[1] !== points[i - 1][1]);
}

// A small hand-drawn SVG line chart: percent (0-100) over time.
function progressChart(points) {
  if (!points.length) return h('p', { class: 'muted' }, 'No progress reported yet.');
  // narrower drawing on a phone, so the axis text keeps a readable size when scaled down
  const W = window.innerWidth < 600 ? 360 : 600, H = 170, L = 40, R = 12, T = 10, B = 26;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const span = t1 - t0 || 1;
  const x = (ms) => L + ((ms - t0) / span) * (W - L - R);
  const y = (p) => T + (1 - p / 100) * (H - T - B);
  const first = points[0], last = points[points.length - 1];
  const svg = svgEl('svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
    'aria-label': `Progress from ${Math.round(first[1])} % at ${fmtClock(first[0])} to ${Math.round(last[1])} % at ${fmtClock(last[0])}, ${points.length} points`,
  });
  for (const p of [0, 50, 100]) {
    svg.append(svgEl('line', { x1: L, x2: W - R, y1: y(p), y2: y(p), class: 'grid' }));
    svg.append(svgEl('text', { x: L - 6, y: y(p) + 4, class: 'axis', 'text-anchor': 'end' }, `${p}%`));
  }
  svg.append(svgEl('text', { x: L, y: H - 6, class: 'axis' }, fmtClock(t0)));
  if (t1 !== t0) svg.append(svgEl('text', { x: W - R, y: H - 6, class: 'axis', 'text-anchor': 'end' }, fmtClock(t1)));
  svg.append(svgEl('polyline', { points: points.map(([ms, p]) => `${x(ms).toFixed(1)},${y(p).toFixed(1)}`).join(' '), class: 'line' }));
  if (points.length <= 40) {
    for (const [ms, p] of points) svg.append(svgEl('circle', { cx: x(ms).toFixed(1), cy: y(p).toFixed(1), r: 3, class: 'point' }));
  }
  return h('div', { class: 'chart-wrap' }, svg);
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text) el.textContent = text;
  return el;
}

// ---------------------------------------------------------------------------------------------
// WAIT queue view

function waitView(view) {
  const figures = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const table = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  state.slots = { waitFigures: figures, waitTable: table };
  view.append(viewHeading('WAIT queue'),
    section('Queue', 'wait-figures', figures),
    section('Waiting tasks, soonest wake-up first', 'wait-tasks', table));
  return Promise.all([refreshWaitFigures(), refreshWaitTable()]);
}

function refreshWaitFigures() {
  const el = state.slots.waitFigures;
  if (!el) return Promise.resolve();
  return loadInto('waitFigures', el, async () => waitFigures((await fetchOverview()).wait || {}));
}

// The API's inFlight leaves WAIT tasks out by definition, so this asks for all WAIT tasks and
// marks the finished ones (they stay in memory a while after they end).
function refreshWaitTable(maxAge) {
  const el = state.slots.waitTable;
  if (!el) return Promise.resolve();
  const shared = maxAge ? `&maxAge=${maxAge}` : '';
  return loadInto('waitTable', el, async (current) => {
    const data = await apiJson(`/api/v1/tasks?waiting=true&sort=waitUntil&order=asc&limit=50${shared}`);
    const tasks = Array.isArray(data.tasks) ? data.tasks : [];
    const now = Date.now();
    const rows = tasks.map((t) => {
      const finished = TERMINAL.has(t.status);
      const overdue = !finished && Number.isFinite(Number(t.waitUntil)) && Number(t.waitUntil) < now;
      return {
        class: finished ? 'finished' : null,
        cells: [taskLink(t.taskId), [dash(t.workflowType), ' ', h('span', { class: 'id muted' }, dash(t.workflowId))],
          [timeEl(t.waitUntil), overdue ? [' ', badge('overdue', 'bad')] : null],
          [statusBadge(t.status), finished ? [' ', h('span', { class: 'muted' }, '(finished)')] : null]],
      };
    });
    if (current()) {
      state.waitIds = tasks.map((t) => String(t.taskId));
      queueMicrotask(syncWatch);
    }
    const shown = isMissing(data.total) ? '' : `${tasks.length} of ${Number(data.total).toLocaleString()} shown`;
    return [simpleTable('WAIT tasks', ['Task', 'Workflow', 'Wait until', 'Status'], rows, 'No task is waiting.'),
      shown ? h('p', { class: 'muted' }, shown) : null];
  });
}

// ---------------------------------------------------------------------------------------------
// repairs view

function repairsView(view) {
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  state.slots = { repairs: body };
  view.append(viewHeading('Repairs'),
    h('p', { class: 'muted' }, 'What the consistency checker found and changed, newest first.'),
    body);
  return refreshRepairs();
}

function refreshRepairs() {
  const el = state.slots.repairs;
  if (!el) return Promise.resolve();
  return loadInto('repairs', el, async () => repairsTable((await apiJson('/api/v1/repairs?limit=100')).repairs, true));
}

function repairsTable(repairs, withTask) {
  const list = Array.isArray(repairs) ? repairs : [];
  const headers = ['At', 'Rule', ...(withTask ? ['Task', 'Workflow'] : []), 'Outcome', 'Detail', 'Before / after / evidence'];
  const rows = list.map((r) => [timeEl(r.at), dash(r.rule),
    ...(withTask ? [taskLink(r.taskId), h('span', { class: 'id' }, dash(r.workflowId))] : []),
    badge(dash(r.outcome), r.outcome === 'repaired' ? 'ok' : r.outcome === 'skipped' ? '' : 'bad'),
    h('span', { class: 'detail' }, dash(r.detail)), repairEvidence(r)]);
  return simpleTable(withTask ? 'Repairs' : 'Repairs of this task', headers, rows, 'No repairs.', 'repairs-table');
}

function repairEvidence(r) {
  const parts = [['Before', r.before], ['After', r.after], ['Evidence', r.evidence]].filter(([, v]) => !isMissing(v));
  if (!parts.length) return '—';
  return h('details', { 'data-key': `repair-${r.id}` }, h('summary', {}, 'Show'),
    parts.map(([k, v]) => [h('p', { class: 'ev-title' }, k), h('pre', {}, typeof v === 'string' ? v : JSON.stringify(v, null, 2))]));
}

// ---------------------------------------------------------------------------------------------
// live updates: GET /api/v1/events read with fetch (EventSource can't send the token)
//
// The stream is told which tasks the view shows (`watch=id,id`, at most 200): it sends those
// when they change (`tasks`), a count of updates accepted anywhere (`changed`), and the
// overview (`overview`); `resync` asks for a full refetch.

// `why`: the longer story, on hover (the server's reason for refusing the stream).
function setLive(kind, text, why) {
  const el = $('#live');
  el.dataset.state = kind;
  if (why) el.title = why;
  else el.removeAttribute('title');
  const t = $('#live-text');
  if (t.textContent !== text) t.textContent = text;
}

const MAX_WATCHED = 200;

// The task ids the current view shows, which the stream should report on.
function watchedIds() {
  const r = state.route;
  if (r.name === 'overview') return [...state.rows.keys()];
  if (r.name === 'task') return [r.id];
  if (r.name === 'wait') return state.waitIds || [];
  return [];
}

// (Re)opens the stream when the view's task ids differ from what the open stream watches.
function syncWatch() {
  if (state.locked) return;
  const watch = watchedIds().slice(0, MAX_WATCHED).map(encodeURIComponent).join(',');
  if (state.events && state.events.watch === watch) return;
  startEvents(watch);
}

function startEvents(watch) {
  stopEvents();
  const run = { stopped: false, ctrl: null, watch };
  state.events = run;
  eventLoop(run);
}

function stopEvents() {
  const run = state.events;
  if (!run) return;
  run.stopped = true;
  if (run.ctrl) run.ctrl.abort();
  state.events = null;
}

// Connects, reads until the stream ends or fails, then waits 1 s, 2 s, 4 s, ... (at most 10 s)
// and connects again. After a reconnect the view is refetched: events may have been missed.
// A new watch list opens a new stream at once; its first event brings every watched task, so
// nothing is missed and no refetch is needed then.
// While the server refuses the stream (every stream slot taken, or streams off because
// `--max-connections` is too small to spare one), the page polls instead: each wait ends with
// a refetch of the view, its lists accepting a shared answer up to a second old.
async function eventLoop(run) {
  let failures = 0;
  let reconnect = false;
  let refused = ''; // the server's reason, when it refused the stream this round
  if (!state.everConnected) setLive('connecting', 'connecting…');
  const url = run.watch ? `/api/v1/events?watch=${run.watch}` : '/api/v1/events';
  while (!run.stopped) {
    run.ctrl = new AbortController();
    refused = '';
    try {
      const res = await apiFetch(url, { signal: run.ctrl.signal, headers: { Accept: 'text/event-stream' } });
      if (!res.ok || !res.body) {
        refused = await refusalReason(res);
        throw new Error(`HTTP ${res.status}`);
      }
      setLive('live', 'connected');
      if (reconnect) refreshView();
      state.everConnected = true;
      // the backoff starts over only for a stream that delivered something: a server that
      // answers and hangs up at once (shutting down) is not hammered every second
      if (await readEvents(res.body, run)) failures = 0;
    } catch (err) {
      if (err instanceof AuthNeeded || run.stopped) return;
    }
    reconnect = true;
    if (run.stopped) return;
    const delay = Math.min(10, 2 ** failures++);
    if (refused) setLive('polling', `no live updates: refreshing every ${delay} s`, refused);
    else setLive('reconnecting', `reconnecting in ${delay} s`);
    await sleep(delay * 1000);
    if (refused && !run.stopped) refreshView(POLL_MAX_AGE);
  }
}

// How old a shared list answer the polling page accepts (ms).
const POLL_MAX_AGE = 1000;

// The reason a refused stream's answer gives (its JSON `error`), else its status.
async function refusalReason(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  return (body && typeof body.error === 'string' && body.error) || `HTTP ${res.status}`;
}

// Reads the stream until it ends; tells whether any event came.
async function readEvents(body, run) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let got = false;
  const parser = sseParser((type, data) => { got = true; if (!run.stopped) onEvent(type, data); });
  for (;;) {
    const { done, value } = await reader.read();
    if (done || run.stopped) break;
    parser(decoder.decode(value, { stream: true }));
  }
  parser(decoder.decode());
  return got;
}

// SSE framing: `event:` and `data:` lines, a blank line ends an event, `:` lines are comments,
// several data lines join with "\n". A line may be split across chunks, and a CR LF pair too.
function sseParser(dispatch) {
  let buffer = '';
  let type = '';
  let data = [];
  const line = (text) => {
    if (text === '') {
      if (data.length) dispatch(type || 'message', data.join('\n'));
      type = '';
      data = [];
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  };
  return (chunk) => {
    buffer += chunk;
    for (;;) {
      const m = /\r\n|\n|\r/.exec(buffer);
      if (!m || (m[0] === '\r' && m.index === buffer.length - 1)) break; // wait: maybe CR LF
      line(buffer.slice(0, m.index));
      buffer = buffer.slice(m.index + m[0].length);
    }
  };
}

function onEvent(type, raw) {
  if (state.locked) return;
  let data;
  try { data = JSON.parse(raw); } catch { return; }
  if (type === 'tasks' && data && Array.isArray(data.tasks)) onTasksChanged(data.tasks);
  else if (type === 'changed') onSomethingChanged();
  else if (type === 'overview' && data) onOverview(data);
  else if (type === 'resync') refreshView();
}

// The overview comes about once a second; it is redrawn only when a figure changed.
function onOverview(data) {
  const figures = JSON.stringify(Object.assign({}, data, { at: null }));
  if (figures === state.overviewSeen) return;
  state.overviewSeen = figures;
  applyOverview(data);
  if (state.slots.figures) put(state.slots.figures, overviewFigures(data));
  if (state.slots.waitFigures) put(state.slots.waitFigures, waitFigures(data.wait || {}));
}

const refetchTasksSoon = throttle(() => { if (state.route.name === 'overview') refreshTasks(); }, 1000);
const refetchTaskSoon = throttle(() => { if (state.route.name === 'task') refreshTask(); }, 1000);
const refetchWaitSoon = throttle(() => { if (state.route.name === 'wait') refreshWaitTable(); }, 2000);
// `changed` comes with any update anywhere: at most one refetch of the page every 2 s for it.
const refetchTasksChanged = throttle(() => { if (state.route.name === 'overview') refreshTasks(1000); }, 2000);

function onTasksChanged(tasks) {
  const route = state.route;
  if (route.name === 'overview') {
    let missing = false;
    for (const t of tasks) {
      const row = state.rows.get(String(t.taskId));
      if (row) fillRow(row, t);
      else if (matchesList(t)) missing = true;
    }
    // Only the first page in the default order knows where a new task goes: the top.
    const l = state.list;
    if (missing && !l.cursor && l.sort === 'updated' && l.order === 'desc') refetchTasksSoon();
  } else if (route.name === 'task') {
    if (tasks.some((t) => String(t.taskId) === route.id)) refetchTaskSoon();
  } else if (route.name === 'wait') {
    if (tasks.some((t) => t.taskType === 'WAIT')) refetchWaitSoon();
  }
}

// Updates were accepted somewhere: views that list the newest tasks fetch their page again.
function onSomethingChanged() {
  const l = state.list;
  const name = state.route.name;
  if (name === 'overview' && !l.cursor && l.sort === 'updated' && l.order === 'desc') refetchTasksChanged();
  else if (name === 'wait') refetchWaitSoon();
}

function matchesList(t) {
  const l = state.list;
  // the server's "in flight": not finished and not a WAIT task (those are the WAIT queue)
  return !TERMINAL.has(t.status) && t.taskType !== 'WAIT' && (!l.taskType || t.taskType === l.taskType)
    && (!l.workflowType || t.workflowType === l.workflowType) && (!l.status || t.status === l.status);
}

// ---------------------------------------------------------------------------------------------
// start

function start() {
  $('#auth-form').addEventListener('submit', onTokenSubmit);
  window.addEventListener('hashchange', () => showRoute(true));
  setInterval(tickRelativeTimes, 5000);
  showRoute(false); // opens the stream once the view knows what to watch
}

start();
