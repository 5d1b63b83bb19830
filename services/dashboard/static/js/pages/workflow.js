/* One workflow run (#/workflows/<id>): its steps as a graph with each step's live status (completed
   steps turn green as their events arrive), the selected step's details and assignment audit, and,
   for a token whose role may run workflows, buttons to cancel the run (DELETE /v1/workflows/<id>)
   and to send a signal a signal step waits for (POST /v1/workflows/<id>/signals/<name>), e.g. an
   approval. Live: the run's channel (its own events and its steps' tasks' events and progress). */

import {get, request, session} from '../api.js';
import {can} from '../auth.js';
import {renderDag} from '../dag.js';
import {confirmDialog} from '../dialogs.js';
import {badge, card, empty, errorBox, facts, fill, fmtDuration, fmtMoney, fmtTime, h, hashOf, json, link, liveReload,
  meter, table} from '../dom.js';
import {Stream} from '../stream.js';
import {assignmentView} from './task.js';

const FINAL = new Set(['completed', 'partially_completed', 'failed', 'cancelled', 'timed_out']);
const ENDED_STEPS = new Set(['completed', 'failed', 'cancelled', 'skipped']);
const LEGEND = ['pending', 'queued', 'assigned', 'running', 'retrying', 'waiting', 'completed', 'failed', 'cancelled',
  'skipped'];

