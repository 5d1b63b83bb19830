/* The live stream: a WebSocket to /ws/v1/events subscribed to channels (the same channel names as
   any WebSocket client: events, tasks, agents, workflows, type:<EventType>, task:<id>, agent:<id>,
   workflow:<id>, each optionally pool/<pool>/<channel>). After a drop it reconnects and resumes
   after the last position it received, so no event is missed or shown twice. It also drives the
   header's "live" indicator. Pages open one when they mount and close it when they unmount. */

import {streamUrl} from './api.js';

const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10_000;
const streams = new Set();

/** The header indicator: live when every open stream is subscribed, else what is wrong. */
function showState() {
  const el = document.getElementById('live');
  if (!el) return;
  const states = [...streams].map((s) => s.state);
  const state = !states.length ? 'idle'
    : states.every((st) => st === 'live') ? 'live'
      : states.includes('reconnecting') ? 'reconnecting' : 'connecting';
  el.dataset.state = state;
  el.title = {idle: 'No live stream on this page', live: 'Receiving live events',
    connecting: 'Connecting to the live stream', reconnecting: 'Stream lost: reconnecting'}[state];
}

export class Stream {
  /**
   * channels: channel names. Options: after (a position to replay from, else live from now),
   * onEvent(event, message), onProgress(message), onSubscribed(message), onError(text).
   */
  constructor(channels, {after = null, onEvent, onProgress, onSubscribed, onError} = {}) {
    this.channels = channels;
    this.cursor = after;
    this.handlers = {onEvent, onProgress, onSubscribed, onError};
    this.state = 'connecting';
    this.closed = false;
    this.retryMs = RETRY_FIRST_MS;
    this.socket = null;
    this.timer = null;
    streams.add(this);
    showState();
    this.connect();
  }

  connect() {
    const socket = new WebSocket(streamUrl());
    this.socket = socket;
    socket.onopen = () => {
      const subscribe = {type: 'subscribe', channels: this.channels, batch: true};
      if (this.cursor !== null) subscribe.after = this.cursor;
      socket.send(JSON.stringify(subscribe));
    };
    socket.onmessage = (message) => {
      let body;
      try { body = JSON.parse(message.data); } catch { return; }
      if (body.type === 'batch') body.messages.forEach((m) => this.handle(m));
      else this.handle(body);
    };
    socket.onclose = () => {
      if (this.closed || this.socket !== socket) return;
      this.setState('reconnecting');
      this.timer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    };
  }

  handle(message) {
    switch (message.type) {
      case 'event':
        this.advance(message.partition, message.position);
        this.handlers.onEvent?.(message.event, message);
        break;
      case 'progress':
        this.handlers.onProgress?.(message);
        break;
      case 'subscribed':
        if (message.after !== undefined) this.cursor = message.after;
        this.retryMs = RETRY_FIRST_MS;
        this.setState('live');
        this.handlers.onSubscribed?.(message);
        break;
      case 'lagged':  // the server closes next; resume from where it says
        this.cursor = message.resume_after;
        break;
      case 'error':
        if (/^after:/.test(message.message) && this.cursor !== null) {
          // The position is gone (a log replaced by a restore): follow from now instead.
          this.cursor = null;
          this.socket.send(JSON.stringify({type: 'subscribe', channels: this.channels, batch: true}));
        }
        this.handlers.onError?.(message.message);
        break;
      default:  // ping, pong, unsubscribed
        break;
    }
  }

  /** Remember the last position received, in the cursor's own form (a number, or per partition). */
  advance(partition, position) {
    if (this.cursor !== null && typeof this.cursor === 'object') {
      this.cursor = {...this.cursor, [String(partition)]: position};
    } else {
      this.cursor = position;
    }
  }

  setState(state) {
    this.state = state;
    showState();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    streams.delete(this);
    showState();
    const socket = this.socket;
    if (!socket) return;
    socket.onmessage = null;
    // Closing a socket still connecting makes the browser report a failed connection: close it once open.
    if (socket.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close(1000, 'page closed');
    else if (socket.readyState === WebSocket.OPEN) socket.close(1000, 'page closed');
  }
}
