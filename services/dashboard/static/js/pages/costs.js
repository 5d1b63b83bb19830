/* Costs page (#/costs?by=model|agent|workflow): what was spent, by model, agent and workflow run,
   over time, and every budget with what is spent and left.

   Totals and budgets come from GET /v1/costs/summary; the spend over time from the pool's
   CostRecorded events (GET /v1/events?type=CostRecorded, then live on the type:CostRecorded
   channel). A cost belongs to a run when its task is one of the run's steps (<run id>.<step>). */

import {eventsSince, get, session} from '../api.js';
import {COLORS, timeChart} from '../charts.js';
import {badge, card, empty, errorBox, fill, fmtMoney, fmtPercent, fmtTime, h, hashOf, liveReload, meter, pageHead,
  table, throttle} from '../dom.js';
import {workflowOfTask} from '../reads.js';
import {Stream} from '../stream.js';

const HISTORY_MAX = 20_000;  // cost events read for the chart
const TOP = 6;  // groups drawn; the rest are summed as "other"
const GROUPS = {
  model: (data) => data.model,
  agent: (data) => data.agent_id,
  workflow: (data) => (data.task_id && workflowOfTask(data.task_id)) || '(no run)',
};
const PALETTE = [COLORS.blue, COLORS.green, COLORS.orange, COLORS.purple, COLORS.red, COLORS.teal, COLORS.grey];

