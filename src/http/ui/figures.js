// The overview's figures: the newest overview, which the overview and WAIT views fetch and the
// stream sends (the filters' options come from it), and the cards drawn from it.
import { $, h, isMissing, dash } from './helpers.js';
import { apiJson } from './api.js';
import { fmtDuration, fmtNum, timeEl } from './format.js';
import { dl, tableWrap } from './widgets.js';

let latest = null; // the newest overview, whoever brought it
let seen = ''; // the last overview drawn from an event, to skip unchanged ones

export const overviewData = () => latest;

export async function fetchOverview() {
  const data = await apiJson('/api/v1/overview');
  applyOverview(data);
  return data;
}

// Keeps the newest overview and the version it names.
function applyOverview(data) {
  latest = data;
  $('#version').textContent = data && data.version ? `v${data.version}` : '';
}

// An overview from the stream: kept, and true when a figure changed (worth a redraw).
export function newOverview(data) {
  const figures = JSON.stringify(Object.assign({}, data, { at: null }));
  if (figures === seen) return false;
  seen = figures;
  applyOverview(data);
  return true;
}

// Signed out: nothing of the last overview stays.
export function forgetOverview() {
  latest = null;
  seen = '';
}

export function overviewFigures(ov) {
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

function typeTable(byType) {
  return tableWrap(h('table', { class: 'compact' },
    h('caption', {}, 'In-flight tasks by type'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Task type'), h('th', { scope: 'col', class: 'num' }, 'Tasks'))),
    h('tbody', {}, byType.map((t) => h('tr', {}, h('td', {}, dash(t.taskType)), h('td', { class: 'num' }, fmtNum(t.count)))))));
}

export function waitFigures(wait) {
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
