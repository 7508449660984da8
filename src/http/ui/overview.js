// Overview view: the figures, then the in-flight tasks table with filters, sort and pages.
import { h, put, throttle } from './helpers.js';
import { apiJson, loadInto } from './api.js';
import { fetchOverview, overviewData, overviewFigures } from './figures.js';
import { fillRow, taskPanel, updateTaskPanel } from './inflight.js';
import { syncWatch } from './live.js';
import { TERMINAL, viewHeading } from './widgets.js';

const PAGE_SIZE = 50;
const SORTS = [
  ['updated', 'Last update'], ['started', 'Start time'], ['progress', 'Progress'],
  ['deadline', 'Deadline'], ['taskId', 'Task id'],
];
// A new sort key comes in its natural order: newest/most first for times and progress, soonest
// deadline and A-Z ids first; the order select can still flip it.
const DESC_FIRST = new Set(['updated', 'started', 'progress']);

// The filters, sort and page: kept while the user looks at other views.
const list = { taskType: '', workflowType: '', status: '', sort: 'updated', order: 'desc', cursor: null, offset: 0 };
// This visit: its containers and the in-flight panel (built on the first answer); null while
// another view is shown.
let visit = null;

const refetchTasksSoon = throttle(() => refreshTasks(), 1000);
// `changed` comes with any update anywhere: at most one refetch of the page every 2 s for it.
const refetchTasksChanged = throttle(() => refreshTasks(1000), 2000);

export const overviewView = {
  mount(view) {
    const figures = h('div', { class: 'figures' }, h('p', { class: 'muted' }, 'Loading…'));
    const tasks = h('div', { class: 'tasks' }, h('p', { class: 'muted' }, 'Loading…'));
    visit = { figures, tasks, panel: null };
    view.append(
      viewHeading('Overview'),
      figures,
      h('section', { class: 'panel', 'aria-labelledby': 'inflight-title' },
        h('h3', { id: 'inflight-title' }, 'In-flight tasks'),
        filtersForm(),
        tasks),
    );
    return Promise.all([refreshFigures(), refreshTasks()]);
  },
  unmount() {
    visit = null;
  },
  refresh(maxAge) {
    return Promise.all([refreshFigures(), refreshTasks(maxAge)]);
  },
  watched() {
    return visit && visit.panel ? [...visit.panel.rows.keys()] : [];
  },
  // Rows on screen are refilled in place. Only the first page in the default order knows
  // where a new task goes: the top.
  onTasks(tasks) {
    const rows = visit && visit.panel ? visit.panel.rows : new Map();
    let missing = false;
    for (const t of tasks) {
      const row = rows.get(String(t.taskId));
      if (row) fillRow(row, t);
      else if (matchesList(t)) missing = true;
    }
    if (missing && newestFirstPage()) refetchTasksSoon();
  },
  // Updates were accepted somewhere: the first page of the newest tasks is fetched again.
  onChanged() {
    if (newestFirstPage()) refetchTasksChanged();
  },
  onOverview(data) {
    updateFilterOptions();
    if (visit) put(visit.figures, overviewFigures(data));
  },
};

function refreshFigures() {
  const el = visit && visit.figures;
  if (!el) return Promise.resolve();
  return loadInto('overview', el, async () => {
    const data = await fetchOverview();
    updateFilterOptions();
    return overviewFigures(data);
  });
}

// ---- the in-flight table

// `maxAge` (ms): a refresh that only looks for new tasks accepts an answer the server computed
// that long ago for another page, so many open pages cost the server one walk of its tasks.
function listUrl(maxAge) {
  const q = new URLSearchParams({ inFlight: 'true', sort: list.sort, order: list.order, limit: String(PAGE_SIZE) });
  if (maxAge) q.set('maxAge', String(maxAge));
  if (list.taskType) q.set('taskType', list.taskType);
  if (list.workflowType) q.set('workflowType', list.workflowType);
  if (list.status) q.set('status', list.status);
  if (list.cursor) q.set('cursor', list.cursor);
  return `/api/v1/tasks?${q}`;
}

const pager = {
  first() {
    list.cursor = null;
    list.offset = 0;
    refreshTasks();
  },
  next(cursor, count) {
    list.cursor = cursor;
    list.offset += count;
    refreshTasks();
  },
};

function refreshTasks(maxAge) {
  const v = visit;
  if (!v) return Promise.resolve();
  return loadInto('tasks', v.tasks, async (current) => {
    const data = await apiJson(listUrl(maxAge));
    if (!current()) return [];
    const panel = v.panel || (v.panel = taskPanel(pager));
    updateTaskPanel(panel, data, list);
    queueMicrotask(syncWatch); // the shown rows are the ones the stream should watch
    return panel.nodes;
  });
}

function newestFirstPage() {
  return !list.cursor && list.sort === 'updated' && list.order === 'desc';
}

function matchesList(t) {
  // the server's "in flight": not finished and not a WAIT task (those are the WAIT queue)
  return !TERMINAL.has(t.status) && t.taskType !== 'WAIT' && (!list.taskType || t.taskType === list.taskType)
    && (!list.workflowType || t.workflowType === list.workflowType) && (!list.status || t.status === list.status);
}

// ---- filters and sort

function selectControl(id, label, options, value, onChange) {
  const select = h('select', { id, name: id, onchange: (e) => onChange(e.target.value) },
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
  return h('div', { class: 'control' }, h('label', { for: id }, label), select);
}

function filtersForm() {
  const set = (key) => (value) => {
    list[key] = value;
    if (key === 'sort') setOrder(DESC_FIRST.has(value) ? 'desc' : 'asc');
    list.cursor = null; // a filter or order change starts again at the first page
    list.offset = 0;
    refreshTasks();
  };
  return h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter and sort in-flight tasks', onsubmit: (e) => e.preventDefault() },
    selectControl('f-task-type', 'Task type', typeOptions('taskTypes', list.taskType), list.taskType, set('taskType')),
    selectControl('f-workflow-type', 'Workflow type', typeOptions('workflowTypes', list.workflowType), list.workflowType, set('workflowType')),
    selectControl('f-status', 'Status', [['', 'All'], ['SCHEDULED', 'SCHEDULED'], ['IN_PROGRESS', 'IN_PROGRESS']], list.status, set('status')),
    selectControl('f-sort', 'Sort by', SORTS, list.sort, set('sort')),
    selectControl('f-order', 'Order', [['desc', 'Descending'], ['asc', 'Ascending']], list.order, set('order')),
  );
}

function setOrder(order) {
  list.order = order;
  const select = document.getElementById('f-order');
  if (select) select.value = order;
}

// Options of a type filter from the overview; a chosen value stays even if it left the list.
function typeOptions(key, chosen) {
  const ov = overviewData();
  const names = (ov && Array.isArray(ov[key])) ? ov[key].map(String) : [];
  if (chosen && !names.includes(chosen)) names.push(chosen);
  return [['', 'All'], ...names.sort().map((n) => [n, n])];
}

function updateFilterOptions() {
  for (const [id, key, listKey] of [['f-task-type', 'taskTypes', 'taskType'], ['f-workflow-type', 'workflowTypes', 'workflowType']]) {
    const select = document.getElementById(id);
    if (!select) continue;
    const chosen = list[listKey];
    const opts = typeOptions(key, chosen);
    const same = opts.length === select.options.length && opts.every(([v], i) => select.options[i].value === v);
    if (same) continue; // leave an open select alone when nothing changed
    select.replaceChildren(...opts.map(([v, text]) => h('option', { value: v, selected: v === chosen }, text)));
  }
}
