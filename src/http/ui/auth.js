// Auth: a 401 anywhere hides all data and shows the token prompt.
import { $ } from './helpers.js';
import { endSession, signIn } from './api.js';
import { forgetOverview } from './figures.js';
import { setLive, stopEvents } from './live.js';
import { dropView, showRoute } from './router.js';

export function lockOut(tokenWasRejected) {
  if (!endSession()) return;
  stopEvents();
  forgetOverview();
  dropView();
  $('#view').replaceChildren();
  $('#version').textContent = '';
  $('#auth-msg').textContent = tokenWasRejected
    ? 'The token was not accepted. Enter the access token this taskpulse runs with.'
    : 'This taskpulse asks for a token before it shows any task data.';
  $('#auth').hidden = false;
  setLive('off', 'signed out');
  $('#auth-token').focus();
}

export function onTokenSubmit(event) {
  event.preventDefault();
  const input = $('#auth-token');
  const token = input.value.trim();
  if (!token) return;
  input.value = '';
  signIn(token);
  $('#auth').hidden = true;
  showRoute(true); // opens the stream once the view knows what to watch
}
