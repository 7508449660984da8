// Live updates: GET /api/v1/events read with fetch (EventSource can't send the token).
//
// The stream is told which tasks the view shows (`watch=id,id`, at most 200): it sends those
// when they change (`tasks`), a count of updates accepted anywhere (`changed`), and the
// overview (`overview`); `resync` asks for a full refetch. Each event goes to the view on
// screen, which decides what it means for what it shows.
import { $, sleep } from './helpers.js';
import { apiFetch, AuthNeeded, isLocked } from './api.js';
import { newOverview } from './figures.js';

const MAX_WATCHED = 200;
// How old a shared list answer the polling page accepts (ms).
const POLL_MAX_AGE = 1000;

let events = null; // the running event-stream reader
let everConnected = false;
// The router (its currentView and refreshView), handed over at start: it imports this module.
let router = { currentView: () => null, refreshView: () => undefined };

export function followViews(r) {
  router = r;
}

// `why`: the longer story, on hover (the server's reason for refusing the stream).
export function setLive(kind, text, why) {
  const el = $('#live');
  el.dataset.state = kind;
  if (why) el.title = why;
  else el.removeAttribute('title');
  const t = $('#live-text');
  if (t.textContent !== text) t.textContent = text;
}

// The task ids the current view shows, which the stream should report on.
function watchedIds() {
  const view = router.currentView();
  return view ? view.watched() : [];
}

// (Re)opens the stream when the view's task ids differ from what the open stream watches.
export function syncWatch() {
  if (isLocked()) return;
  const watch = watchedIds().slice(0, MAX_WATCHED).map(encodeURIComponent).join(',');
  if (events && events.watch === watch) return;
  startEvents(watch);
}

function startEvents(watch) {
  stopEvents();
  const run = { stopped: false, ctrl: null, watch };
  events = run;
  eventLoop(run);
}

export function stopEvents() {
  const run = events;
  if (!run) return;
  run.stopped = true;
  if (run.ctrl) run.ctrl.abort();
  events = null;
}

// Connects, reads until the stream ends or fails, then waits 1 s, 2 s, 4 s, ... (at most 10 s)
// and connects again. After a reconnect the view is refetched: events may have been missed.
// A new watch list opens a new stream at once; its first event brings every watched task, so
// nothing is missed and no refetch is needed then.
// While the server refuses the stream (every stream slot taken, or streams off because
// `--max-connections` is too small to spare one), the page polls instead: each wait ends with
// a refetch of the view, its lists accepting a shared answer up to a second old.
async function eventLoop(run) {
  let failures = 0;
  let reconnect = false;
  let refused = ''; // the server's reason, when it refused the stream this round
  if (!everConnected) setLive('connecting', 'connecting…');
  const url = run.watch ? `/api/v1/events?watch=${run.watch}` : '/api/v1/events';
  while (!run.stopped) {
    run.ctrl = new AbortController();
    refused = '';
    try {
      const res = await apiFetch(url, { signal: run.ctrl.signal, headers: { Accept: 'text/event-stream' } });
      if (!res.ok || !res.body) {
        refused = await refusalReason(res);
        throw new Error(`HTTP ${res.status}`);
      }
      setLive('live', 'connected');
      if (reconnect) router.refreshView();
      everConnected = true;
      // the backoff starts over only for a stream that delivered something: a server that
      // answers and hangs up at once (shutting down) is not hammered every second
      if (await readEvents(res.body, run)) failures = 0;
    } catch (err) {
      if (err instanceof AuthNeeded || run.stopped) return;
    }
    reconnect = true;
    if (run.stopped) return;
    const delay = Math.min(10, 2 ** failures++);
    if (refused) setLive('polling', `no live updates: refreshing every ${delay} s`, refused);
    else setLive('reconnecting', `reconnecting in ${delay} s`);
    await sleep(delay * 1000);
    if (refused && !run.stopped) router.refreshView(POLL_MAX_AGE);
  }
}

// The reason a refused stream's answer gives (its JSON `error`), else its status.
async function refusalReason(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  return (body && typeof body.error === 'string' && body.error) || `HTTP ${res.status}`;
}

// Reads the stream until it ends; tells whether any event came.
async function readEvents(body, run) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let got = false;
  const parser = sseParser((type, data) => { got = true; if (!run.stopped) onEvent(type, data); });
  for (;;) {
    const { done, value } = await reader.read();
    if (done || run.stopped) break;
    parser(decoder.decode(value, { stream: true }));
  }
  parser(decoder.decode());
  return got;
}

// SSE framing: `event:` and `data:` lines, a blank line ends an event, `:` lines are comments,
// several data lines join with "\n". A line may be split across chunks, and a CR LF pair too.
function sseParser(dispatch) {
  let buffer = '';
  let type = '';
  let data = [];
  const line = (text) => {
    if (text === '') {
      if (data.length) dispatch(type || 'message', data.join('\n'));
      type = '';
      data = [];
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  };
  return (chunk) => {
    buffer += chunk;
    for (;;) {
      const m = /\r\n|\n|\r/.exec(buffer);
      if (!m || (m[0] === '\r' && m.index === buffer.length - 1)) break; // wait: maybe CR LF
      line(buffer.slice(0, m.index));
      buffer = buffer.slice(m.index + m[0].length);
    }
  };
}

function onEvent(type, raw) {
  if (isLocked()) return;
  let data;
  try { data = JSON.parse(raw); } catch { return; }
  const view = router.currentView();
  if (type === 'tasks' && data && Array.isArray(data.tasks)) view?.onTasks?.(data.tasks);
  else if (type === 'changed') view?.onChanged?.();
  // the overview comes about once a second; it is redrawn only when a figure changed
  else if (type === 'overview' && data) { if (newOverview(data)) view?.onOverview?.(data); }
  else if (type === 'resync') router.refreshView();
}
