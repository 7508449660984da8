// The status page's costs (BENCHMARKS.md, "The status page"), measured side by side in one run:
//
//   1. time to the first rendered in-flight table with 100,000 tracked tasks, in Debian's
//      chromium (cold page load, median of 7);
//   2. the page's transfer size (what the browser downloads to show that table);
//   3. the event stream's cost: taskpulse's CPU while taskpulse-loadgen sends 10,000 updates/s,
//      with no page open and with 50 open pages, alternated (A B A B ...), medians. The 50 pages
//      are clients that do what the page does on its first page (src/http/ui/app.js): a stream
//      watching the 50 rows it shows, the first page fetched again at most every 2 s when
//      `changed` arrives (accepting an answer up to 1 s old, `maxAge`), and a new stream when the
//      rows shown differ.
//
// Run: cargo build --release && (cd tests/browser && npm ci) && node scripts/status_page_bench.mjs
// Needs /usr/bin/chromium (or CHROMIUM). Prints a JSON summary.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from '../tests/browser/node_modules/playwright-core/index.mjs';

const ROOT = new URL('..', import.meta.url).pathname;
const BIN = join(ROOT, 'target/release/taskpulse');
const LOADGEN = join(ROOT, 'target/release/taskpulse-loadgen');
const PORT = 19000 + (process.pid % 1000);
const BASE = `http://127.0.0.1:${PORT}`;
const TASKS = Number(process.env.TASKS || 100_000);
const PAGES = Number(process.env.PAGES || 50);
const RATE = Number(process.env.RATE || 10_000);
const ROUND_S = Number(process.env.ROUND_S || 15);
const ROUNDS = Number(process.env.ROUNDS || 3);
const PAGE_ROWS = 50;
// app.js's refreshes on `changed` accept an answer this old (ms); MAX_AGE=0 measures without.
const MAX_AGE = Number(process.env.MAX_AGE ?? 1000);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// CPU seconds (user + system) of a process so far.
function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100; // utime, stime in clock ticks (100 Hz)
}

