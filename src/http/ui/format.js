// Formatting: times as local time plus relative, durations as humans write them.
import { h, isMissing } from './helpers.js';

export function fmtDuration(ms) {
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

export function fmtClock(ms) {
  const d = new Date(ms);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

// <time> with the local time and a relative part that the ticker keeps current.
export function timeEl(ms) {
  if (isMissing(ms) || !Number.isFinite(Number(ms))) return '—';
  const t = Number(ms);
  const d = new Date(t);
  return h('time', { datetime: d.toISOString(), title: d.toString(), 'data-ts': t },
    h('span', { class: 'clock' }, fmtClock(t)), ' ', h('span', { class: 'rel' }, `(${fmtRelative(t)})`));
}

export function tickRelativeTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll('time[data-ts] .rel')) {
    el.textContent = `(${fmtRelative(Number(el.parentElement.dataset.ts), now)})`;
  }
}

export function fmtNum(v) {
  return isMissing(v) ? '—' : Number(v).toLocaleString();
}

export function clampPercent(v) {
  if (isMissing(v) || !Number.isFinite(Number(v))) return null;
  return Math.min(100, Math.max(0, Number(v)));
}
