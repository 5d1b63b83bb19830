/* Agents page (#/agents) and one agent (#/agents/<id>).

   The list: every agent of the pool with its status, health, load against capacity, circuit
   breaker, capabilities and performance score (GET /v1/agents, /v1/agents/<id>/performance); a row
   opens the agent. The agent: its facts, its performance profile (each component, its weight and
   what it contributed), its most recent tasks, and its heartbeats of the last 15 minutes (read from
   the log, then live) with a chart of the load and CPU they reported. Both follow the pool's events
   and read the API again when one names an agent (the list at most every 5 s, an agent every 2 s). */

import {get, session} from '../api.js';
import {COLORS, timeChart} from '../charts.js';
import {badge, card, empty, errorBox, facts, fill, fmtDuration, fmtNumber, fmtPercent, fmtTime, h, hashOf, liveReload,
  meter, pageHead, table} from '../dom.js';
import {eventsSinceTime, newestTasks} from '../reads.js';
import {Stream} from '../stream.js';

const PERFORMANCE_MAX = 100;  // profiles read for the list (each is one request)
const LIST_EVERY_MS = 5000;  // the list costs a request per agent: read it again at most this often
const HEARTBEAT_WINDOW_S = 15 * 60;

export function mount(view, ctx) {
  return ctx.params.length ? mountAgent(view, ctx, ctx.params[0]) : mountList(view, ctx);
}

function mountList(view, ctx) {
  const abort = new AbortController();
  const problem = h('div');
  const list = h('div', {id: 'agents-table'});
  fill(view, pageHead('Agents', h('span', {class: 'muted'}, `pool ${session.pool}`)),
    problem, card(null, list));

  async function load() {
    try {
      const agents = (await get('/v1/agents', {}, {signal: abort.signal})).items;
      const profiles = await Promise.all(agents.slice(0, PERFORMANCE_MAX).map((agent) =>
        get(`/v1/agents/${encodeURIComponent(agent.agent_id)}/performance`, {}, {signal: abort.signal})
          .catch((error) => { if (error.name === 'AbortError') throw error; return null; })));
      const score = Object.fromEntries(profiles.filter(Boolean).map((p) => [p.agent_id, p]));
      problem.replaceChildren();
      fill(list, table(AGENT_COLUMNS(score), agents, {
        rowAttrs: (agent) => ({dataset: {agentId: agent.agent_id, status: agent.status}}),
        onRow: (agent) => { location.hash = hashOf(['agents', agent.agent_id]); },
        emptyText: 'No agent has registered in this pool.',
      }));
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, 'Reading agents'));
    }
  }

  const reload = liveReload(load, LIST_EVERY_MS);
  const stream = new Stream([`pool/${session.pool}/events`], {
    onEvent: (event) => { if (event.data && 'agent_id' in event.data) reload(); },
  });
  load().then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); stream.close(); }};
}

const AGENT_COLUMNS = (score) => [
  {label: 'Agent', value: (a) => h('span', {}, h('a', {href: hashOf(['agents', a.agent_id])}, a.agent_id),
    a.name && a.name !== a.agent_id ? h('span', {class: 'muted small'}, ` ${a.name}`) : null)},
  {label: 'Kind', value: (a) => a.kind},
  {label: 'Status', value: (a) => badge(a.status)},
  {label: 'Health', value: (a) => healthBadge(a)},
  {label: 'Load', value: (a) => meter(a.load, a.capacity, `${a.load}/${a.capacity}`)},
  {label: 'Circuit', value: (a) => badge(a.circuit, a.circuit_until ? `until ${fmtTime(a.circuit_until)}` : null)},
  {label: 'Capabilities', value: (a) => chips(a.capabilities)},
  {label: 'Score', value: (a) => (score[a.agent_id]
    ? meter(score[a.agent_id].score, 1, score[a.agent_id].score.toFixed(2), {levels: false}) : '–')},
  {label: 'Done / failed', value: (a) => `${a.tasks_completed} / ${a.tasks_failed}`, class: 'num'},
  {label: 'Last heartbeat', value: (a) => fmtTime(a.last_heartbeat_at)},
];

function chips(values) {
  return h('span', {class: 'chips'}, (values || []).map((value) => h('span', {class: 'chip'}, value)));
}

function healthBadge(agent) {
  if (agent.status === 'deregistered') return '–';
  return agent.healthy ? badge('healthy') : badge('unhealthy', agent.unhealthy_reason || undefined);
}

