// The task view's progress chart: a small hand-drawn SVG line, percent (0-100) over time.
import { h } from './helpers.js';
import { clampPercent, fmtClock } from './format.js';

// Progress points over time: the samples, plus the progress of accepted history lines.
export function chartPoints(t) {
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

export function progressChart(points) {
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
