// WAIT queue view: the queue's figures and the waiting tasks, soonest wake-up first.
import { h, put, throttle, dash, isMissing } from './helpers.js';
import { apiJson, loadInto } from './api.js';
import { fetchOverview, waitFigures } from './figures.js';
import { timeEl } from './format.js';
import { syncWatch } from './live.js';
import { TERMINAL, badge, section, simpleTable, statusBadge, taskLink, viewHeading } from './widgets.js';

// This visit: its containers and the task ids its table shows; null while another view is shown.
let visit = null;

const refetchWaitSoon = throttle(() => refreshWaitTable(), 2000);

export const waitView = {
  mount(view) {
    const figures = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    const table = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    visit = { figures, table, ids: [] };
    view.append(viewHeading('WAIT queue'),
      section('Queue', 'wait-figures', figures),
      section('Waiting tasks, soonest wake-up first', 'wait-tasks', table));
    return Promise.all([refreshWaitFigures(), refreshWaitTable()]);
  },
  unmount() {
    visit = null;
  },
  refresh(maxAge) {
    return Promise.all([refreshWaitFigures(), refreshWaitTable(maxAge)]);
  },
  watched: () => (visit ? visit.ids : []),
  onTasks(tasks) {
    if (tasks.some((t) => t.taskType === 'WAIT')) refetchWaitSoon();
  },
  onChanged: () => refetchWaitSoon(),
  onOverview(data) {
    if (visit) put(visit.figures, waitFigures(data.wait || {}));
  },
};

function refreshWaitFigures() {
  const el = visit && visit.figures;
  if (!el) return Promise.resolve();
  return loadInto('waitFigures', el, async () => waitFigures((await fetchOverview()).wait || {}));
}

// The API's inFlight leaves WAIT tasks out by definition, so this asks for all WAIT tasks and
// marks the finished ones (they stay in memory a while after they end).
function refreshWaitTable(maxAge) {
  const v = visit;
  if (!v) return Promise.resolve();
  const shared = maxAge ? `&maxAge=${maxAge}` : '';
  return loadInto('waitTable', v.table, async (current) => {
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
      v.ids = tasks.map((t) => String(t.taskId));
      queueMicrotask(syncWatch);
    }
    const shown = isMissing(data.total) ? '' : `${tasks.length} of ${Number(data.total).toLocaleString()} shown`;
    return [simpleTable('WAIT tasks', ['Task', 'Workflow', 'Wait until', 'Status'], rows, 'No task is waiting.'),
      shown ? h('p', { class: 'muted' }, shown) : null];
  });
}
