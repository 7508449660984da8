// Small helpers: elements built from data (never parsed from HTML), timing, empty values.

export const $ = (sel) => document.querySelector(sel);

// Builds an element: h('a', {href: '#/', class: 'x'}, 'text', child, [more]). Strings become
// text nodes; null/false children and attributes are skipped.
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...nodes(kids));
  return el;
}

// Children as DOM accepts them: nested arrays flattened, null/false dropped (the DOM would
// otherwise print them as "null"), the rest as text.
function nodes(kids) {
  return kids.flat(Infinity).filter((k) => k != null && k !== false).map((k) => (k instanceof Node ? k : String(k)));
}

// Replaces an element's content.
export function put(el, ...kids) {
  el.replaceChildren(...nodes(kids));
}

// Puts `children` into `parent` in order, moving only what is out of place (an element that is
// removed and re-inserted loses focus), and removes the rest.
export function arrange(parent, children) {
  let at = parent.firstChild;
  for (const child of children) {
    if (child === at) at = at.nextSibling;
    else parent.insertBefore(child, at);
  }
  while (at) {
    const next = at.nextSibling;
    at.remove();
    at = next;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const isMissing = (v) => v === null || v === undefined || v === '';
export const dash = (v) => (isMissing(v) ? '—' : String(v));

// Runs fn at most once per `ms`: a call inside the window is folded into one trailing run, so a
// burst of events costs one refetch, and the last change is never missed.
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}
