/* Overview page (#/overview): the pool at a glance. Agents by status and health, task slots used and
   free, the queue and why it waits, tasks/s, commands/s and spend per hour, with live charts of the
   last 15 minutes.

   The rates come from the events themselves: the page subscribes to the pool's events, then seeds
   the charts by reading the last 15 minutes of the log from /v1/events up to the position the
   subscription started after (found by a binary search on event times), so live and replayed
   events meet without a gap or a double count. The gauges (queue depth, slots) are read from
   /v1/capacity and /v1/system/status when events arrive, at most every 5 seconds. */

import {get, session} from '../api.js';
import {Buckets, COLORS, timeChart} from '../charts.js';
import {badge, card, empty, errorBox, fill, fmtMoney, fmtNumber, fmtPercent, fmtTime, h, hashOf, liveReload,
  meter}
  from '../dom.js';
import {eventsSinceTime} from '../reads.js';
import {Stream} from '../stream.js';

const WINDOW_S = 15 * 60;
const STEP_S = 5;
const SEED_MAX_EVENTS = 5000;  // at most this many events are read back to seed the charts
const REFRESH_MS = 5000;  // the read models are read at most this often while events arrive
const IDLE_REFRESH_MS = 30_000;

export function mount(view, ctx) {
  const abort = new AbortController();
  const buckets = new Buckets(['submitted', 'completed', 'failed', 'commands', 'spend', 'queue', 'slots'],
    {windowS: WINDOW_S, stepS: STEP_S});
  const state = {lastCommand: null, snapshot: null};

  const cards = h('div', {class: 'cards', id: 'overview-cards'});
  const charts = h('div', {class: 'charts'});
  const panels = h('div', {class: 'panels'});
  const note = h('p', {class: 'muted small', id: 'seed-note'}, 'Reading the last 15 minutes…');
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Overview'), h('span', {class: 'muted'}, `pool ${session.pool}`)),
    cards, charts, note, panels);

  const chartEls = {
    rates: h('div', {class: 'chart', id: 'chart-rates'}),
    gauges: h('div', {class: 'chart', id: 'chart-gauges'}),
    spend: h('div', {class: 'chart', id: 'chart-spend'}),
  };
  charts.append(
    card('Throughput (per second)', chartEls.rates),
    card('Queue depth and slots in use', chartEls.gauges),
    card('Spend (USD per hour)', chartEls.spend));
  const rateChart = timeChart(chartEls.rates, [
    {label: 'tasks completed/s', color: COLORS.green, fill: true},
    {label: 'tasks submitted/s', color: COLORS.blue},
    {label: 'commands/s', color: COLORS.orange},
  ], {format: (v) => fmtNumber(v, 2), window: WINDOW_S});
  const gaugeChart = timeChart(chartEls.gauges, [
    {label: 'queue depth', color: COLORS.purple, fill: true},
    {label: 'slots used', color: COLORS.teal},
  ], {format: (v) => fmtNumber(v, 1), window: WINDOW_S});
  const spendChart = timeChart(chartEls.spend, [
    {label: 'USD/h (1 min average)', color: COLORS.red, fill: true},
  ], {format: (v) => fmtMoney(v), window: WINDOW_S});

  function count(event) {
    const time = Date.parse(event.time);
    if (event.commandid && event.commandid !== state.lastCommand) {
      // The events of one command are consecutive in its partition: a new id is a new command.
      state.lastCommand = event.commandid;
      buckets.add('commands', time);
    }
    if (event.type === 'TaskSubmitted') buckets.add('submitted', time);
    else if (event.type === 'TaskCompleted') buckets.add('completed', time);
    else if (event.type === 'TaskFailed') buckets.add('failed', time);
    else if (event.type === 'CostRecorded') buckets.add('spend', time, event.data?.cost_usd || 0);
  }

  function draw() {
    const now = Date.now();
    buckets.prune(now);
    const xs = buckets.xs(now);
    rateChart.update(xs, buckets.values('completed', xs, {per: STEP_S}),
      buckets.values('submitted', xs, {per: STEP_S}), buckets.values('commands', xs, {per: STEP_S}));
    gaugeChart.update(xs, buckets.values('queue', xs), buckets.values('slots', xs));
    const spend = buckets.values('spend', xs);
    const perMinute = 60 / STEP_S;
    const hourly = spend.map((_, i) => {
      let sum = 0;
      for (let j = Math.max(0, i - perMinute + 1); j <= i; j += 1) sum += spend[j];
      return sum * 60;  // USD in the last minute, per hour
    });
    spendChart.update(xs, hourly);
    renderCards();
  }

  function renderCards() {
    const snap = state.snapshot;
    if (!snap) return;
    const {system, capacity, costs} = snap;
    const now = Date.now();
    const perSecond = (name) => buckets.sumLast(name, 60, now) / 60;
    const spendHour = buckets.sumLast('spend', WINDOW_S, now) * (3600 / WINDOW_S);
    const agentStatuses = Object.entries(system.agents || {});
    const slots = capacity.slots;
    fill(cards,
      stat('Agents', fmtNumber(capacity.agents.total), h('div', {class: 'badges'},
        agentStatuses.length ? agentStatuses.map(([status, n]) => h('span', {}, badge(status), ` ${n}`)) : 'none',
        h('span', {class: 'muted'}, ` · ${capacity.agents.healthy} healthy`),
        capacity.agents.unhealthy ? h('span', {class: 'warn'}, ` · ${capacity.agents.unhealthy} unhealthy`) : null,
        capacity.agents.circuit_open ? h('span', {class: 'warn'}, ` · ${capacity.agents.circuit_open} circuit open`)
          : null), 'agents'),
      stat('Slots used / free', `${fmtNumber(slots.used)} / ${fmtNumber(slots.free)}`,
        meter(slots.used, slots.total, `${fmtPercent(slots.total ? slots.used / slots.total : 0)} of ${slots.total}`),
        'slots'),
      stat('Queue depth', fmtNumber(capacity.queue.depth),
        system.queue.oldest_queued_at ? `oldest since ${fmtTime(system.queue.oldest_queued_at)}` : 'nothing waits',
        'queue'),
      stat('Tasks/s', fmtNumber(perSecond('completed'), 2),
        `completed, last minute · ${fmtNumber(perSecond('submitted'), 2)}/s submitted`, 'tasks-rate'),
      stat('Commands/s', fmtNumber(perSecond('commands'), 2), 'decided, last minute', 'commands-rate'),
      stat('Spend / hour', fmtMoney(spendHour), `last 15 min · ${fmtMoney(costs.total_usd)} in all`, 'spend'),
    );
  }

  function renderPanels() {
    const {system, capacity} = state.snapshot;
    const waiting = Object.entries(system.queue.waiting_by_reason || {});
    const tasks = Object.entries(system.tasks || {});
    const runs = Object.entries(system.workflows || {});
    fill(panels,
      card('Tasks by status', tasks.length ? h('div', {class: 'badges'}, tasks.map(([status, n]) =>
        h('a', {href: hashOf(['tasks'], {status})}, badge(status), ` ${n}`))) : empty('No tasks yet.')),
      card('Why tasks wait', waiting.length ? h('ul', {class: 'plain'}, waiting.map(([code, n]) =>
        h('li', {}, h('code', {}, code), ` ${n}`))) : empty('Nothing is waiting.')),
      card('Workflow runs', runs.length ? h('div', {class: 'badges'}, runs.map(([status, n]) =>
        h('a', {href: hashOf(['workflows'], {status})}, badge(status), ` ${n}`)))
        : empty('No runs yet.')),
      card('Bottlenecks', capacity.bottlenecks.length || capacity.recommendations.length
        ? h('ul', {class: 'plain'}, capacity.recommendations.map((text) => h('li', {}, text)))
        : empty('None: every queued task has a capable agent.')),
    );
  }

  async function refresh() {
    try {
      const [system, capacity, costs] = await Promise.all([
        get('/v1/system/status', {}, {signal: abort.signal}),
        get('/v1/capacity', {}, {signal: abort.signal}),
        get('/v1/costs/summary', {}, {signal: abort.signal}),
      ]);
      state.snapshot = {system, capacity, costs};
      const now = Date.now();
      buckets.read('queue', now, capacity.queue.depth);
      buckets.read('slots', now, capacity.slots.used);
      renderPanels();
      draw();
      return true;
    } catch (error) {
      if (error.name === 'AbortError') return false;
      fill(panels, errorBox(error, 'Reading the pool'));
      return false;
    }
  }
  const refreshSoon = liveReload(refresh, REFRESH_MS);

  async function seed(after) {
    try {
      const {items, capped} = await eventsSinceTime(Date.now() - WINDOW_S * 1000, after,
        {max: SEED_MAX_EVENTS, signal: abort.signal});
      const live = state.lastCommand;
      state.lastCommand = null;
      items.forEach(count);
      state.lastCommand = live ?? state.lastCommand;
      note.textContent = capped ? `Charts seeded from the last ${SEED_MAX_EVENTS} events; live since.` : '';
      draw();
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(note, errorBox(error, 'Reading the last 15 minutes'));
    }
  }

  let seeding = false;
  const stream = new Stream([`pool/${session.pool}/events`], {
    onSubscribed: (message) => {
      if (seeding) return;  // a reconnect resumes where it was: nothing to seed again
      seeding = true;
      seed(message.after);
    },
    onEvent: (event) => {
      count(event);
      refreshSoon();
    },
  });

  const ticker = setInterval(draw, STEP_S * 1000);  // moves the window; reads nothing
  const idle = setInterval(refresh, IDLE_REFRESH_MS);
  refresh().then(() => ctx.ready());  // a failed read shows its error in the page

  return {
    unmount() {
      abort.abort();
      stream.close();
      clearInterval(ticker);
      clearInterval(idle);
      refreshSoon.cancel();
      rateChart.destroy();
      gaugeChart.destroy();
      spendChart.destroy();
    },
  };
}

function stat(label, value, detail, id) {
  return h('section', {class: 'stat', dataset: {stat: id}},
    h('div', {class: 'stat-label'}, label),
    h('div', {class: 'stat-value'}, value),
    h('div', {class: 'stat-detail'}, detail));
}
