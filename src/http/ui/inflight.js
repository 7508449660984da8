// The in-flight table and its pager, for the overview view. Built once per visit and then
// updated in place: the page is refetched every few seconds under load, and that must not take
// keyboard focus away from a link or button the user is on.
import { h, put, arrange, dash, isMissing } from './helpers.js';
import { timeEl, clampPercent } from './format.js';
import { TERMINAL, badge, statusBadge, taskLink, tableWrap, progressContent, setBar } from './widgets.js';

const COLUMNS = [
  ['task', 'Task'], ['type', 'Type'], ['workflow', 'Workflow'], ['status', 'Status'],
  ['progress', 'Progress'], ['worker', 'Worker'], ['started', 'Started'],
  ['predicted', 'Predicted / deadline'],
];
// Which column shows each sort key (for aria-sort on its header).
const SORT_COLUMN = { started: 'started', progress: 'progress', deadline: 'predicted', taskId: 'task' };

// The panel; `pager.first()` and `pager.next(cursor, count)` turn the page. `rows`: taskId ->
// row on screen.
export function taskPanel(pager) {
  const panel = {
    thead: h('thead'), tbody: h('tbody'), text: h('span', { class: 'muted', 'aria-live': 'polite' }),
    nextCursor: null, count: 0, rows: new Map(),
  };
  panel.first = h('button', { type: 'button', onclick: () => pager.first() }, 'First page');
  panel.next = h('button', {
    type: 'button',
    onclick: () => {
      if (!panel.nextCursor) return;
      pager.next(panel.nextCursor, panel.count);
    },
  }, 'Next page');
  panel.nodes = [
    tableWrap(h('table', { class: 'tasks-table' }, h('caption', {}, 'In-flight tasks'), panel.thead, panel.tbody)),
    h('div', { class: 'pager' }, panel.first, panel.next, panel.text),
  ];
  return panel;
}

// Shows one answer of the task list, fetched with `list` (sort, order, cursor, offset).
export function updateTaskPanel(panel, data, list) {
  const tasks = Array.isArray(data.tasks) ? data.tasks : [];
  const sortCol = SORT_COLUMN[list.sort];
  const sortDir = list.order === 'asc' ? 'ascending' : 'descending';
  put(panel.thead, h('tr', {}, COLUMNS.map(([key, title]) =>
    h('th', { scope: 'col', class: `col-${key}`, 'aria-sort': key === sortCol ? sortDir : null }, title))));
  // rows already on screen are refilled and kept, new ones built
  const rows = new Map();
  const trs = tasks.map((t) => {
    const id = String(t.taskId);
    let row = panel.rows.get(id);
    if (row) fillRow(row, t); else row = taskRow(t);
    rows.set(id, row);
    return row.tr;
  });
  if (!trs.length) trs.push(h('tr', {}, h('td', { colspan: COLUMNS.length, class: 'empty' }, 'No in-flight tasks match.')));
  arrange(panel.tbody, trs);
  panel.rows = rows;
  // the pager
  panel.nextCursor = data.next || null;
  panel.count = tasks.length;
  panel.first.disabled = !list.cursor && list.offset === 0;
  panel.next.disabled = !data.next;
  const total = isMissing(data.total) ? null : Number(data.total);
  const range = tasks.length ? `${list.offset + 1}–${list.offset + tasks.length}` : '0';
  const text = total === null ? `${range} shown` : `${range} of ${total.toLocaleString()}`;
  if (panel.text.textContent !== text) panel.text.textContent = text;
}

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

export function fillRow(row, t) {
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

// The bar is refilled in place when there is one and a percent to show.
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

// Predicted completion against the deadline; late is said in words and marked in colour.
function predictedContent(t) {
  return [
    h('div', {}, h('span', { class: 'muted' }, 'predicted '), timeEl(t.predictedCompletion)),
    h('div', {}, h('span', { class: 'muted' }, 'deadline '), timeEl(t.deadline)),
    t.predictedLate ? h('div', {}, badge('✕ late: predicted after deadline', 'bad')) : null,
  ];
}
