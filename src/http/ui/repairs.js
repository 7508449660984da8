// Repairs view: what the consistency checker found and changed (and the table the task view
// shows for one task).
import { h, dash, isMissing } from './helpers.js';
import { apiJson, loadInto } from './api.js';
import { timeEl } from './format.js';
import { badge, simpleTable, taskLink, viewHeading } from './widgets.js';

let visit = null; // this visit's container; null while another view is shown

export const repairsView = {
  mount(view) {
    const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    visit = { body };
    view.append(viewHeading('Repairs'),
      h('p', { class: 'muted' }, 'What the consistency checker found and changed, newest first.'),
      body);
    return refreshRepairs();
  },
  unmount() {
    visit = null;
  },
  refresh: () => refreshRepairs(),
  watched: () => [],
};

function refreshRepairs() {
  const el = visit && visit.body;
  if (!el) return Promise.resolve();
  return loadInto('repairs', el, async () => repairsTable((await apiJson('/api/v1/repairs?limit=100')).repairs, true));
}

export function repairsTable(repairs, withTask) {
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