export function mount(view, ctx) {
  const runId = ctx.params[0];
  const enc = encodeURIComponent(runId);
  const abort = new AbortController();
  const head = h('div', {class: 'page-head'});
  const problem = h('div', {id: 'workflow-problem'});
  const summary = h('div');
  const graph = h('div', {class: 'dag-wrap', id: 'dag-wrap'});
  const stepPanel = h('div', {id: 'step-panel'});
  const signals = h('div', {id: 'signals'});
  const steps = h('div', {id: 'steps-table'});
  fill(view, h('p', {class: 'crumbs'}, h('a', {href: '#/workflows'}, 'Workflows'), ' / ', runId), head, problem,
    summary, card('Graph', graph, legend()), stepPanel, signals, card('Steps', steps));
  let run = null;
  let selected = null;
  const progress = new Map();  // step -> its latest progress message

  async function load() {
    try {
      run = await get(`/v1/workflows/${enc}`, {}, {signal: abort.signal});
      render();
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, `Reading run ${runId}`));
    }
  }

  function render() {
    const mayRun = can('workflows:run');
    const open = !FINAL.has(run.status);
    fill(head, h('h1', {}, run.execution_id), badge(run.status),
      h('span', {class: 'muted'}, `${run.name} @ ${run.version}`), h('span', {class: 'spacer'}),
      open && mayRun
        ? h('button', {type: 'button', class: 'danger', id: 'cancel-run', onclick: cancel}, 'Cancel run') : null,
      open && !mayRun ? h('span', {class: 'muted small', id: 'read-only-note'},
        'Read-only: this token may not cancel or signal runs.') : null);
    const ended = run.completed_tasks + run.failed_tasks + run.skipped_tasks;
    fill(summary, h('div', {class: 'columns'},
      card('Run', facts([
        ['Progress', meter(ended, run.total_tasks, `${run.completed_tasks} of ${run.total_tasks} steps completed`)],
        ['Created', fmtTime(run.created_at)],
        ['Started', fmtTime(run.started_at)],
        ['Ended', fmtTime(run.ended_at)],
        ['Execution time', fmtDuration(run.execution_time)],
        ['Cost', fmtMoney(run.cost_usd)],
        ['Failed / skipped', `${run.failed_tasks} / ${run.skipped_tasks}`],
        ['Ended because', run.reason ? `${run.code ? `${run.code}: ` : ''}${run.reason}` : undefined],
      ])),
      card('Inputs', Object.keys(run.inputs || {}).length ? json(run.inputs) : empty('No inputs.'))));
    fill(graph, renderDag(run.steps, {
      selected,
      onSelect: (step) => { selected = step.name; render(); },
      note: (step) => progress.get(step.name) || step.agent_name || step.agent_id || '',
    }));
    renderStep();
    renderSignals(mayRun);
    fill(steps, table([
      {label: 'Step', value: (st) => st.name},
      {label: 'Kind', value: (st) => st.kind},
      {label: 'Status', value: (st) => badge(st.status)},
      {label: 'After', value: (st) => (st.depends_on || []).join(', ') || '–'},
      {label: 'Task', value: (st) => (st.task_id ? link(['tasks', st.task_id]) : '–')},
      {label: 'Agent', value: (st) => (st.agent_id ? link(['agents', st.agent_id], st.agent_name || st.agent_id) : '–')},
      {label: 'Attempts', value: (st) => String(st.attempts), class: 'num'},
      {label: 'Cost', value: (st) => fmtMoney(st.cost_usd), class: 'num'},
      {label: 'Error / reason', value: (st) => st.error || st.reason || ''},
    ], run.steps, {rowAttrs: (st) => ({dataset: {step: st.name, status: st.status}}),
      onRow: (st) => { selected = st.name; render(); }}));
  }

  function renderStep() {
    const step = run.steps.find((st) => st.name === selected);
    if (!step) { stepPanel.replaceChildren(); return; }
    fill(stepPanel, card(`Step ${step.name}`, h('div', {class: 'columns'},
      facts([
        ['Status', badge(step.status)],
        ['Kind', step.kind],
        ['Task', step.task_id ? h('a', {href: hashOf(['tasks', step.task_id])}, step.task_id) : null],
        ['Agent', step.agent_id ? h('a', {href: hashOf(['agents', step.agent_id])},
          step.agent_name && step.agent_name !== step.agent_id ? `${step.agent_name} (${step.agent_id})` : step.agent_id)
          : null],
        ['Attempts', String(step.attempts)],
        ['Submitted', fmtTime(step.submitted_at)],
        ['Started', fmtTime(step.started_at)],
        ['Ended', fmtTime(step.ended_at)],
        ['Error', step.error ?? undefined],
        ['Skipped because', step.reason ?? undefined],
        ['Progress', progress.get(step.name) ?? undefined],
      ]),
      step.result !== null && step.result !== undefined ? json(step.result) : null),
    (step.audit || []).map((a) => assignmentView(a))));
  }

  function renderSignals(mayRun) {
    const waiting = run.steps.filter((st) => st.kind === 'signal' && !ENDED_STEPS.has(st.status));
    if (!waiting.length || FINAL.has(run.status)) { signals.replaceChildren(); return; }
    fill(signals, card('Signals', h('ul', {class: 'plain'}, waiting.map((st) => h('li', {},
      h('strong', {}, st.name), ' ', badge(st.status), ' ',
      st.status === 'waiting' ? 'waits for this signal' : 'not reached yet (a signal sent now is kept until it is)',
      ' ', mayRun ? h('button', {type: 'button', class: 'primary', dataset: {signal: st.name},
        onclick: () => signal(st.name)}, `Send ${st.name}`) : null)))));
  }

  async function cancel() {
    const ok = await confirmDialog(`Cancel run ${runId}?`,
      'Its open steps are cancelled and the steps not started are skipped; the run ends cancelled.',
      {confirm: 'Cancel run'});
    if (!ok) return;
    try {
      await request('DELETE', `/v1/workflows/${enc}`, {query: {wait: true, reason: 'cancelled from the dashboard'}});
      problem.replaceChildren();
    } catch (error) {
      fill(problem, errorBox(error, 'Cancelling the run'));
    }
    load();
  }

  async function signal(name) {
    const field = h('textarea', {id: 'signal-data', rows: 5, spellcheck: 'false'}, '{"approved": true}');
    let data = null;
    const ok = await confirmDialog(`Send signal ${name}?`,
      'The signal step completes with this JSON object as its result.', {
        extra: h('label', {class: 'block'}, 'data (a JSON object)', field),
        confirm: 'Send signal',
        validate: () => {
          try { data = JSON.parse(field.value); } catch (error) { return `Not JSON: ${error.message}`; }
          return data && typeof data === 'object' && !Array.isArray(data) ? null : 'data must be a JSON object';
        },
      });
    if (!ok) return;
    try {
      await request('POST', `/v1/workflows/${enc}/signals/${encodeURIComponent(name)}`,
        {query: {wait: true}, body: {data}});
      problem.replaceChildren();
    } catch (error) {
      fill(problem, errorBox(error, `Sending signal ${name}`));
    }
    load();
  }

  const reload = liveReload(load, 300);
  const stream = new Stream([`pool/${session.pool}/workflow:${runId}`], {
    onEvent: () => reload(),
    onProgress: (message) => {
      const step = message.task_id?.slice(runId.length + 1);
      if (step && message.message) {
        progress.set(step, message.message);
        if (run) render();
      }
    },
  });
  load().then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); stream.close(); }};
}

function legend() {
  return h('div', {class: 'legend'}, LEGEND.map((status) => badge(status)));
}
