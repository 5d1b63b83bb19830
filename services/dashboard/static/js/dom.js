/* DOM and formatting helpers shared by every page: building elements and tables, status badges,
   numbers, money, times and durations, and the box that shows an error the API answered.
   No page state lives here, and nothing here talks to the server. */

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'text') el.textContent = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/x', class: 'link', onclick: fn}, 'text', child, [more]). */
export function h(tag, attrs = {}, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element, as h() makes HTML ones. */
export function s(tag, attrs = {}, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** Replace everything inside el with children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// --- numbers, money, time --------------------------------------------------------------------------

export function fmtNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return value.toLocaleString('en-US', {maximumFractionDigits: digits});
}

export function fmtPercent(ratio) {
  if (ratio === null || ratio === undefined) return '–';
  return `${(ratio * 100).toFixed(ratio < 0.1 && ratio > 0 ? 1 : 0)}%`;
}

/** USD with the digits small amounts need ($0.0003, $1.25, $1,204). */
export function fmtMoney(usd) {
  if (usd === null || usd === undefined) return '–';
  const abs = Math.abs(usd);
  const digits = abs === 0 ? 2 : abs < 0.01 ? 4 : abs < 1000 ? 2 : 0;
  return `$${usd.toLocaleString('en-US', {minimumFractionDigits: digits, maximumFractionDigits: digits})}`;
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString('en-GB', {hour12: false});
  return sameDay ? time : `${date.toLocaleDateString('en-CA')} ${time}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** Seconds from one ISO time to another (or to now). */
export function secondsBetween(from, to) {
  if (!from) return null;
  return ((to ? new Date(to) : new Date()) - new Date(from)) / 1000;
}

// --- small widgets ---------------------------------------------------------------------------------

/** A status as a coloured badge; the colour comes from the stylesheet's .st-<status>. */
export function badge(status, title) {
  const text = status === null || status === undefined ? '–' : String(status);
  return h('span', {class: `badge st-${text.replace(/[^a-z_]/gi, '')}`, title}, text.replace(/_/g, ' '));
}

/** A horizontal bar of value/max, with a label; `levels` colours it warm and hot as it fills up. */
export function meter(value, max, label, {levels = true} = {}) {
  const ratio = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  const bar = h('span', {class: 'meter-fill'});
  bar.style.width = `${(ratio * 100).toFixed(1)}%`;
  const warn = !levels ? 'share' : ratio >= 0.9 ? 'hot' : ratio >= 0.7 ? 'warm' : '';
  const text = label ? h('span', {class: 'meter-label'}, label) : null;
  return h('span', {class: ['meter', warn], title: label}, bar, text);
}

/** Key/value pairs as a definition list; pairs whose value is undefined are left out. */
export function facts(pairs) {
  const list = h('dl', {class: 'facts'});
  for (const [key, value] of pairs) {
    if (value === undefined) continue;
    list.append(h('dt', {}, key), h('dd', {}, value === null ? '–' : value));
  }
  return list;
}

export function json(value) {
  return h('pre', {class: 'json'}, JSON.stringify(value, null, 2));
}

/** The plural ending of a count's noun: 's', or '' for one. */
export function plural(count) {
  return count === 1 ? '' : 's';
}

/** A page's heading: its title, then badges or notes. */
export function pageHead(title, ...rest) {
  return h('div', {class: 'page-head'}, h('h1', {}, title), ...rest);
}

/** A link to another page of the dashboard (#/parts...). */
export function link(parts, text) {
  return h('a', {href: hashOf(parts)}, text ?? parts[parts.length - 1]);
}

export function card(title, ...body) {
  return h('section', {class: 'card'}, title ? h('h3', {}, title) : null, ...body);
}

export function empty(text) {
  return h('p', {class: 'empty'}, text);
}

/**
 * A table. columns: [{label, value(row) -> node|string, class}]; rowAttrs(row) -> attributes of the
 * row (data-*, class); onRow(row) makes rows clickable (and reachable with the keyboard).
 */
export function table(columns, rows, {rowAttrs, onRow, emptyText = 'Nothing yet.'} = {}) {
  const head = h('thead', {}, h('tr', {}, columns.map((c) => h('th', {class: c.class}, c.label))));
  const body = h('tbody');
  for (const row of rows) {
    const attrs = rowAttrs ? rowAttrs(row) : {};
    const tr = h('tr', {...attrs, class: [attrs.class, onRow ? 'link' : null]});
    if (onRow) {
      tr.tabIndex = 0;
      tr.addEventListener('click', (event) => { if (!event.target.closest('a,button')) onRow(row); });
      tr.addEventListener('keydown', (event) => { if (event.key === 'Enter') onRow(row); });
    }
    for (const c of columns) tr.append(h('td', {class: c.class}, c.value(row)));
    body.append(tr);
  }
  if (!rows.length) body.append(h('tr', {}, h('td', {colspan: columns.length, class: 'empty'}, emptyText)));
  return h('table', {class: 'grid'}, head, body);
}

/** The message an error carries, as a box: an ApiError lists what the server said, line by line. */
export function errorBox(error, context) {
  const lines = typeof error?.lines === 'function' ? error.lines() : [String(error?.message || error)];
  const title = error?.title || 'Something went wrong';
  return h('div', {class: 'error-box', role: 'alert', dataset: {status: error?.status ?? ''}},
    h('strong', {}, context ? `${context}: ${title}` : title),
    lines.length ? h('ul', {}, lines.map((line) => h('li', {}, line))) : null);
}

// --- timing ----------------------------------------------------------------------------------------

/** fn, called at most once per `ms`, with the last arguments, at the end of the quiet period too. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  let pending = null;
  const run = () => { last = Date.now(); timer = null; const args = pending; pending = null; fn(...args); };
  const throttled = (...args) => {
    pending = args;
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(run, wait);
  };
  throttled.cancel = () => { clearTimeout(timer); timer = null; pending = null; };
  return throttled;
}

/**
 * For pages that follow the stream: read again at most every `every` ms while events arrive, and
 * once more `settle` ms after the last one. An event reaches the stream as it is appended, and the
 * read models may hold it a moment later: the last read settles what the first may have missed.
 */
export function liveReload(fn, every = 1000, settle = 1500) {
  const soon = throttle(fn, every);
  let timer = null;
  const call = () => {
    soon();
    clearTimeout(timer);
    timer = setTimeout(fn, settle);
  };
  call.cancel = () => { soon.cancel(); clearTimeout(timer); };
  return call;
}

/** Parse a #/path?query hash into its path segments and its query. */
export function parseHash(hash) {
  const text = hash.replace(/^#\/?/, '');
  const [path, query = ''] = text.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {parts, query: new URLSearchParams(query)};
}

/** A #/path?query link from segments and query values (empty values left out). */
export function hashOf(parts, query = {}) {
  const path = parts.map((p) => encodeURIComponent(p)).join('/');
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== '') params.set(key, value);
  }
  const qs = params.toString();
  return `#/${path}${qs ? `?${qs}` : ''}`;
}
