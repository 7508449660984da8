// API: every request goes through apiFetch, which adds the token and handles 401. This module
// also holds the session those requests run in: the token, whether we are locked out, and the
// generation that tells a response whether it is still wanted.
import { h, put } from './helpers.js';

const TOKEN_KEY = 'taskpulse.token';

let token = readToken();
let locked = false; // the server wants a token we don't have: show nothing but the prompt
let gen = 0; // bumped on every view change and on sign-out; older responses are then dropped
const tickets = {}; // per-slot request counters, so only the newest response of a slot is shown
let onUnauthorized = () => {}; // what a 401 does (auth.js: the token prompt)

// sessionStorage can throw (storage disabled); the page then just asks again after a reload.
function readToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
function writeToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* kept in memory only */ }
}

export const isLocked = () => locked;
export const generation = () => gen;

// A new view: responses to requests made for the one before are dropped.
export function nextGeneration() {
  return ++gen;
}

// Set once at start: called with whether a token was sent when the API answers 401.
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

// Locks out and forgets the token; false when already locked out (nothing more to do).
export function endSession() {
  if (locked) return false;
  locked = true;
  gen++;
  token = '';
  writeToken('');
  return true;
}

export function signIn(value) {
  token = value;
  writeToken(value);
  locked = false;
}

// A ticket for one request slot: the response may be shown only while no newer request for the
// same slot has started, the view hasn't changed and we are not locked out.
function ticket(slot) {
  const g = gen;
  const n = (tickets[slot] = (tickets[slot] || 0) + 1);
  return () => g === gen && tickets[slot] === n && !locked;
}

export class ApiError extends Error {
  constructor(endpoint, status, message) {
    super(message);
    this.endpoint = endpoint;
    this.status = status;
  }
}
export class AuthNeeded extends Error {}

export async function apiFetch(path, options = {}) {
  const headers = Object.assign({ Accept: 'application/json' }, options.headers);
  const sentToken = token;
  if (sentToken) headers.Authorization = `Bearer ${sentToken}`;
  let res;
  try {
    res = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new ApiError(path, 0, 'network error (is taskpulse running?)');
  }
  if (res.status === 401) {
    onUnauthorized(Boolean(sentToken));
    throw new AuthNeeded('token needed');
  }
  return res;
}

export async function apiJson(path) {
  const res = await apiFetch(path);
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: the status says enough */ }
  if (!res.ok) {
    throw new ApiError(path, res.status, (body && body.error) || res.statusText || 'request failed');
  }
  return body || {};
}

// An inline error naming the endpoint and status; the rest of the page keeps working.
export function errorBox(err) {
  if (err instanceof ApiError) {
    const status = err.status ? `HTTP ${err.status}` : 'no answer';
    return h('p', { class: 'error', role: 'alert' },
      'Could not load ', h('code', {}, `GET ${err.endpoint}`), `: ${status} — ${err.message}`);
  }
  return h('p', { class: 'error', role: 'alert' }, `Something went wrong: ${err && err.message}`);
}

// Loads into a container: the old content stays until the new one is ready (no flicker, no
// scroll jump), stale answers are dropped, failures show inline in that container only.
export async function loadInto(slot, el, load) {
  const current = ticket(slot);
  try {
    const content = [await load(current)].flat();
    const same = content.length === el.childNodes.length && content.every((n, i) => el.childNodes[i] === n);
    if (current() && !same) {
      // <details> the user opened stay open through a refetch
      const open = [...el.querySelectorAll('details[open][data-key]')].map((d) => d.dataset.key);
      put(el, content);
      for (const d of el.querySelectorAll('details[data-key]')) if (open.includes(d.dataset.key)) d.open = true;
    }
  } catch (err) {
    if (err instanceof AuthNeeded || !current()) return;
    put(el, errorBox(err));
  }
}
