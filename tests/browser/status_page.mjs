// Real-browser checks of taskpulse's status page, against a running taskpulse.
//
//   TASKPULSE_URL=http://127.0.0.1:PORT [TASKPULSE_TOKEN=secret] [TASKPULSE_ARTIFACTS=dir] \
//     node tests/browser/status_page.mjs
//
// The browser is Debian's chromium (CHROMIUM or TASKPULSE_CHROMIUM overrides /usr/bin/chromium).
// The script posts the updates it needs through the API (ids unique to this run), drives the
// page like a user and stops with a non-zero exit at the first failed check. Nothing is mocked
// or intercepted: every request the page makes goes to the server.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.TASKPULSE_URL;
if (!BASE) {
  console.error('status_page: set TASKPULSE_URL to a running taskpulse (http://127.0.0.1:PORT)');
  process.exit(2);
}
const ORIGIN = new URL(BASE).origin;
const TOKEN = process.env.TASKPULSE_TOKEN || '';
const ARTIFACTS = process.env.TASKPULSE_ARTIFACTS || join(tmpdir(), `taskpulse-browser-${process.pid}`);
const CHROMIUM = process.env.CHROMIUM || process.env.TASKPULSE_CHROMIUM || '/usr/bin/chromium';

const RUN = `${Date.now().toString(36)}-${process.pid}`;
const TASK = `browser-task-${RUN}`;
const WORKFLOW = `browser-wf-${RUN}`;
const STARTED = Date.now() - 30_000;

// ---------------------------------------------------------------------------------------------
// helpers

let lastUpdateTime = 0;
// Each update of the task carries a later updateTime than the one before (older ones are stale).
function nextUpdateTime() {
  lastUpdateTime = Math.max(lastUpdateTime + 1, Date.now());
  return lastUpdateTime;
}

function apiHeaders(extra = {}) {
  return TOKEN ? { ...extra, Authorization: `Bearer ${TOKEN}` } : extra;
}

// Posts one update of the test task (the fields given override the defaults).
async function postUpdate(fields) {
  const update = {
    taskId: TASK, workflowId: WORKFLOW, taskType: 'browser_check', workflowType: 'browser_suite',
    status: 'IN_PROGRESS', workerId: 'worker-a', retryCount: 0, startTime: STARTED,
    timeoutSeconds: 3600, updateTime: nextUpdateTime(), ...fields,
  };
  const res = await fetch(`${ORIGIN}/api/v1/updates`, {
    method: 'POST',
    headers: apiHeaders({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(update),
  });
  const text = await res.text();
  assert.ok(res.status === 200 || res.status === 202, `POST /api/v1/updates answered ${res.status}: ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.accepted, 1, `POST /api/v1/updates did not accept ${JSON.stringify(update)}: ${text}`);
}

async function getJson(path) {
  const res = await fetch(`${ORIGIN}${path}`, { headers: apiHeaders() });
  assert.equal(res.status, 200, `GET ${path} answered ${res.status}`);
  return res.json();
}

// Polls `probe` until it returns a truthy value, or fails with `what` after `ms`.
async function until(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) assert.fail(`${what} (waited ${ms} ms)`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Waits for a locator to be visible; fails with `what` rather than Playwright's bare timeout.
async function shows(locator, what, ms = 10_000) {
  try {
    await locator.waitFor({ state: 'visible', timeout: ms });
  } catch {
    assert.fail(`${what} (waited ${ms} ms)`);
  }
}

function pass(n, text) {
  console.log(`ok ${n} - ${text}`);
}

// The page on screen, for a screenshot when a check fails.
let shown = null;

// Every request of a context, for the same-origin check.
const requests = [];
const pageErrors = [];
async function newContext(browser, viewport) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(10_000);
  context.on('request', (r) => requests.push(r.url()));
  context.on('page', (p) => p.on('pageerror', (e) => pageErrors.push(`${p.url()}: ${e.message}`)));
  return context;
}

// Waits for the current view to finish loading: its heading is there and main is not busy.
async function viewReady(page, heading) {
  await shows(page.getByRole('heading', { level: 2, name: heading, exact: true }), `the view headed "${heading}"`);
  try {
    await page.locator('#view[aria-busy="false"]').waitFor({ state: 'attached' });
  } catch {
    assert.fail(`the view "${heading}" did not finish loading (#view stays aria-busy)`);
  }
}

async function go(page, hash, heading) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await viewReady(page, heading);
}

const tokenInput = (page) => page.getByLabel('Access token', { exact: true });

async function signIn(page, token) {
  await tokenInput(page).fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

function inFlightTable(page) {
  return page.getByRole('table', { name: 'In-flight tasks' });
}

// The page at the document level: no horizontal scrolling (tables scroll in their wrapper).
async function assertNoHorizontalScroll(page, where) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
  }));
  assert.ok(scrollWidth <= innerWidth,
    `${where}: the page scrolls horizontally (document scrollWidth ${scrollWidth} > innerWidth ${innerWidth})`);
}

