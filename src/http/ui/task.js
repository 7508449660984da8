// Task view: one task's details, progress over time, attempts, history and repairs.
import { h, throttle, dash, isMissing } from './helpers.js';
import { ApiError, apiJson, errorBox, loadInto } from './api.js';
import { chartPoints, progressChart } from './chart.js';
import { clampPercent, fmtDuration, timeEl } from './format.js';
import { repairsTable } from './repairs.js';
import { badge, dl, progressContent, section, simpleTable, statusBadge, viewHeading } from './widgets.js';

// This visit: the task id and its container; null while another view is shown.
let visit = null;

const refetchTaskSoon = throttle(() => refreshTask(), 1000);

export const taskView = {
  mount(view, route) {
    const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    visit = { id: route.id, body };
    view.append(
      h('p', { class: 'back' }, h('a', { href: '#/' }, '← In-flight tasks')),
      viewHeading(`Task ${route.id}`),
      body);
    return refreshTask();
  },
  unmount() {
    visit = null;
  },
  refresh: () => refreshTask(),
  watched: () => (visit ? [visit.id] : []),
  onTasks(tasks) {
    if (visit && tasks.some((t) => String(t.taskId) === visit.id)) refetchTaskSoon();
  },
};

function refreshTask() {
  const v = visit;
  if (!v) return Promise.resolve();
  const enc = encodeURIComponent(v.id);
  return loadInto('task', v.body, async () => {
    // The repairs are their own request: when they fail, the task is still shown.
    const repairs = apiJson(`/api/v1/repairs?taskId=${enc}`).then((r) => ({ r }), (err) => ({ err }));
    let task;
    try {
      // the query form: a browser would resolve an id of `.` or `..` in a path
      task = await apiJson(`/api/v1/task?taskId=${enc}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        return h('p', { class: 'notice' }, 'Unknown task: taskpulse has no task ', h('code', {}, v.id), '.');
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
