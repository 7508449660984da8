// The pieces every view draws with: badges, task links, headings and panels, tables, progress.
import { h, dash, isMissing } from './helpers.js';
import { clampPercent } from './format.js';

// The statuses a task ends in.
export const TERMINAL = new Set([
  'COMPLETED', 'COMPLETED_WITH_ERRORS', 'FAILED', 'FAILED_WITH_TERMINAL_ERROR',
  'TIMED_OUT', 'CANCELED', 'SKIPPED',
]);

// A badge says its meaning in words; colour only backs it up.
export function badge(text, kind) {
  return h('span', { class: `badge ${kind || ''}` }, text);
}

export function statusBadge(status) {
  const kind = { IN_PROGRESS: 'info', SCHEDULED: '', COMPLETED: 'ok', SKIPPED: '' }[status];
  return badge(dash(status), kind === undefined ? 'bad' : kind);
}

function taskHref(id) {
  return `#/task/${encodeURIComponent(id)}`;
}

export function taskLink(id) {
  return isMissing(id) ? '—' : h('a', { href: taskHref(id), class: 'id' }, String(id));
}

export function dl(pairs) {
  return h('dl', { class: 'pairs' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function viewHeading(text) {
  return h('h2', { tabindex: '-1' }, text);
}

export function section(title, id, ...kids) {
  return h('section', { class: 'panel', 'aria-labelledby': id },
    h('h3', { id }, title), ...kids);
}

export function tableWrap(table) {
  return h('div', { class: 'table-wrap' }, table);
}

// A plain table: rows are arrays of cells, or {class, cells}.
export function simpleTable(caption, headers, rows, emptyText, cls) {
  const body = h('tbody', {}, rows.map((r) => {
    const cells = Array.isArray(r) ? r : r.cells;
    return h('tr', { class: Array.isArray(r) ? null : r.class }, cells.map((c) => h('td', {}, c)));
  }));
  if (!rows.length) body.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, emptyText)));
  return tableWrap(h('table', { class: cls || null }, h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), body));
}

// The progress bar: role=progressbar with its value, and an inner bar sized from JS (the CSP
// allows element.style, not style attributes). No percent: a dash and no progressbar.
export function progressContent(t, label) {
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

export function setBar(bar, p) {
  bar.setAttribute('aria-valuenow', String(Math.round(p)));
  bar.firstChild.style.width = `${p}%`;
}
