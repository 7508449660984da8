// taskpulse status page, the entry module. No framework and no build step: ES modules the
// browser loads from /ui/ (same origin, as the CSP's script-src 'self' wants). Hash routing over
// four views (overview with the in-flight tasks, a task, the WAIT queue, the repairs audit),
// live updates from the server-sent event stream, and a token prompt when the API asks for a
// bearer token.
//
//   helpers, format, widgets   building elements, formatting, the shared pieces of a view
//   api                        requests, the token and which answers are still wanted
//   auth                       the token prompt
//   router                     the hash and the view on screen
//   overview, inflight, figures, task, chart, wait, repairs   the views, each with its state
//   live                       the event stream, which feeds the view on screen
//
// Everything shown comes from /api/v1 (same origin). Data is always put into the page with
// textContent / setAttribute, never as HTML, so nothing a worker reports can inject markup.
import { $ } from './helpers.js';
import { whenUnauthorized } from './api.js';
import { lockOut, onTokenSubmit } from './auth.js';
import { tickRelativeTimes } from './format.js';
import { followViews } from './live.js';
import * as router from './router.js';

function start() {
  whenUnauthorized(lockOut);
  followViews(router);
  $('#auth-form').addEventListener('submit', onTokenSubmit);
  window.addEventListener('hashchange', () => router.showRoute(true));
  setInterval(tickRelativeTimes, 5000);
  router.showRoute(false); // opens the stream once the view knows what to watch
}

start();
