/* Tasks page (#/tasks?status=&type=&agent_id=&workflow=&page=): tasks newest first, filtered by
   status, type, agent or workflow run, a page at a time; a row opens the task (#/tasks/<id>).

   Live: the page follows the pool's task events. A submitted task that matches the filters is shown
   at the top of the first page as soon as its event arrives; then the page is read again from the
   API (at most once a second while events arrive). A run's tasks are its steps' tasks, read from
   GET /v1/workflows/<id>. */

import {get, session} from '../api.js';
import {badge, card, errorBox, fill, fmtDuration, fmtTime, h, hashOf, liveReload, pageHead, plural, secondsBetween,
  table} from '../dom.js';
import {newestTasks, workflowOfTask} from '../reads.js';
import {Stream} from '../stream.js';

const PAGE_SIZE = 25;
const ARRIVED_KEEP_MS = 5000;
const STATUSES = ['queued', 'assigned', 'running', 'retrying', 'completed', 'failed', 'cancelled'];
const FILTERS = ['status', 'type', 'agent_id', 'workflow'];

export function mount(view, ctx) {
  const abort = new AbortController();
  const filters = Object.fromEntries(FILTERS.map((name) => [name, ctx.query.get(name) || '']));
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);
  let rows = [];
  let total = 0;
  // Tasks known from their TaskSubmitted event that a read did not list yet: the stream runs ahead
  // of the read models by a moment, and a read in that moment must not hide a task already shown.
  const arrived = new Map();

  const form = filterForm(filters, (values) => {
    Object.assign(filters, values);
    page = 1;
    load();
  });
  const list = h('div', {id: 'tasks-table'});
  const pager = h('div', {class: 'pager'});
  const problem = h('div');
  fill(view,
    pageHead('Tasks', h('span', {class: 'muted'}, `pool ${session.pool}`)),
    form, problem, card(null, list, pager));

  function remember() {
    // Keep the filters in the URL without a hashchange (which would remount the page).
    history.replaceState(null, '', hashOf(['tasks'], {...filters, page: page > 1 ? page : ''}));
  }

  async function read() {
    const query = {status: filters.status, type: filters.type, agent_id: filters.agent_id};
    if (!filters.workflow) return newestTasks(query, page, PAGE_SIZE, {signal: abort.signal});
    const run = await get(`/v1/workflows/${encodeURIComponent(filters.workflow)}`, {}, {signal: abort.signal});
    const ids = run.steps.filter((step) => step.task_id).map((step) => step.task_id).reverse();
    const tasks = (await Promise.all(ids.map((id) =>
      get(`/v1/tasks/${encodeURIComponent(id)}`, {}, {signal: abort.signal}).catch((error) => {
        if (error.status === 404) return null;  // a step being submitted right now
        throw error;
      })))).filter(Boolean).filter((task) => matches(task, query));
    return {items: tasks.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE), total: tasks.length};
  }

  async function load() {
    remember();
    try {
      const answer = await read();
      const listed = new Set(answer.items.map((task) => task.task_id));
      const now = Date.now();
      for (const [id, task] of arrived) {
        if (listed.has(id) || now - task.arrived > ARRIVED_KEEP_MS) arrived.delete(id);
      }
      const ahead = page === 1 ? [...arrived.values()].filter((task) => matches(task, filters)).reverse() : [];
      rows = [...ahead, ...answer.items].slice(0, PAGE_SIZE);
      total = answer.total + ahead.length;
      problem.replaceChildren();
      render();
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, 'Reading tasks'));
    }
  }

  function render() {
    fill(list, table(COLUMNS, rows, {
      rowAttrs: (task) => ({dataset: {taskId: task.task_id, status: task.status},
        class: task.fresh ? 'fresh' : null}),
      onRow: (task) => { location.hash = hashOf(['tasks', task.task_id]); },
      emptyText: 'No task matches.',
    }));
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    fill(pager,
      h('button', {type: 'button', disabled: page <= 1, onclick: () => { page -= 1; load(); }}, '← Newer'),
      h('span', {class: 'muted'}, `page ${page} of ${pages} · ${total} task${plural(total)}`),
      h('button', {type: 'button', disabled: page >= pages, onclick: () => { page += 1; load(); }}, 'Older →'));
  }

  const reload = liveReload(load, 1000);
  const stream = new Stream([`pool/${session.pool}/tasks`], {
    onEvent: (event) => {
      if (event.type === 'TaskSubmitted') {
        const task = submitted(event);
        arrived.set(task.task_id, task);
        if (page === 1 && matches(task, filters) && !rows.some((row) => row.task_id === task.task_id)) {
          rows = [task, ...rows].slice(0, PAGE_SIZE);
          total += 1;
          render();
        }
      }
      reload();
    },
  });

  load().then(() => ctx.ready());
  return {
    unmount() {
      abort.abort();
      reload.cancel();
      stream.close();
    },
  };
}