export function mount(view, ctx) {
  const abort = new AbortController();
  let by = GROUPS[ctx.query.get('by')] ? ctx.query.get('by') : 'model';
  const costs = [];
  const seen = new Set();
  const problem = h('div');
  const totals = h('div', {class: 'columns', id: 'cost-totals'});
  const budgets = h('div', {id: 'budgets'});
  const chartBox = h('div', {class: 'chart', id: 'chart-costs'});
  const choose = h('div', {class: 'segmented', role: 'group', 'aria-label': 'Group spend by'},
    Object.keys(GROUPS).map((key) => h('button', {type: 'button', dataset: {by: key},
      class: key === by ? 'on' : null, onclick: () => { by = key; draw(); }}, key)));
  const chartNote = h('p', {class: 'muted small'});
  fill(view, pageHead('Costs', h('span', {class: 'muted'}, `pool ${session.pool}`)),
    problem, h('div', {id: 'budget-card'}, card('Budgets', budgets)),
    card('Spend over time (cumulative)', choose, chartBox, chartNote), totals);
  let chart = null;

  function add(event) {
    if (seen.has(event.id)) return false;
    seen.add(event.id);
    costs.push({time: Date.parse(event.time), data: event.data});
    return true;
  }

  function draw() {
    history.replaceState(null, '', hashOf(['costs'], {by: by === 'model' ? '' : by}));
    for (const button of choose.querySelectorAll('button')) button.classList.toggle('on', button.dataset.by === by);
    costs.sort((a, b) => a.time - b.time);
    const group = GROUPS[by];
    const sums = new Map();
    for (const cost of costs) {
      const key = group(cost.data);
      sums.set(key, (sums.get(key) || 0) + (cost.data.cost_usd || 0));
    }
    const ranked = [...sums.entries()].sort((a, b) => b[1] - a[1]);
    const names = ranked.slice(0, TOP).map(([name]) => name);
    const other = ranked.length > TOP;
    const series = [...names, ...(other ? ['other'] : [])];
    chart?.destroy();
    chartBox.replaceChildren();
    if (!costs.length) {
      chart = null;
      fill(chartNote, 'No cost recorded yet.');
      return;
    }
    chart = timeChart(chartBox, series.map((name, i) => ({label: name, color: PALETTE[i % PALETTE.length]})),
      {height: 200, format: (v) => fmtMoney(v)});
    const running = new Map(series.map((name) => [name, 0]));
    const xs = [];
    const ys = series.map(() => []);
    for (const cost of costs) {
      const key = names.includes(group(cost.data)) ? group(cost.data) : 'other';
      running.set(key, running.get(key) + (cost.data.cost_usd || 0));
      xs.push(cost.time / 1000);
      series.forEach((name, i) => ys[i].push(running.get(name)));
    }
    xs.push(Date.now() / 1000);  // the totals hold until now
    ys.forEach((y) => y.push(y[y.length - 1]));
    chart.update(xs, ...ys);
    fill(chartNote, `${costs.length} costs since ${fmtTime(new Date(costs[0].time).toISOString())}` +
      (costs.length >= HISTORY_MAX ? ` (the first ${HISTORY_MAX} read, then live)` : ''));
  }

  async function loadSummary() {
    try {
      const summary = await get('/v1/costs/summary', {}, {signal: abort.signal});
      problem.replaceChildren();
      const byRun = new Map();
      for (const [task, usd] of Object.entries(summary.by_task)) {
        const run = workflowOfTask(task) || '(no run)';
        byRun.set(run, (byRun.get(run) || 0) + usd);
      }
      fill(totals,
        breakdown('By model', summary.by_model, summary.total_usd),
        breakdown('By agent', summary.by_agent, summary.total_usd, (id) => hashOf(['agents', id])),
        breakdown('By workflow run', Object.fromEntries(byRun), summary.total_usd,
          (id) => (id === '(no run)' ? null : hashOf(['workflows', id]))),
        card('Total', h('p', {class: 'big', id: 'cost-total'}, fmtMoney(summary.total_usd))));
      fill(budgets, summary.budgets.length ? table([
        {label: 'Scope', value: (b) => b.scope},
        {label: 'Of', value: (b) => b.scope_id},
        {label: 'Limit', value: (b) => fmtMoney(b.limit_usd), class: 'num'},
        {label: 'Spent', value: (b) => fmtMoney(b.spent_usd), class: 'num'},
        {label: 'Left', value: (b) => fmtMoney(b.left_usd), class: 'num'},
        {label: 'Used', value: (b) => meter(b.spent_usd, b.limit_usd,
          fmtPercent(b.limit_usd ? b.spent_usd / b.limit_usd : 1))},
        {label: '', value: (b) => (b.exceeded ? badge('exceeded') : badge('within'))},
      ], summary.budgets, {rowAttrs: (b) => ({dataset: {scope: b.scope, scopeId: b.scope_id}})})
        : empty('No budget is set (PUT /v1/budgets).'));
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, 'Reading costs'));
    }
  }

  async function loadHistory() {
    try {
      const items = await eventsSince(-1, {type: 'CostRecorded', max: HISTORY_MAX, signal: abort.signal});
      items.forEach(add);
      draw();
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(chartNote, errorBox(error, 'Reading cost events'));
    }
  }

  const reload = liveReload(loadSummary, 2000);
  const redraw = throttle(draw, 1000);
  const pool = `pool/${session.pool}`;
  const stream = new Stream([`${pool}/type:CostRecorded`, `${pool}/type:BudgetSet`, `${pool}/type:BudgetExceeded`], {
    onEvent: (event) => {
      if (event.type === 'CostRecorded' && add(event)) redraw();
      reload();
    },
  });
  Promise.all([loadSummary(), loadHistory()]).then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); redraw.cancel(); stream.close(); chart?.destroy(); }};
}

function breakdown(title, amounts, total, link) {
  const rows = Object.entries(amounts).sort((a, b) => b[1] - a[1]);
  return card(title, table([
    {label: 'Name', value: ([name]) => {
      const href = link ? link(name) : null;
      return href ? h('a', {href}, name) : name;
    }},
    {label: 'Spent', value: ([, usd]) => fmtMoney(usd), class: 'num'},
    {label: 'Share', value: ([, usd]) => meter(usd, total, fmtPercent(total ? usd / total : 0), {levels: false})},
  ], rows, {emptyText: 'Nothing spent yet.'}));
}
