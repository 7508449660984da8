// One task's view of the status page in a real browser, read as a person sees it: the script
// opens `#/task/<id>` of a running taskpulse and prints, as one JSON line, the view's heading,
// the Details it shows and the rows of its "Attempts and their workers" table. The test that
// runs it (tests/airflow/) compares them with what the engine recorded; the script only reads.
//
//   TASKPULSE_URL=http://127.0.0.1:PORT TASKPULSE_TASK_ID=id [TASKPULSE_ROWS=n] \
//     [TASKPULSE_ARTIFACTS=dir] node tests/browser/task_view.mjs
//
// It waits until the table has TASKPULSE_ROWS rows (default 1). The browser is Debian's chromium
// (TASKPULSE_CHROMIUM overrides /usr/bin/chromium).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.TASKPULSE_URL;
const ID = process.env.TASKPULSE_TASK_ID;
if (!BASE || !ID) {
  console.error('task_view: set TASKPULSE_URL and TASKPULSE_TASK_ID');
  process.exit(2);
}
const ROWS = Number(process.env.TASKPULSE_ROWS || 1);
const ARTIFACTS = process.env.TASKPULSE_ARTIFACTS;
const CHROMIUM = process.env.TASKPULSE_CHROMIUM || '/usr/bin/chromium';

// A hung browser must not hang the test: the whole run gets a minute.
setTimeout(() => {
  console.error('task_view: did not finish within 60 s');
  process.exit(1);
}, 60_000).unref();

let browser;
let code = 0;
try {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(20_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${new URL(BASE).origin}/#/task/${encodeURIComponent(ID)}`);
  await page.getByRole('heading', { level: 2, name: `Task ${ID}`, exact: true }).waitFor();
  await page.locator('#view[aria-busy="false"]').waitFor({ state: 'attached' });
  const table = page.getByRole('table', { name: /attempts/i });
  await table.waitFor();
  const rows = table.locator('tbody tr');
  const deadline = Date.now() + 20_000;
  while ((await rows.count()) < ROWS && Date.now() < deadline) await page.waitForTimeout(100);
  const attempts = [];
  for (let i = 0; i < (await rows.count()); i++) {
    attempts.push((await rows.nth(i).locator('td').allInnerTexts()).map((t) => t.trim()));
  }
  const details = await page.getByRole('region', { name: 'Details', exact: true }).innerText();
  if (ARTIFACTS) {
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'task.png'), fullPage: true });
  }
  console.log(JSON.stringify({ heading: `Task ${ID}`, details, attempts, errors }));
} catch (err) {
  code = 1;
  console.error(`task_view: ${(err && err.stack) || err}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
