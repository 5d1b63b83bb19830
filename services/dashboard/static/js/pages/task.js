/* One task (#/tasks/<id>): its state, why it waits (waiting_reason), its timeline (every event about
   it, each with the command, coordinator decision or timer that caused it: GET /v1/tasks/<id>/history)
   and the assignment audit (every candidate agent weighed, its score components, and why the chosen
   one won: GET /v1/audit/assignments). Live: the task's channel; progress messages show as they come.
   An operator may cancel an open task here. */

import {get, request, session} from '../api.js';
import {can} from '../auth.js';
import {badge, card, empty, errorBox, facts, fill, fmtDuration, fmtNumber, fmtTime, h, hashOf, json, liveReload,
  plural, secondsBetween, table} from '../dom.js';
import {confirmDialog} from '../dialogs.js';
import {workflowOfTask} from '../reads.js';
import {Stream} from '../stream.js';

const OPEN = new Set(['queued', 'assigned', 'running', 'retrying']);

// What each waiting_reason code means, in words (the fields it carries follow).
export const WAITING = {
  all_capable_agents_busy: 'Every capable agent is busy; it is assigned when one frees a slot.',
  no_capable_agent: 'No registered agent has the required capabilities.',
  rate_limited: 'Every capable free agent is rate limited.',
  budget_exceeded: 'The budget it would spend against is exhausted.',
  circuit_open: 'Every capable agent\'s circuit breaker is open.',
  agents_unhealthy: 'Every capable agent missed its heartbeat.',
  retry_backoff: 'A run failed; the next attempt waits for its backoff.',
  deferred_by_agent: 'The agent holding it gave it back for a while.',
};

export function mount(view, ctx) {
  const taskId = ctx.params[0];
  const abort = new AbortController();
  const head = h('div', {class: 'page-head'});
  const problem = h('div');
  const body = h('div', {class: 'detail'});
  const progress = h('div', {id: 'task-progress'});
  const crumbs = h('p', {class: 'crumbs'}, h('a', {href: '#/tasks'}, 'Tasks'), ' / ', taskId);
  fill(view, crumbs, head, problem, progress, body);
  let progressText = '';

  async function load() {
    const enc = encodeURIComponent(taskId);
    try {
      const [task, history, audit] = await Promise.all([
        get(`/v1/tasks/${enc}`, {}, {signal: abort.signal}),
        readHistory(enc, abort.signal),
        get('/v1/audit/assignments', {task_id: taskId, limit: 100}, {signal: abort.signal}),
      ]);
      problem.replaceChildren();
      render(task, history, audit.items);
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, `Reading task ${taskId}`));
    }
  }

  function render(task, history, assignments) {
    const run = workflowOfTask(task.task_id);
    fill(head, h('h1', {}, task.task_id), badge(task.status), h('span', {class: 'muted'}, task.type),
      h('span', {class: 'spacer'}),
      OPEN.has(task.status) && can('tasks:manage')
        ? h('button', {type: 'button', class: 'danger', id: 'cancel-task', onclick: () => cancel()}, 'Cancel task')
        : null);
    fill(body,
      h('div', {class: 'columns'},
        card('Task', facts([
          ['Type', task.type],
          ['Action', task.action ?? undefined],
          ['Priority', String(task.priority)],
          ['Agent', task.agent_id ? h('a', {href: hashOf(['agents', task.agent_id])}, task.agent_id) : null],
          ['Workflow run', run ? h('a', {href: hashOf(['workflows', run])}, run) : undefined],
          ['Capabilities', (task.required_capabilities || []).join(', ') || '–'],
          ['Attempts', `${task.attempts} (failures ${task.failures}, timeouts ${task.timeouts}, ` +
            `reassigned ${task.reassignments})`],
          ['Submitted', fmtTime(task.submitted_at)],
          ['Assigned', fmtTime(task.assigned_at)],
          ['Started', fmtTime(task.started_at)],
          ['Finished', fmtTime(task.finished_at)],
          ['Took', task.finished_at
            ? fmtDuration(secondsBetween(task.started_at || task.assigned_at, task.finished_at)) : undefined],
          ['Error', task.error ? `${task.error_code ? `${task.error_code}: ` : ''}${task.error}` : undefined],
        ])),
        waitingCard(task)),
      task.result !== null && task.result !== undefined ? card('Result', json(task.result)) : null,
      Object.keys(task.parameters || {}).length ? card('Parameters', json(task.parameters)) : null,
      card(`Timeline (${history.events.length} events)`, timeline(history)),
      card('Assignment audit', assignments.length
        ? assignments.map((a) => assignmentView(a)) : empty('Not assigned yet.')));
  }

  async function cancel() {
    const ok = await confirmDialog(`Cancel task ${taskId}?`, 'Its agent is told to stop; the task ends cancelled.');
    if (!ok) return;
    try {
      await request('POST', `/v1/tasks/${encodeURIComponent(taskId)}/cancel`, {query: {wait: true}, body: {}});
      load();
    } catch (error) {
      fill(problem, errorBox(error, 'Cancelling the task'));
    }
  }

  const reload = liveReload(load, 500);
  const stream = new Stream([`pool/${session.pool}/task:${taskId}`], {
    onEvent: () => reload(),
    onProgress: (message) => {
      if (message.delta) progressText = (progressText + message.delta).slice(-4000);
      fill(progress, card('Progress (live)',
        message.message ? h('p', {}, message.message) : null,
        progressText ? h('pre', {class: 'json'}, progressText) : null,
        message.data ? json(message.data) : null));
    },
  });
  load().then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); stream.close(); }};
}

