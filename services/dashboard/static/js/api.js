/* The dashboard's client of the public HTTP API (/v1/...): the bearer token and the pool of this tab,
   one request function that turns every refusal into an ApiError saying what the server answered
   (its status, and the detail, field errors, rejection code or problem+json body), and the URL of
   the live WebSocket. Pages call the API only through this module. */

const TOKEN_KEY = 'agentbus.token';
const POOL_KEY = 'agentbus.pool';
export const DEFAULT_POOL = 'default';

/** Where the API lives: the path in front of /ui/ (empty unless a proxy serves it under a prefix). */
export const BASE = location.pathname.replace(/\/ui(\/.*)?$/, '');

/** The tab's token and pool, kept in sessionStorage (gone when the tab closes). */
export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  get pool() { return sessionStorage.getItem(POOL_KEY) || DEFAULT_POOL; },
  set pool(value) { sessionStorage.setItem(POOL_KEY, value || DEFAULT_POOL); },
};

const STATUS_TEXT = {
  0: 'No answer', 400: 'Bad request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not found',
  409: 'Conflict', 413: 'Too large', 422: 'Invalid input', 429: 'Too many requests',
  500: 'Server error', 503: 'Unavailable', 504: 'Timed out',
};

/** A request the API refused (or could not be made): `status` 0 when the server was not reached. */
export class ApiError extends Error {
  constructor(status, body, method, path) {
    super(`${method} ${path}: ${status} ${STATUS_TEXT[status] || ''}`.trim());
    this.status = status;
    this.body = body;
    this.method = method;
    this.path = path;
  }

  get title() {
    if (this.body && typeof this.body === 'object' && typeof this.body.title === 'string') {
      return `${this.status} ${this.body.title}`;  // application/problem+json
    }
    return `${this.status || ''} ${STATUS_TEXT[this.status] || 'Error'}`.trim();
  }

  /** What the server said, one line per problem. */
  lines() {
    const body = this.body;
    const out = [];
    if (typeof body === 'string') {
      if (body.trim()) out.push(body.trim().slice(0, 500));
    } else if (body && typeof body === 'object') {
      if (body.status === 'rejected' && body.code) out.push(`${body.code}: ${body.message}`);
      const detail = body.detail;
      if (Array.isArray(detail)) {
        for (const item of detail) {
          const where = Array.isArray(item.loc) ? item.loc.join('.') : '';
          out.push(where ? `${where}: ${item.msg}` : String(item.msg ?? JSON.stringify(item)));
        }
      } else if (typeof detail === 'string') {
        out.push(detail);
      }
      if (body.permission) out.push(`Needs the permission '${body.permission}'.`);
    }
    if (this.status === 401 && !out.length) out.push('A valid bearer token is required.');
    out.push(`${this.method} ${this.path}`);
    return out;
  }
}

const unauthorizedListeners = new Set();

/** Call fn(error) whenever the API answers 401 (the token is missing, expired or revoked). */
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

/** A URL of the API: the path under BASE, with the query's non-empty values, and the tab's pool. */
export function apiUrl(path, query = {}, {pool = true} = {}) {
  const url = new URL(BASE + path, location.origin);
  if (pool) url.searchParams.set('pool', session.pool);
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== '') url.searchParams.set(key, String(value));
  }
  return url;
}

/**
 * One call of the API; resolves to the parsed JSON body, rejects with an ApiError.
 * Options: query (object), body (JSON), pool (false for routes without ?pool=), signal (AbortSignal).
 */
export async function request(method, path, {query, body, pool = true, signal, token} = {}) {
  const url = apiUrl(path, query, {pool});
  const headers = {accept: 'application/json'};
  const bearer = token ?? session.token;
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {method, headers, signal,
      body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, `The server did not answer (${error.message}).`, method, path);
  }
  const type = response.headers.get('content-type') || '';
  let data = null;
  if (type.includes('json')) data = await response.json().catch(() => null);
  else data = await response.text().catch(() => '');
  if (!response.ok) {
    const error = new ApiError(response.status, data, method, path);
    if (response.status === 401 && token === undefined) unauthorizedListeners.forEach((fn) => fn(error));
    throw error;
  }
  return data;
}

export function get(path, query, options = {}) {
  return request('GET', path, {...options, query});
}

/** The WebSocket URL of the live stream (the token rides in the query: browsers set no headers). */
export function streamUrl() {
  const url = new URL(`${BASE}/ws/v1/events`, location.origin);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (session.token) url.searchParams.set('access_token', session.token);
  return url.toString();
}

/** Every item of a paged /v1/events read from `after`, up to `max` items (pages of 1000). */
export async function eventsSince(after, {type, subject, max = 5000, until = Infinity, signal} = {}) {
  const items = [];
  let cursor = after;
  while (items.length < max) {
    const page = await get('/v1/events', {after: cursor, limit: 1000, type, subject}, {signal});
    for (const item of page.items) {
      if (item.position > until) return items;
      items.push(item);
    }
    if (page.next_after <= cursor || page.items.length === 0) break;
    cursor = page.next_after;
  }
  return items.slice(0, max);
}
