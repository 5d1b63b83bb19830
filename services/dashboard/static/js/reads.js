/* Reads several pages share, built from the public API's own reads: tasks newest first (the API pages
   in submission order), the log position where the last minutes of a pool begin (a binary search on
   event times through /v1/events), and the run a step task belongs to. */

import {eventsSince, get} from './api.js';

// Workflow step names (letters, digits, underscores): a step task's id is <run id>.<step>.
const STEP = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The run a step task belongs to, read from its id <run id>.<step>; null for other tasks. */
export function workflowOfTask(taskId) {
  const dot = taskId.lastIndexOf('.');
  if (dot <= 0) return null;
  return STEP.test(taskId.slice(dot + 1)) ? taskId.slice(0, dot) : null;
}

/**
 * Page `page` (1-based) of the tasks matching `filters`, newest first, `size` per page:
 * {items, total}. The API pages oldest first, so this reads the one or two API pages that hold
 * the rows wanted and reverses them.
 */
export async function newestTasks(filters, page, size, {signal} = {}) {
  const firstPage = await get('/v1/tasks', {...filters, page: 1, page_size: size}, {signal});
  const total = firstPage.total;
  const end = total - (page - 1) * size;  // rows [start, end) in submission order
  if (end <= 0) return {items: [], total};
  const start = Math.max(0, end - size);
  const from = Math.floor(start / size) + 1;
  const to = Math.floor((end - 1) / size) + 1;
  const pages = [];
  for (let p = from; p <= to; p += 1) {
    pages.push(p === 1 ? firstPage : get('/v1/tasks', {...filters, page: p, page_size: size}, {signal}));
  }
  const rows = (await Promise.all(pages)).flatMap((answer) => answer.items);
  const offset = (from - 1) * size;
  return {items: rows.slice(start - offset, end - offset).reverse(), total};
}

/** The position of the stream cursor `after` in `partition` (a cursor is a number or per partition). */
export function cursorAt(after, partition) {
  if (after !== null && typeof after === 'object') return after[String(partition)];
  return after;
}

/**
 * The pool's events stamped at or after `sinceMs`, up to the cursor `upTo` (where a live
 * subscription started: the stream goes on from there), at most `max` of them (the newest), with
 * `filters` (type, subject) as /v1/events takes them. The first is found by a binary search on
 * event times, a request per halving. Returns {items, capped}: capped when older ones were left out.
 */
export async function eventsSinceTime(sinceMs, upTo, {max = 5000, signal, ...filters} = {}) {
  const first = (await get('/v1/events', {after: -1, limit: 1}, {signal})).items[0];
  const end = first ? cursorAt(upTo, first.partition) : undefined;
  if (!first || end === undefined || end === null || end < first.position) return {items: [], capped: false};
  let lo = first.position - 1;
  if (Date.parse(first.time) < sinceMs) {
    // Invariant: the pool's events at or before lo are older than sinceMs.
    lo = first.position;
    let hi = end + 1;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      const found = (await get('/v1/events', {after: mid - 1, limit: 1}, {signal})).items[0];
      if (!found || found.position > end || Date.parse(found.time) >= sinceMs) hi = mid;
      else lo = Math.min(found.position, hi - 1);
    }
  }
  const filtered = Boolean(filters.type || filters.subject);
  // Unfiltered, the newest `max` events lie within `max` positions of the end (fewer in a shared partition).
  const from = filtered ? lo : Math.max(lo, end - max);
  const items = (await eventsSince(from, {...filters, until: end, max: filtered ? 100_000 : max, signal}))
    .filter((item) => Date.parse(item.time) >= sinceMs);
  return {items: items.slice(-max), capped: from > lo || items.length > max};
}