// ---------------------------------------------------------------------------------------------
// the checks

// 5. with a token: a fresh browser context shows no task data and the prompt before the token
// is given (a wrong one changes nothing), and the task once it is.
async function checkAuth(browser) {
  const fresh = await newContext(browser, { width: 1280, height: 800 });
  const p = await fresh.newPage();
  shown = p;
  await p.goto(`${ORIGIN}/`);
  await p.waitForLoadState('networkidle', { timeout: 3000 }).catch(() => {}); // let the first requests answer
  const before = await p.evaluate(() => document.documentElement.textContent);
  assert.ok(!before.includes(TASK), `the page shows ${TASK} before the token is given`);
  await shows(tokenInput(p), 'the token prompt (a field labelled "Access token") in a fresh browser context');
  await signIn(p, `${TOKEN}-wrong`);
  await shows(p.getByText('The token was not accepted'), 'the prompt saying a wrong token was not accepted');
  assert.ok(await tokenInput(p).isVisible(), 'the token prompt is back after a wrong token');
  assert.ok(!(await p.evaluate(() => document.documentElement.textContent)).includes(TASK),
    `the page shows ${TASK} after a wrong token`);
  await signIn(p, TOKEN);
  await shows(inFlightTable(p).getByRole('link', { name: TASK, exact: true }), `${TASK} in the in-flight table after signing in`);
  assert.ok(!(await tokenInput(p).isVisible()), 'the token prompt is hidden once signed in');
  pass(5, 'without the token the page shows no task data, only the prompt; with it, the task');
  await fresh.close();
}

// 7. tasks whose ids are `.` and `..` open from the in-flight table: a browser resolves such a
// path segment (and `%2E%2E`) before it sends the URL, so the page must not put the id there.
async function checkDotIds(page) {
  for (const id of ['.', '..']) {
    await postUpdate({ taskId: id, workflowId: `${WORKFLOW}-dots-${id.length}`, progressPercent: 40, progressMessage: `dot task ${id}` });
  }
  for (const id of ['.', '..']) {
    await go(page, '#/', 'Overview');
    const link = inFlightTable(page).getByRole('link', { name: id, exact: true });
    await shows(link, `a link named "${id}" in the in-flight table`);
    await link.click();
    await viewReady(page, `Task ${id}`);
    const details = page.getByRole('region', { name: 'Details', exact: true });
    await shows(details, `the details of task "${id}"`);
    const text = await details.innerText();
    assert.ok(text.includes(`${WORKFLOW}-dots-${id.length}`), `the task view of "${id}" shows its own workflow id: ${text}`);
    assert.equal(await page.getByText('Unknown task').count(), 0, `the task view of "${id}" says it is unknown`);
    assert.equal(await page.locator('#view [role="alert"]').count(), 0, `the task view of "${id}" shows an error`);
  }
  pass(7, 'tasks with the ids "." and ".." open from the in-flight table and show their own details');
}

// Opens event streams of our own until the server refuses one; returns their readers.
async function takeEveryStream() {
  const open = [];
  for (let i = 0; i < 200; i++) {
    const ctrl = new AbortController();
    const res = await fetch(`${ORIGIN}/api/v1/events`, { headers: apiHeaders(), signal: ctrl.signal });
    if (res.status === 503) {
      await res.text();
      return open;
    }
    assert.equal(res.status, 200, `GET /api/v1/events answered ${res.status}`);
    open.push(ctrl);
  }
  assert.fail('the server took 200 event streams without refusing one');
}

