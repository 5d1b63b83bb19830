/* Signing in, and what the signed-in token may do.

   When the API answers 401 the page asks for a bearer token (an API token or a JWT), checks it with
   a read, and keeps it in sessionStorage for this tab. What the token may do comes from the API
   (GET /v1/auth/me: its role and that role's permissions): buttons of actions the role lacks are
   not shown; any refusal the server still makes is shown as the error it is. */

import {ApiError, onUnauthorized, request, session} from './api.js';

// The permissions behind the dashboard's own buttons (cancel a task, cancel or signal a run).
const ACTIONS = ['tasks:manage', 'workflows:run'];

export const access = {denied: new Set(), role: null, id: null};

/** False only when the token's role lacks this permission. */
export function can(permission) {
  return !access.denied.has(permission);
}

/** Ask the API who the token is and what its role may do (without a token: everything). */
export async function probe() {
  access.denied.clear();
  access.role = access.id = null;
  if (!session.token) return;
  const me = await request('GET', '/v1/auth/me');
  access.role = me.role;
  access.id = me.id;
  const held = new Set(me.permissions);
  for (const permission of ACTIONS) {
    if (!held.has(permission)) access.denied.add(permission);
  }
}

/** Resolves true when reads work with the tab's token (or with none), false on 401 (which also
    opens the sign-in dialog, through watchUnauthorized). */
export async function readsWork() {
  try {
    await request('GET', '/v1/system/status');
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return false;
    throw error;
  }
}

let asking = null;

/** Show the sign-in dialog until a token the API accepts is entered; resolves once it is. */
export function askForToken(reason) {
  if (asking) return asking;
  const dialog = document.getElementById('login');
  const form = document.getElementById('login-form');
  const input = document.getElementById('token');
  const problem = document.getElementById('login-error');
  const say = (text) => { problem.textContent = text || ''; problem.hidden = !text; };
  say(reason);
  input.value = '';
  asking = new Promise((resolve) => {
    const submit = async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      say('');
      try {
        await request('GET', '/v1/system/status', {token});
      } catch (error) {
        say(error.status === 401
          ? `This token was refused (401): ${error.lines()[0]}`
          : `${error.title}: ${error.lines()[0]}`);
        input.select();
        return;
      }
      session.token = token;
      form.removeEventListener('submit', submit);
      dialog.removeEventListener('cancel', stay);
      dialog.close();
      asking = null;
      resolve();
    };
    const stay = (event) => event.preventDefault();  // Escape: the pages cannot load without a token
    form.addEventListener('submit', submit);
    dialog.addEventListener('cancel', stay);
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return asking;
}

/** When a request is refused with 401 mid-session (token revoked or expired), ask again. */
export function watchUnauthorized(onSignedIn) {
  onUnauthorized((error) => {
    if (asking) return;  // already asking: the sign-in that ends it reloads the page once
    const had = Boolean(session.token);
    session.token = null;
    const reason = had ? `The server no longer accepts this token: ${error.lines()[0]}` : '';
    askForToken(reason).then(onSignedIn);
  });
}
