/* The dashboard's entry point: signs in when the API asks for a token, then shows the page the URL's
   hash names (#/overview, #/agents/<id>, #/tasks?status=queued, ...), unmounting the previous one
   (which closes its live stream). Also the header: the pool every page reads, who is signed in,
   and signing out. */

import {DEFAULT_POOL, session} from './api.js';
import {access, probe, readsWork, watchUnauthorized} from './auth.js';
import {errorBox, fill, parseHash} from './dom.js';
import * as agents from './pages/agents.js';
import * as costs from './pages/costs.js';
import * as events from './pages/events.js';
import * as overview from './pages/overview.js';
import * as task from './pages/task.js';
import * as tasks from './pages/tasks.js';
import * as workflow from './pages/workflow.js';
import * as workflows from './pages/workflows.js';

// page name -> [module of its list, module of one item (#/<page>/<id>)]
const PAGES = {
  overview: [overview, null],
  agents: [agents, agents],
  tasks: [tasks, task],
  workflows: [workflows, workflow],
  costs: [costs, null],
  events: [events, null],
};

const view = document.getElementById('view');
let current = null;
let signedIn = false;

function route() {
  if (!signedIn) return;
  const {parts, query} = parseHash(location.hash || '#/overview');
  const name = PAGES[parts[0]] ? parts[0] : 'overview';
  const [list, item] = PAGES[name];
  const module = parts.length > 1 && item ? item : list;
  if (current) {
    try { current.unmount?.(); } catch (error) { console.warn('unmount failed', error); }
    current = null;
  }
  fill(view);
  view.dataset.mount = String(Number(view.dataset.mount || 0) + 1);  // tells one page load from the next
  view.dataset.page = name;
  view.dataset.view = module === list ? 'list' : 'item';
  view.dataset.state = 'loading';
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.page === name);
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `agentbus · ${name}`;
  const ctx = {
    params: parts.slice(1),
    query,
    ready: () => { view.dataset.state = 'ready'; },
    failed: (error) => {
      view.dataset.state = 'error';
      view.prepend(errorBox(error, 'This page could not load'));
    },
  };
  try {
    current = module.mount(view, ctx);
  } catch (error) {
    ctx.failed(error);
  }
}

function showSession() {
  const who = document.getElementById('who');
  const signout = document.getElementById('signout');
  const token = Boolean(session.token);
  who.hidden = !token;
  signout.hidden = !token;
  if (token) {
    const limited = [...access.denied];
    who.textContent = `signed in as ${access.role}${limited.length ? ' · read-only' : ''}`;
    who.title = `${access.id}` + (limited.length ? ` · this role may not: ${limited.join(', ')}` : '');
    who.dataset.readOnly = limited.length ? 'true' : 'false';
  }
}

async function afterSignIn() {
  await probe();
  signedIn = true;
  showSession();
  route();
}

function setUpHeader() {
  const pool = document.getElementById('pool');
  pool.value = session.pool;
  document.getElementById('pool-form').addEventListener('submit', (event) => {
    event.preventDefault();
    session.pool = pool.value.trim() || DEFAULT_POOL;
    pool.value = session.pool;
    route();
  });
  pool.addEventListener('change', () => pool.form.requestSubmit());
  document.getElementById('signout').addEventListener('click', () => {
    session.token = null;
    location.reload();
  });
  window.addEventListener('hashchange', route);
}

async function boot() {
  setUpHeader();
  watchUnauthorized(afterSignIn);
  try {
    if (await readsWork()) await afterSignIn();
    // else: the sign-in dialog is open; afterSignIn runs once a token works
  } catch (error) {
    view.dataset.state = 'error';
    fill(view, errorBox(error, 'The API did not answer'));
  }
}

boot();