const COLUMNS = [
  {label: 'Task', value: (t) => h('a', {href: hashOf(['tasks', t.task_id])}, t.task_id)},
  {label: 'Type', value: (t) => t.type},
  {label: 'Status', value: (t) => badge(t.status)},
  {label: 'Agent', value: (t) => (t.agent_id ? h('a', {href: hashOf(['agents', t.agent_id])}, t.agent_id) : '–')},
  {label: 'Priority', value: (t) => String(t.priority ?? '–'), class: 'num'},
  {label: 'Attempts', value: (t) => String(t.attempts ?? 0), class: 'num'},
  {label: 'Waiting', value: (t) => (t.waiting_reason ? h('code', {}, t.waiting_reason.code) : '')},
  {label: 'Submitted', value: (t) => fmtTime(t.submitted_at)},
  {label: 'Took', value: (t) => (t.finished_at ? fmtDuration(secondsBetween(t.started_at || t.assigned_at,
    t.finished_at)) : ''), class: 'num'},
];

/** A row for a task known only from its TaskSubmitted event (until the page is read again). */
function submitted(event) {
  const data = event.data || {};
  return {task_id: data.task_id, type: data.type, status: 'queued', agent_id: null, priority: data.priority,
    attempts: 0, waiting_reason: null, submitted_at: event.time, fresh: true, arrived: Date.now()};
}

function matches(task, filters) {
  if (filters.status && task.status !== filters.status) return false;
  if (filters.type && task.type !== filters.type) return false;
  if (filters.agent_id && task.agent_id !== filters.agent_id) return false;
  if (filters.workflow && workflowOfTask(task.task_id) !== filters.workflow) return false;
  return true;
}

function filterForm(values, onApply) {
  const status = h('select', {name: 'status', id: 'filter-status'},
    h('option', {value: ''}, 'any status'),
    STATUSES.map((s) => h('option', {value: s, selected: values.status === s}, s)));
  const field = (name, label) => h('input', {name, id: `filter-${name}`, placeholder: label, value: values[name],
    autocomplete: 'off', spellcheck: 'false'});
  const form = h('form', {class: 'filters', id: 'task-filters'},
    status, field('type', 'type'), field('agent_id', 'agent id'), field('workflow', 'workflow run id'),
    h('button', {type: 'submit'}, 'Filter'),
    h('button', {type: 'reset', class: 'quiet'}, 'Clear'));
  const apply = () => onApply(Object.fromEntries(FILTERS.map((name) => [name, form.elements[name].value.trim()])));
  form.addEventListener('submit', (event) => { event.preventDefault(); apply(); });
  form.addEventListener('reset', (event) => {
    event.preventDefault();  // a reset restores the values the page opened with: clear them instead
    for (const name of FILTERS) form.elements[name].value = '';
    apply();
  });
  status.addEventListener('change', apply);
  return form;
}