// 8. while the server refuses the page's stream (every slot taken), the page says so and still
// follows updates by refreshing itself; once a slot frees, it is live again.
async function checkStreamsRefused(context) {
  const taken = await takeEveryStream();
  const page = await context.newPage();
  shown = page;
  await page.goto(`${ORIGIN}/`);
  if (TOKEN) { // a new tab has a sessionStorage of its own: the token is asked for again
    await shows(tokenInput(page), 'the token prompt in a new tab');
    await signIn(page, TOKEN);
  }
  await viewReady(page, 'Overview');
  await until('the live indicator to say the page refreshes without live updates', 10_000,
    async () => (await page.locator('#live').getAttribute('data-state')) === 'polling');
  const live = await page.locator('#live').innerText();
  assert.ok(live.includes('refreshing every'), `the live indicator: ${live}`);
  const why = await page.locator('#live').getAttribute('title');
  assert.ok(why && why.includes('event streams'), `the live indicator's title gives the server's reason: ${why}`);
  const bar = inFlightTable(page).getByRole('progressbar', { name: TASK });
  await shows(bar, `the bar of ${TASK} on a page without a stream`);
  await postUpdate({ progressPercent: 90, progressMessage: 'step 90 of 100' });
  await until('the bar to show 90 without a stream (the page refreshes itself)', 25_000,
    async () => (await bar.getAttribute('aria-valuenow')) === '90');
  for (const ctrl of taken) ctrl.abort();
  await until('the page to be live again once streams are free', 25_000,
    async () => (await page.locator('#live').getAttribute('data-state')) === 'live');
  pass(8, 'with every stream taken the page says so and refreshes itself; live again once one frees');
  await page.close();
}