async function waitReady() {
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${BASE}/healthz`)).ok) return;
    } catch {}
    await sleep(100);
  }
  throw new Error('taskpulse did not start');
}

// 100,000 tasks in flight with progress, in batches of 1,000.
async function load() {
  const now = Date.now();
  for (let b = 0; b < TASKS / 1000; b++) {
    const batch = [];
    for (let i = 0; i < 1000; i++) {
      const n = b * 1000 + i;
      batch.push({
        taskId: `bench-${n}`, workflowId: `wf-${n}`, taskType: `type-${n % 20}`, workflowType: `flow-${n % 5}`,
        status: 'IN_PROGRESS', progressPercent: n % 100, progressMessage: `step ${n % 100}`,
        workerId: `worker-${n % 50}`, startTime: now - 60_000, updateTime: now, timeoutSeconds: 3600,
      });
    }
    const r = await fetch(`${BASE}/api/v1/updates`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(batch),
    });
    if (!r.ok) throw new Error(`load: ${r.status} ${await r.text()}`);
  }
}

// Cold loads of the page until the first row's progress bar is drawn.
async function firstRender(browser) {
  const times = [];
  let bytes = null;
  for (let i = 0; i < 7; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    let sum = 0;
    const sizes = {};
    page.on('response', async (resp) => {
      const url = resp.url();
      if (url.includes('/api/v1/events')) return; // the stream never ends
      try {
        const n = (await resp.body()).length;
        sum += n;
        sizes[new URL(url).pathname] = n;
      } catch {}
    });
    const t0 = Date.now();
    await page.goto(BASE + '/');
    await page.waitForSelector('table [role="progressbar"]', { timeout: 30_000 });
    times.push(Date.now() - t0);
    await sleep(500); // the responses' bodies counted
    if (i === 0) bytes = { total: sum, byPath: sizes };
    await ctx.close();
  }
  return { medianMs: median(times), ms: times, transfer: bytes };
}

// One open page's traffic, as app.js makes it on the first page with the default sort.
function pageClient(stats) {
  let stop = false;
  let ctrl = null;
  let shown = '';
  let lastFetch = 0;
  let pending = null;
  const rows = async (maxAge) => {
    const r = await fetch(`${BASE}/api/v1/tasks?inFlight=true&limit=${PAGE_ROWS}${maxAge ? `&maxAge=${maxAge}` : ''}`);
    stats.fetches++;
    const body = await r.json();
    return body.tasks.map((t) => encodeURIComponent(t.taskId)).join(',');
  };
  const refetch = () => {
    if (pending) return;
    const wait = Math.max(0, lastFetch + 2000 - Date.now());
    pending = setTimeout(async () => {
      pending = null;
      lastFetch = Date.now();
      const ids = await rows(MAX_AGE);
      if (ids !== shown) {
        shown = ids;
        stats.reconnects++;
        ctrl?.abort();
      }
    }, wait);
  };
  const stream = async () => {
    while (!stop) {
      ctrl = new AbortController();
      try {
        const r = await fetch(`${BASE}/api/v1/events?watch=${shown}`, { signal: ctrl.signal });
        const reader = r.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          stats.bytes += value.length;
          const text = new TextDecoder().decode(value);
          if (text.includes('event: changed')) refetch();
        }
      } catch {}
    }
  };
  return {
    async start() { shown = await rows(); stream(); },
    stop() { stop = true; ctrl?.abort(); if (pending) clearTimeout(pending); },
  };
}

// Updates taskpulse accepted so far (all sources), from /metrics.
async function acceptedSoFar() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('taskpulse_updates_total{') && l.includes('outcome="accepted"'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

async function cpuRound(pid, pages) {
  const stats = { bytes: 0, fetches: 0, reconnects: 0 };
  const clients = Array.from({ length: pages }, () => pageClient(stats));
  await Promise.all(clients.map((c) => c.start()));
  await sleep(2000);
  const c0 = cpuSeconds(pid);
  const a0 = await acceptedSoFar();
  const b0 = stats.bytes;
  const t0 = Date.now();
  await sleep(ROUND_S * 1000);
  const secs = (Date.now() - t0) / 1000;
  const cpu = (cpuSeconds(pid) - c0) / secs;
  const updatesPerSecond = ((await acceptedSoFar()) - a0) / secs;
  const streamBytesPerPage = pages ? (stats.bytes - b0) / secs / pages : 0;
  clients.forEach((c) => c.stop());
  await sleep(1000);
  return { pages, cpu, updatesPerSecond, streamBytesPerPage, fetchesPerSec: stats.fetches / (secs + 2) };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'taskpulse-page-bench-'));
  const server = spawn(BIN, ['serve', '--listen', `127.0.0.1:${PORT}`, '--database', `sqlite://${dir}/bench.db`,
    '--max-tracked-tasks', '500000'], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    await waitReady();
    const t = Date.now();
    await load();
    const loadS = (Date.now() - t) / 1000;
    const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
    const render = await firstRender(browser);
    await browser.close();
    // 10,000 updates/s from 10,000 tasks of the load generator's own
    const gen = spawn(LOADGEN, ['--target', BASE, '--tasks', String(RATE), '--rate', '1', '--duration',
      `${(ROUND_S + 4) * 2 * ROUNDS + 10}s`, '--never-finish', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
    gen.stdout.resume();
    await sleep(3000);
    const rounds = [];
    for (let i = 0; i < ROUNDS; i++) {
      rounds.push(await cpuRound(server.pid, 0));
      rounds.push(await cpuRound(server.pid, PAGES));
    }
    gen.kill('SIGINT');
    await new Promise((r) => gen.on('exit', r));
    const none = rounds.filter((r) => r.pages === 0);
    const open = rounds.filter((r) => r.pages === PAGES);
    const summary = {
      tasks: TASKS,
      loadSeconds: loadS,
      firstRenderMs: render.medianMs,
      firstRenderRuns: render.ms,
      transferBytes: render.transfer,
      updatesPerSecond: RATE,
      maxAgeMs: MAX_AGE,
      achievedUpdatesPerSecond: median(rounds.map((r) => r.updatesPerSecond)),
      cpuNoPages: median(none.map((r) => r.cpu)),
      cpuWithPages: median(open.map((r) => r.cpu)),
      streamBytesPerPagePerSecond: median(open.map((r) => r.streamBytesPerPage)),
      pageFetchesPerSecond: median(open.map((r) => r.fetchesPerSec)),
      rounds,
    };
    summary.cpuPerPage = (summary.cpuWithPages - summary.cpuNoPages) / PAGES;
    console.log(JSON.stringify(summary, null, 2));
  } finally {
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
