/* Events page (#/events?channels=&after=): a live tail of the event stream with the WebSocket's own
   channel filters (events, tasks, agents, workflows, type:<EventType>, task:<id>, agent:<id>,
   workflow:<id>, each optionally pool/<pool>/<channel>), optionally replayed from a position, and
   pausable: while paused, arriving events are counted and kept, and shown on resume. A row opens
   to the whole event. Refusals of a channel or position are shown as the server words them. */

import {session} from '../api.js';
import {card, errorBox, fill, fmtTime, h, hashOf, json} from '../dom.js';
import {Stream} from '../stream.js';

const MAX_ROWS = 500;
const MAX_HELD = 5000;  // events kept while paused
const SUGGESTIONS = ['events', 'tasks', 'agents', 'workflows', 'type:TaskSubmitted', 'type:TaskCompleted',
  'type:TaskFailed', 'type:CommandRejected', 'type:CostRecorded', 'type:WorkflowEnded'];

export function mount(view, ctx) {
  const pool = `pool/${session.pool}/`;
  const channels = (ctx.query.get('channels') || `${pool}events`).split(',').map((c) => c.trim()).filter(Boolean);
  const after = ctx.query.get('after') || '';
  let paused = false;
  let held = [];
  let dropped = 0;
  let shown = 0;

  const input = h('input', {id: 'channels', name: 'channels', value: channels.join(', '), size: 50,
    list: 'channel-list', spellcheck: 'false', autocomplete: 'off', title: 'Channels, comma separated'});
  const from = h('input', {id: 'after', name: 'after', value: after, size: 8, placeholder: 'live',
    title: 'Replay after this position (empty: from now on)'});
  const pause = h('button', {type: 'button', id: 'pause', onclick: () => setPaused(!paused)}, 'Pause');
  const clear = h('button', {type: 'button', class: 'quiet', onclick: () => {
    rows.replaceChildren();
    shown = 0;
    count();
  }}, 'Clear');
  const form = h('form', {class: 'filters', id: 'event-filters'},
    h('label', {for: 'channels'}, 'channels'), input, h('label', {for: 'after'}, 'after'), from,
    h('button', {type: 'submit', class: 'primary'}, 'Follow'), pause, clear,
    h('datalist', {id: 'channel-list'},
      SUGGESTIONS.flatMap((c) => [h('option', {value: c}), h('option', {value: pool + c})])));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const wanted = input.value.split(',').map((c) => c.trim()).filter(Boolean);
    location.hash = hashOf(['events'], {channels: wanted.join(','), after: from.value.trim()});
  });
  const status = h('p', {class: 'muted small', id: 'tail-status'});
  const problem = h('div', {id: 'tail-problem'});
  const rows = h('tbody', {id: 'event-rows'});
  fill(view, h('div', {class: 'page-head'}, h('h1', {}, 'Events'), h('span', {class: 'muted'}, 'live tail')),
    form, problem, status,
    card(null, h('table', {class: 'grid events'}, h('thead', {}, h('tr', {},
      ['Position', 'Time', 'Type', 'Subject', 'Pool', 'Actor', 'Data'].map((t) => h('th', {}, t)))), rows)));

  function count() {
    status.textContent = `${shown} shown${paused ? ` · paused, ${held.length} waiting` : ''}${
      dropped ? ` · ${dropped} not kept while paused` : ''}`;
  }

  function row(event, message) {
    const data = h('td', {class: 'small'}, preview(event.data));
    const tr = h('tr', {class: 'link', tabIndex: 0, dataset: {type: event.type, position: message.position}},
      h('td', {class: 'num'}, String(message.position)), h('td', {}, fmtTime(event.time)),
      h('td', {}, h('strong', {}, event.type)), h('td', {}, event.subject || ''), h('td', {}, event.pool || ''),
      h('td', {}, event.actor || ''), data);
    const open = () => {
      const next = tr.nextElementSibling;
      if (next?.classList.contains('expanded')) { next.remove(); return; }
      tr.after(h('tr', {class: 'expanded'}, h('td', {colspan: 7}, json(event))));
    };
    tr.addEventListener('click', open);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
    return tr;
  }

  function show(items) {
    const fragment = document.createDocumentFragment();
    for (const [event, message] of items.reverse()) fragment.append(row(event, message));
    rows.prepend(fragment);
    shown += items.length;
    while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
    count();
  }

  function setPaused(value) {
    paused = value;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.classList.toggle('on', paused);
    view.dataset.paused = String(paused);
    if (!paused && held.length) {
      const items = held;
      held = [];
      show(items);
    }
    count();
  }

  const stream = new Stream(channels, {
    after: after === '' ? null : after,
    onSubscribed: (message) => {
      problem.replaceChildren();
      status.dataset.channels = message.channels.join(',');
      count();
      ctx.ready();
    },
    onEvent: (event, message) => {
      if (paused) {
        held.push([event, message]);
        if (held.length > MAX_HELD) { held.shift(); dropped += 1; }
        count();
        return;
      }
      show([[event, message]]);
    },
    onError: (text) => {
      fill(problem, errorBox({title: 'The stream refused this subscription', lines: () => [text]}));
      ctx.ready();
    },
  });
  count();
  return {unmount() { stream.close(); }};
}

function preview(data) {
  if (!data || typeof data !== 'object') return '';
  const text = Object.entries(data).filter(([, v]) => v !== null && typeof v !== 'object')
    .map(([k, v]) => `${k}=${v}`).join(' ');
  return text.length > 120 ? `${text.slice(0, 119)}…` : text;
}