async function checks(browser) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await postUpdate({ progressPercent: 20, progressMessage: 'step 20 of 100' });
  if (TOKEN) await checkAuth(browser);
  else console.log('ok 5 - # skip: TASKPULSE_TOKEN not set (the server runs without --auth-token)');

  const context = await newContext(browser, { width: 1280, height: 800 });
  const page = await context.newPage();
  shown = page;
  await page.goto(`${ORIGIN}/`);
  if (TOKEN) {
    await shows(tokenInput(page), 'the token prompt (a field labelled "Access token") on a page opened without the token');
    await signIn(page, TOKEN);
  }
  await until('the page to follow the event stream (the live indicator says connected)', 10_000,
    async () => (await page.locator('#live').getAttribute('data-state')) === 'live');

  // 1. the in-flight table shows the task with its bar at the posted percent
  const table = inFlightTable(page);
  await shows(table.getByRole('link', { name: TASK, exact: true }), `a link named ${TASK} in the table named "In-flight tasks"`);
  const bar = table.getByRole('progressbar', { name: TASK });
  assert.equal(await bar.count(), 1, `one progressbar named after ${TASK} in the in-flight table`);
  assert.equal(await bar.getAttribute('aria-valuenow'), String(Math.round(20)), 'aria-valuenow of the bar');
  assert.equal(await bar.getAttribute('aria-valuemin'), '0', 'aria-valuemin of the bar');
  assert.equal(await bar.getAttribute('aria-valuemax'), '100', 'aria-valuemax of the bar');
  const row = table.getByRole('row').filter({ has: page.getByRole('link', { name: TASK, exact: true }) });
  assert.ok((await row.innerText()).includes('step 20 of 100'), 'the row shows the progress message');
  pass(1, `in-flight table shows ${TASK} with a labelled progressbar at 20`);

  // 2. a new update moves the bar without a reload, in place (the same element: rows are
  // updated, not rebuilt, so keyboard focus and screen-reader position survive)
  await page.evaluate(() => { window.__marker = 1; });
  const barElement = await bar.elementHandle();
  await postUpdate({ progressPercent: 75, progressMessage: 'step 75 of 100' });
  await until('the bar to show 75 in place without a reload', 3000,
    async () => (await barElement.evaluate((el) => el.isConnected && el.getAttribute('aria-valuenow'))) === '75');
  assert.equal(await page.evaluate(() => window.__marker), 1, 'the page navigated (window.__marker is gone)');
  assert.ok((await row.innerText()).includes('step 75 of 100'), 'the row shows the new progress message');
  pass(2, 'a posted update moved the bar from 20 to 75 in place, without a reload');
  await page.screenshot({ path: join(ARTIFACTS, 'overview.png') });

  // 3. the task's view lists the worker of each attempt
  await postUpdate({ retryCount: 1, workerId: 'worker-b', progressPercent: 5, progressMessage: 'retry' });
  // The server's view first (attempt writes may be throttled), so that the page's check is exact.
  await until('GET /api/v1/tasks/{id} to list the attempts of worker-a and worker-b', 15_000, async () => {
    const task = await getJson(`/api/v1/tasks/${encodeURIComponent(TASK)}`);
    const workers = (task.attempts || []).map((a) => a.workerId);
    return workers.includes('worker-a') && workers.includes('worker-b');
  });
  await table.getByRole('link', { name: TASK, exact: true }).click();
  await viewReady(page, `Task ${TASK}`);
  assert.equal(new URL(page.url()).hash, `#/task/${encodeURIComponent(TASK)}`, 'the link leads to the task view');
  const attempts = page.getByRole('table', { name: /attempts/i });
  for (const worker of ['worker-a', 'worker-b']) {
    await until(`${worker} in the task view's attempts table`, 5000,
      async () => (await attempts.getByRole('cell', { name: worker, exact: true }).count()) > 0);
  }
  pass(3, 'the task view lists worker-a and worker-b in its attempts table');
  await page.screenshot({ path: join(ARTIFACTS, 'task.png') });

  // 6. no horizontal scrolling at the document level, 1280 and 390 px wide, on every view
  const views = [['#/', 'Overview'], [`#/task/${encodeURIComponent(TASK)}`, `Task ${TASK}`],
    ['#/wait', 'WAIT queue'], ['#/repairs', 'Repairs']];
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width === 390 ? 844 : 800 });
    for (const [hash, heading] of views) {
      await go(page, hash, heading);
      await assertNoHorizontalScroll(page, `${hash} at ${width} px`);
    }
  }
  await go(page, '#/', 'Overview');
  await shows(inFlightTable(page).getByRole('link', { name: TASK, exact: true }), `${TASK} in the in-flight table at 390 px`);
  await page.screenshot({ path: join(ARTIFACTS, 'overview-390.png') });
  pass(6, 'no horizontal page scroll at 1280 and 390 px (overview, task, WAIT queue, repairs)');
  await page.setViewportSize({ width: 1280, height: 800 });

  await checkDotIds(page);
  await checkStreamsRefused(context);
  await context.close();

  // 4. no request left the page's origin, in any context
  assert.ok(requests.some((u) => u.startsWith(`${ORIGIN}/ui/app.js`)), 'the page loaded /ui/app.js');
  assert.ok(requests.some((u) => u.startsWith(`${ORIGIN}/api/v1/`)), 'the page called the API');
  const foreign = requests.filter((u) => new URL(u).origin !== ORIGIN);
  assert.deepEqual(foreign, [], `requests left ${ORIGIN}`);
  pass(4, `all ${requests.length} requests of the session went to ${ORIGIN}`);

  assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  console.log(`screenshots in ${ARTIFACTS}`);
}

// ---------------------------------------------------------------------------------------------

// A hung browser must not hang the test harness: the whole run gets three minutes.
setTimeout(() => {
  console.error('not ok - the browser checks did not finish within 180 s');
  process.exit(1);
}, 180_000).unref();

let browser;
let failed = false;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  await checks(browser);
} catch (err) {
  failed = true;
  // an assertion's message says it all; anything else (a Playwright timeout) with its stack
  const text = err instanceof assert.AssertionError ? err.message : (err && err.stack) || String(err);
  console.error(`not ok - ${text}`);
  if (shown && !shown.isClosed()) {
    await shown.screenshot({ path: join(ARTIFACTS, 'failure.png') }).catch(() => {});
    console.error(`page at failure: ${shown.url()}, screenshot ${join(ARTIFACTS, 'failure.png')}`);
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