const HISTORY_PAGES = 10;

/** The task's history, continued (after=next_after) while the server stopped short, up to 10 reads. */
async function readHistory(enc, signal) {
  let history = await get(`/v1/tasks/${enc}/history`, {}, {signal});
  for (let i = 1; i < HISTORY_PAGES && !history.complete; i += 1) {
    const more = await get(`/v1/tasks/${enc}/history`, {after: history.next_after}, {signal});
    history = {...more, events: [...history.events, ...more.events]};
  }
  return history;
}

function waitingCard(task) {
  const reason = task.waiting_reason;
  if (!reason) {
    return card('Waiting reason', empty(OPEN.has(task.status) ? 'Not waiting.' : `Not waiting: ${task.status}.`));
  }
  const details = Object.entries(reason).filter(([key, value]) => key !== 'code' && value !== null);
  return card('Waiting reason', h('div', {class: 'waiting', id: 'waiting-reason', dataset: {code: reason.code}},
    h('p', {}, h('code', {}, reason.code), ' ', WAITING[reason.code] || ''),
    facts(details.map(([key, value]) => [key, key === 'since' || key === 'until' ? fmtTime(value)
      : Array.isArray(value) ? value.join(', ') : String(value)]))));
}

function summary(data) {
  if (!data || typeof data !== 'object') return '';
  return Object.entries(data)
    .filter(([key, value]) => key !== 'task_id' && value !== null && typeof value !== 'object')
    .slice(0, 5).map(([key, value]) => `${key}=${value}`).join(' · ');
}

function causeOf(cause) {
  if (!cause) return null;
  const parts = [];
  if (cause.command) {
    parts.push(`command ${cause.command.type || cause.command.id}`);
    if (cause.command.actor) parts.push(`by ${cause.command.actor}`);
  }
  if (cause.decision) parts.push(`coordinator chose ${cause.decision.agent_id} (attempt ${cause.decision.attempt})`);
  if (cause.timer) parts.push(`timer ${cause.timer.kind} fired`);
  return parts.length ? h('span', {class: 'cause muted small'}, `← ${parts.join(' · ')}`) : null;
}

function timeline(history) {
  if (!history.events.length) return empty('No events yet.');
  return h('ol', {class: 'timeline', id: 'timeline'}, history.events.map((event) =>
    h('li', {dataset: {type: event.type, position: event.position}},
      h('span', {class: 'when'}, fmtTime(event.time)),
      h('span', {class: 'what'}, h('strong', {}, event.type), ' ', h('span', {class: 'small'}, summary(event.data))),
      causeOf(event.cause),
      h('details', {}, h('summary', {}, `position ${event.position}`), json(event.data)))),
  history.complete ? null : h('li', {class: 'muted'}, `More events follow after position ${history.next_after}.`));
}

/** One assignment: its strategy and figures, each candidate weighed, and why the chosen one won. */
export function assignmentView(a) {
  const candidates = [...(a.candidates || [])].sort((x, y) => (y.score ?? 0) - (x.score ?? 0));
  const names = [...new Set(candidates.flatMap((c) => Object.keys(c.components || {})))];
  const chosen = candidates.find((c) => c.agent_id === a.agent_id);
  const runnerUp = candidates.find((c) => c.agent_id !== a.agent_id);
  const next = runnerUp ? ` (next: ${runnerUp.agent_id} at ${fmtNumber(runnerUp.score, 3)})` : '';
  const count = `${candidates.length} candidate${plural(candidates.length)}`;
  const why = chosen
    ? `${a.agent_id} scored ${fmtNumber(chosen.score, 3)}, the best of ${count}${next}.`
    : `${a.agent_id} was chosen.`;
  const skipped = Object.entries(a.skipped || {});
  return h('div', {class: 'assignment', dataset: {attempt: a.attempt, agent: a.agent_id}},
    h('p', {}, h('strong', {}, `Attempt ${a.attempt} → `),
      h('a', {href: hashOf(['agents', a.agent_id])}, a.agent_id), ` at ${fmtTime(a.assigned_at)}`,
      h('span', {class: 'muted small'}, ` · strategy ${a.strategy || '–'} · ${a.eligible ?? '–'} eligible, ${
        a.considered ?? '–'} considered · decided in ${fmtNumber(a.decision_us, 0)} µs`)),
    h('p', {class: 'why'}, why),
    table([
      {label: 'Candidate', value: (c) => h('span', {}, c.agent_id, c.agent_id === a.agent_id ? ' ✓' : '')},
      {label: 'Score', value: (c) => fmtNumber(c.score, 3), class: 'num'},
      {label: 'Load', value: (c) => `${c.load ?? '–'}/${c.capacity ?? '–'}`, class: 'num'},
      {label: 'Capability match', value: (c) => fmtNumber(c.capability_match, 2), class: 'num'},
      ...names.map((name) => ({label: name, value: (c) => fmtNumber(c.components?.[name], 3), class: 'num'})),
    ], candidates, {rowAttrs: (c) => ({class: c.agent_id === a.agent_id ? 'chosen' : null})}),
    skipped.length || a.capability_gap?.length || a.preferred?.length
      ? h('p', {class: 'muted small'},
        skipped.length ? `Skipped: ${skipped.map(([why_, n]) => `${why_} ${n}`).join(', ')}. ` : '',
        a.capability_gap?.length ? `Capability gap: ${a.capability_gap.join(', ')}. ` : '',
        a.preferred?.length ? `Preferred: ${a.preferred.join(', ')}.` : '')
      : null);
}
