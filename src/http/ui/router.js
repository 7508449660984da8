// Routing: the hash names a view; the view on screen is built from scratch on every change.
//
// A view is an object that owns what it shows and the state behind it (dropped by `unmount`):
//   mount(el, route)   builds the view into `el`; resolves once its first answers are shown
//   unmount()          forgets this visit (its containers, rows, watched ids)
//   refresh(maxAge)    refetches what it shows, in place (`maxAge`: see refreshView)
//   watched()          the task ids it shows, which the event stream should report on
//   onTasks(tasks), onChanged(), onOverview(data)   the stream's events (optional)
import { $ } from './helpers.js';
import { generation, isLocked, nextGeneration } from './api.js';
import { syncWatch } from './live.js';
import { overviewView } from './overview.js';
import { repairsView } from './repairs.js';
import { taskView } from './task.js';
import { waitView } from './wait.js';

const VIEWS = { overview: overviewView, task: taskView, wait: waitView, repairs: repairsView };

let route = { name: 'overview' };
let current = null; // the view on screen; none while locked out

function parseRoute() {
  const hash = location.hash.replace(/^#/, '') || '/';
  if (hash.startsWith('/task/')) {
    let id = hash.slice('/task/'.length);
    try { id = decodeURIComponent(id); } catch { /* shown as typed */ }
    return { name: 'task', id };
  }
  if (hash === '/wait') return { name: 'wait' };
  if (hash === '/repairs') return { name: 'repairs' };
  return { name: 'overview' };
}

function markNav() {
  const name = route.name === 'task' ? '' : route.name;
  for (const a of document.querySelectorAll('nav a[data-route]')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

export const currentView = () => current;

// Every view forgets its visit (a view change, or a sign-out).
export function dropView() {
  for (const view of Object.values(VIEWS)) view.unmount();
  current = null;
}

// Builds the current route's view from scratch. `focus`: move focus to its heading, so a
// keyboard or screen-reader user lands on the new content after following a link.
export async function showRoute(focus) {
  route = parseRoute();
  markNav();
  if (isLocked()) return;
  const gen = nextGeneration();
  dropView();
  const el = $('#view');
  el.setAttribute('aria-busy', 'true');
  el.replaceChildren();
  current = VIEWS[route.name];
  const done = current.mount(el, route);
  if (focus) {
    const heading = el.querySelector('h2');
    if (heading) heading.focus({ preventScroll: false });
  }
  await done;
  if (gen !== generation()) return;
  el.setAttribute('aria-busy', 'false');
  syncWatch();
}

// Refetches what the current view shows (after a resync, or a reconnect that may have missed
// events, or as the poll that stands in for a refused stream), in place. `maxAge` (ms): the
// lists accept an answer the server computed that long ago for another page.
export function refreshView(maxAge) {
  if (isLocked() || !current) return undefined;
  return current.refresh(maxAge);
}