function mountAgent(view, ctx, agentId) {
  const abort = new AbortController();
  const enc = encodeURIComponent(agentId);
  const head = h('div', {class: 'page-head'});
  const problem = h('div');
  const top = h('div', {class: 'columns'});
  const recent = h('div', {id: 'agent-tasks'});
  const beats = h('div', {id: 'agent-heartbeats'});
  const chartEl = h('div', {class: 'chart', id: 'chart-heartbeats'});
  fill(view, h('p', {class: 'crumbs'}, h('a', {href: '#/agents'}, 'Agents'), ' / ', agentId), head, problem, top,
    card('Heartbeats, last 15 minutes', chartEl, beats), card('Recent tasks', recent));
  const chart = timeChart(chartEl, [
    {label: 'CPU %', color: COLORS.blue, fill: true},
    {label: 'load', color: COLORS.orange},
  ], {height: 130, format: (v) => fmtNumber(v, 1), window: HEARTBEAT_WINDOW_S});
  let heartbeats = [];

  async function load() {
    try {
      const [agent, profile, tasks] = await Promise.all([
        get(`/v1/agents/${enc}`, {}, {signal: abort.signal}),
        get(`/v1/agents/${enc}/performance`, {}, {signal: abort.signal})
          .catch((error) => { if (error.status === 404) return null; throw error; }),
        newestTasks({agent_id: agentId}, 1, 20, {signal: abort.signal}),
      ]);
      problem.replaceChildren();
      fill(head, h('h1', {}, agent.agent_id), badge(agent.status), healthBadge(agent), badge(agent.circuit),
        h('span', {class: 'muted'}, agent.name));
      fill(top, card('Agent', agentFacts(agent)), card('Performance profile', performance(profile)));
      fill(recent, table([
        {label: 'Task', value: (t) => h('a', {href: hashOf(['tasks', t.task_id])}, t.task_id)},
        {label: 'Type', value: (t) => t.type},
        {label: 'Status', value: (t) => badge(t.status)},
        {label: 'Submitted', value: (t) => fmtTime(t.submitted_at)},
        {label: 'Finished', value: (t) => fmtTime(t.finished_at)},
      ], tasks.items, {emptyText: 'No task was given to this agent.',
        onRow: (t) => { location.hash = hashOf(['tasks', t.task_id]); }}));
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(problem, errorBox(error, `Reading agent ${agentId}`));
    }
  }

  function drawHeartbeats() {
    const since = Date.now() - HEARTBEAT_WINDOW_S * 1000;
    heartbeats = heartbeats.filter((e) => Date.parse(e.time) >= since);
    chart.update(heartbeats.map((e) => Date.parse(e.time) / 1000),
      heartbeats.map((e) => e.data.cpu ?? null), heartbeats.map((e) => e.data.load ?? null));
    const newest = heartbeats.slice(-10).reverse();
    fill(beats, newest.length ? table([
      {label: 'Time', value: (e) => fmtTime(e.time)},
      {label: 'Load', value: (e) => fmtNumber(e.data.load), class: 'num'},
      {label: 'CPU %', value: (e) => fmtNumber(e.data.cpu), class: 'num'},
      {label: 'Memory %', value: (e) => fmtNumber(e.data.memory), class: 'num'},
      {label: 'Queue', value: (e) => fmtNumber(e.data.queue), class: 'num'},
    ], newest) : empty('No heartbeat in the last 15 minutes.'));
  }

  async function seedHeartbeats(after) {
    try {
      const {items} = await eventsSinceTime(Date.now() - HEARTBEAT_WINDOW_S * 1000, after,
        {type: 'AgentHeartbeatReceived', subject: agentId, max: 500, signal: abort.signal});
      const known = new Set(heartbeats.map((e) => e.id));
      heartbeats = [...items.filter((e) => !known.has(e.id)), ...heartbeats];
      drawHeartbeats();
    } catch (error) {
      if (error.name === 'AbortError') return;
      fill(beats, errorBox(error, 'Reading heartbeats'));
    }
  }

  const reload = liveReload(load, 2000);
  let seeded = false;
  const stream = new Stream([`pool/${session.pool}/agent:${agentId}`], {
    onSubscribed: (message) => { if (!seeded) { seeded = true; seedHeartbeats(message.after); } },
    onEvent: (event) => {
      if (event.type === 'AgentHeartbeatReceived') {
        heartbeats.push(event);
        drawHeartbeats();
      }
      reload();
    },
  });
  load().then(() => ctx.ready());
  return {unmount() { abort.abort(); reload.cancel(); stream.close(); chart.destroy(); }};
}

function agentFacts(a) {
  return facts([
    ['Kind', a.kind],
    ['Capabilities', chips(a.capabilities)],
    ['Load', meter(a.load, a.capacity, `${a.load} of ${a.capacity} slots`)],
    ['Weight', fmtNumber(a.weight)],
    ['Health', a.healthy ? 'healthy' : `unhealthy${a.unhealthy_reason ? `: ${a.unhealthy_reason}` : ''}`],
    ['Circuit', `${a.circuit}${a.circuit_until ? ` until ${fmtTime(a.circuit_until)}` : ''}` +
      (a.consecutive_failures ? ` · ${a.consecutive_failures} failures in a row` : '')],
    ['Registered', fmtTime(a.registered_at)],
    ['Last heartbeat', a.last_heartbeat_at
      ? `${fmtTime(a.last_heartbeat_at)} (timeout ${fmtDuration(a.heartbeat_timeout_s)})` : 'none yet'],
    ['Tasks', `${a.tasks_completed} completed, ${a.tasks_failed} failed`],
    ['Deregistered', a.deregistered_at ? fmtTime(a.deregistered_at) : undefined],
  ]);
}

function performance(p) {
  if (!p) return empty('No profile yet.');
  const names = Object.keys(p.components || {});
  const weightOf = {success_rate: p.weights?.success, execution_time: p.weights?.time,
    availability: p.weights?.availability, error_rate: p.weights?.errors};
  return h('div', {id: 'performance'},
    h('p', {}, h('span', {class: 'big'}, p.score.toFixed(3)), h('span', {class: 'muted'}, ' score (0 to 1)')),
    facts([
      ['Success rate', fmtPercent(p.success_rate)],
      ['Error rate', fmtPercent(p.error_rate)],
      ['Mean duration', fmtDuration(p.mean_duration_s)],
      ['Availability', fmtPercent(p.availability)],
      ['Runs', `${p.completed} completed · ${p.failed} failed · ${p.timeouts} timed out · ${p.lost} lost`],
    ]),
    names.length ? table([
      {label: 'Component', value: (n) => n.replace(/_/g, ' ')},
      {label: 'Value', value: (n) => fmtNumber(p.components[n], 3), class: 'num'},
      {label: 'Weight', value: (n) => fmtNumber(weightOf[n], 2), class: 'num'},
      {label: 'Contribution', value: (n) => meter(p.contributions?.[n] ?? 0, 1, fmtNumber(p.contributions?.[n], 3),
        {levels: false})},
    ], names) : null);
}
