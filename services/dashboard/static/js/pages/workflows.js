/* Workflows page (#/workflows?status=&name=&page=): the pool's runs, newest first, with their
   progress, duration and cost (GET /v1/workflows), filtered by status or definition name; a row
   opens the run and its graph. Live: the pool's workflow events; the page is read again at most
   every 2 seconds while they arrive. */

import {get, session} from '../api.js';
import {badge, card, errorBox, fill, fmtDuration, fmtMoney, fmtTime, h, hashOf, liveReload, meter, pageHead, plural,
  table} from '../dom.js';
import {Stream} from '../stream.js';

const PAGE_SIZE = 25;
const STATUSES = ['queued', 'running', 'completed', 'partially_completed', 'failed', 'cancelled', 'timed_out'];

export function mount(view, ctx) {
  const abort = new AbortController();
  const filters = {status: ctx.query.get('status') || '', name: ctx.query.get('name') || ''};
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);
  const problem = h('div');
  const list = h('div', {id: 'workflows-table'});
  const pager = h('div', {class: 'pager'});
  const status = h('select', {name: 'status', id: 'filter-status'}, h('option', {value: ''}, 'any status'),
    STATUSES.map((st) => h('option', {value: st, selected: filters.status === st}, st.replace(/_/g, ' '))));
  const name = h('input', {name: 'name', placeholder: 'definition name', value: filters.name, autocomplete: 'off'});
  const form = h('form', {class: 'filters'}, status, name, h('button', {type: 'submit'}, 'Filter'));
  const apply = () => {
    filters.status = status.value;
    filters.name = name.value.trim();
    page = 1;
    load();
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); apply(); });
  status.addEventListener('change', apply);
  fill(view, pageHead('Workflows', h('span', {class: 'muted'}, `pool ${session.pool}`)),
    form, problem, card(null, list, pager));

  async function load() {
    history.replaceState(null, '', hashOf(['workflows'], {...filters, page: page > 1 ? page : ''}));
    try {
      const answer = await get('/v1/workflows', {...filters, page, page_size: PAGE_SIZE}, {signal: abort.signal});
      problem.replaceChildren();
      fill(list, table(COLUMNS, answer.workflows, {
        rowAttrs: (run) => ({dataset: {runId: run.execution_id, status: run.status}}),
        onRow: (run) => { location.hash = hashOf(['workflows', run.execution_id]); },
        emptyText: 'No run matches.',
      }));
      const pages = Math.max(1, Math.ceil(answer.total / PAGE_SIZE));
      fill(pager,
        h('button', {type: 'button', disabled: page <= 1, onclick: () => { page -= 1; load(); }}, '← Newer'),
        h('span', {class: 'muted'}, `page ${page} of ${pages} · ${answer.total} run${plural(answer.total)}`),
        h('button', {type: 'button', disabled: page >= pages, onclick: () => { page += 1; load(); }}, 'Older →'));
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, 'Reading workflow runs'));
    }
  }

  const reload = liveReload(load, 2000);
  const stream = new Stream([`pool/${session.pool}/workflows`], {onEvent: () => reload()});
  load().then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); stream.close(); }};
}

const COLUMNS = [
  {label: 'Run', value: (r) => h('a', {href: hashOf(['workflows', r.execution_id])}, r.execution_id)},
  {label: 'Definition', value: (r) => `${r.name} @ ${r.version}`},
  {label: 'Status', value: (r) => badge(r.status)},
  {label: 'Progress', value: (r) => meter(r.completed_tasks + r.failed_tasks + r.skipped_tasks, r.total_tasks,
    `${r.completed_tasks}/${r.total_tasks}${r.failed_tasks ? ` · ${r.failed_tasks} failed` : ''}`)},
  {label: 'Created', value: (r) => fmtTime(r.created_at)},
  {label: 'Took', value: (r) => fmtDuration(r.execution_time), class: 'num'},
  {label: 'Cost', value: (r) => fmtMoney(r.cost_usd), class: 'num'},
];
