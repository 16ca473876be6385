// gateway.js: a dependency-free browser client for the gateway (ES module, no build step).
//
//   import {connect} from '/static/gateway.js';
//   const gw = connect();                        // same origin; or connect('https://host', {token})
//   const off = gw.subscribe('room:lobby', (event) => console.log(event.type, event.data));
//   await gw.publish('room:lobby', 'message', {nick: 'ada', text: 'hi'});
//   gw.on('state', (state) => console.log(state, gw.transport));
//
// WebSocket first (subprotocol gateway.v1). Reconnects with exponential backoff and jitter and
// resubscribes every channel with the last event id it saw, so nothing is lost or repeated across
// a gateway restart. A heartbeat every `heartbeat` ms (WebSocket ping, or a heartbeat the SSE
// stream is asked for) detects dead connections within heartbeat + heartbeatTimeout (8 s by
// default). When WebSocket never gets through (blocked by a proxy), it falls back to Server-Sent
// Events on /events.

const TERMINAL = new Set(['job.completed', 'job.failed', 'job.cancelled']);

/** Compare two event ids ("<ms>-<seq>") as number pairs: negative, zero or positive. */
export function compareIds(a, b) {
  const [am, as] = String(a).split('-').map(Number);
  const [bm, bs] = String(b).split('-').map(Number);
  return am !== bm ? am - bm : (as || 0) - (bs || 0);
}

/** True for the event types that end a job (`job.completed`, `job.failed`, `job.cancelled`). */
export function isTerminal(event) {
  return TERMINAL.has(event && event.type);
}

/** A refused op (`error` frame, or an HTTP problem), with the gateway's `code`. */
export class GatewayError extends Error {
  constructor(code, message, detail) {
    super(message || code);
    this.name = 'GatewayError';
    this.code = code;
    this.detail = detail;
  }
}

const DEFAULTS = {
  token: undefined,
  transport: 'auto', // 'auto' | 'websocket' | 'sse'
  heartbeat: 4000, // ms between WebSocket pings; the SSE stream sends a heartbeat as often
  heartbeatTimeout: 4000, // ms more of silence (no pong, no SSE bytes) before the link counts as dead
  connectTimeout: 10000, // ms for a WebSocket to answer its first ping
  backoffInitial: 500,
  backoffMax: 8000,
  wsAttempts: 3, // failed WebSocket attempts, before one ever worked, that switch to SSE
  publishTimeout: 10000,
  onGap: undefined,
};

/**
 * Connect to a gateway. `url` is its base (http(s)://host[:port], or ws(s)://host/ws); omitted,
 * the page's own origin. Returns a `Gateway`; it connects at once and keeps reconnecting until
 * `close()`.
 */
export function connect(url, options) {
  if (url && typeof url === 'object') {
    options = url;
    url = undefined;
  }
  return new Gateway(url, options);
}

export class Gateway {
  constructor(url, options = {}) {
    this.options = {...DEFAULTS, ...options};
    this.baseUrl = baseUrl(url);
    this.state = 'connecting';
    this.transport = this.options.transport === 'sse' ? 'sse' : 'websocket';
    this._listeners = new Map();
    this._subs = new Map(); // channel -> {channel, lastId, token, entries:Set, acked}
    this._pending = new Map(); // ref -> {resolve, reject, timer, op, sent}
    this._ref = 0;
    this._attempt = 0;
    this._wsFailures = 0;
    this._everOpened = false;
    this._closed = false;
    this._timers = new Set();
    this._ws = null;
    this._sse = null;
    this._sseRestart = false;
    this._onOnline = () => {
      // Back online: retry now rather than when the backoff timer says.
      if (this.state === 'reconnecting' || this.state === 'connecting') {
        if (this._reconnectTimer && this._timers.has(this._reconnectTimer)) {
          this._cancel(this._reconnectTimer);
          this._start();
        }
      }
    };
    if (globalThis.addEventListener) globalThis.addEventListener('online', this._onOnline);
    this._start();
  }

  /** Listen to `state` (state, {transport}), `transport`, `gap`, `error`; returns an off function. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name).delete(fn);
  }

  /**
   * Call `onEvent(envelope)` for every event on `channel`. Without `since` the channel's retained
   * history is replayed first; with `since` only what came after it. Returns `unsubscribe()`.
   * Options: `since`, `token`, `onGap(info)` (history was trimmed), `onError(error)`.
   */
  subscribe(channel, onEvent, options = {}) {
    if (this._closed) throw new GatewayError('closed', 'this connection is closed');
    const entry = {onEvent, onGap: options.onGap, onError: options.onError};
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = {
        channel,
        lastId: options.since || null,
        token: options.token || this.options.token,
        entries: new Set(),
      };
      this._subs.set(channel, sub);
      sub.entries.add(entry);
      this._sendSubscribe(sub);
    } else {
      sub.entries.add(entry);
    }
    return () => {
      if (!sub.entries.delete(entry) || sub.entries.size > 0) return;
      if (this._subs.get(channel) !== sub) return;
      this._subs.delete(channel);
      if (this.transport === 'websocket') {
        if (this._wsReady()) this._send({op: 'unsubscribe', channel, ref: this._nextRef()});
      } else {
        this._restartSse();
      }
    };
  }

  /** Publish an event; resolves with the ack (`{channel, id}`), rejects with a GatewayError. */
  publish(channel, type, data, options = {}) {
    if (this._closed) return Promise.reject(new GatewayError('closed', 'connection closed'));
    if (this.transport === 'sse') return this._httpPublish(channel, type, data);
    return new Promise((resolve, reject) => {
      const ref = this._nextRef();
      const op = {op: 'publish', channel, type, data, ref};
      const token = options.token || this.options.token;
      if (token) op.token = token;
      const pending = {resolve, reject, op, sent: false, channel, type, data};
      pending.timer = this._later(() => {
        this._pending.delete(ref);
        reject(new GatewayError('timeout', `no ack for publish to ${channel}`));
      }, options.timeout || this.options.publishTimeout);
      this._pending.set(ref, pending);
      if (this._wsReady()) {
        pending.sent = true;
        this._send(op);
      }
    });
  }

  /** Close for good: no reconnects; pending publishes are rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    if (globalThis.removeEventListener) globalThis.removeEventListener('online', this._onOnline);
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._teardownWs();
    this._teardownSse();
    this._rejectPending(() => true, 'closed', 'connection closed');
    this._setState('closed');
  }

  // --- internals -------------------------------------------------------------------------------

  _emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error('gateway.js listener failed', err);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', state, {transport: this.transport});
  }

  _setTransport(transport) {
    if (this.transport === transport) return;
    this.transport = transport;
    this._emit('transport', transport);
    this._emit('state', this.state, {transport});
  }

  _later(fn, ms) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _cancel(timer) {
    if (timer) {
      clearTimeout(timer);
      this._timers.delete(timer);
    }
  }

  _nextRef() {
    this._ref += 1;
    return this._ref;
  }

  _start() {
    if (this._closed) return;
    if (this.transport === 'sse') this._openSse();
    else this._openWs();
  }

  _backoff() {
    const ceiling = Math.min(this.options.backoffMax, this.options.backoffInitial * 2 ** this._attempt);
    this._attempt += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  _scheduleReconnect(delay) {
    if (this._closed) return;
    this._setState(this._everOpened ? 'reconnecting' : 'connecting');
    this._cancel(this._reconnectTimer);
    this._reconnectTimer = this._later(() => this._start(), delay === undefined ? this._backoff() : delay);
  }

  _opened() {
    this._everOpened = true;
    this._attempt = 0;
    this._setState('open');
  }

  _deliver(envelope) {
    const sub = this._subs.get(envelope.channel);
    if (!sub || !envelope.id) return;
    if (sub.lastId && compareIds(envelope.id, sub.lastId) <= 0) return;
    sub.lastId = envelope.id;
    for (const entry of [...sub.entries]) {
      try {
        entry.onEvent(envelope);
      } catch (err) {
        console.error('gateway.js subscriber failed', err);
      }
    }
  }

  _gap(info) {
    const sub = this._subs.get(info.channel);
    if (sub) for (const entry of sub.entries) if (entry.onGap) entry.onGap(info);
    if (this.options.onGap) this.options.onGap(info);
    this._emit('gap', info);
  }

  _subscriptionError(channel, error) {
    const sub = this._subs.get(channel);
    if (sub) for (const entry of sub.entries) if (entry.onError) entry.onError(error);
    this._emit('error', error);
  }

  _rejectPending(predicate, code, message) {
    for (const [ref, pending] of this._pending) {
      if (!predicate(pending)) continue;
      this._pending.delete(ref);
      this._cancel(pending.timer);
      if (pending.reject) pending.reject(new GatewayError(code, message));
    }
  }

  // --- WebSocket ---------------------------------------------------------------------------------

  _wsUrl() {
    return this.baseUrl.replace(/^http/, 'ws') + '/ws';
  }

  _wsReady() {
    return this._ws !== null && this._ws.readyState === 1 && this._wsConfirmed;
  }

  _send(op) {
    this._ws.send(JSON.stringify(op));
  }

  _sendSubscribe(sub) {
    if (this.transport === 'sse') {
      this._restartSse();
      return;
    }
    if (!this._wsReady()) return; // sent by _onWsConfirmed
    const op = {op: 'subscribe', channel: sub.channel, ref: this._nextRef()};
    if (sub.lastId) op.since = sub.lastId;
    if (sub.token) op.token = sub.token;
    this._pending.set(op.ref, {subscribe: sub.channel});
    this._send(op);
  }

  _openWs() {
    let ws;
    try {
      ws = new WebSocket(this._wsUrl(), 'gateway.v1');
    } catch (err) {
      this._wsLost(false, 1006);
      return;
    }
    this._ws = ws;
    this._wsConfirmed = false;
    this._connectTimer = this._later(() => this._dropWs(), this.options.connectTimeout);
    ws.onopen = () => {
      // The first answer (this pong) proves the gateway is really there: a proxy that accepts
      // the upgrade and then says nothing does not count as a working WebSocket.
      this._send({op: 'ping', ref: this._nextRef()});
    };
    ws.onmessage = (message) => this._onWsMessage(message);
    ws.onclose = (event) => {
      if (this._ws === ws) this._wsLost(this._wsConfirmed, event.code);
    };
  }

  _onWsConfirmed() {
    this._wsConfirmed = true;
    this._wsFailures = 0;
    this._cancel(this._connectTimer);
    this._opened();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const pending of this._pending.values()) {
      if (pending.op && !pending.sent) {
        pending.sent = true;
        this._send(pending.op);
      }
    }
    this._schedulePing();
  }

  _schedulePing() {
    this._cancel(this._pingTimer);
    this._pingTimer = this._later(() => {
      if (!this._wsReady()) return;
      this._send({op: 'ping', ref: this._nextRef()});
      // Any frame from the server cancels this; silence means the connection is dead. A later
      // ping does not push the deadline back: it runs from the first unanswered ping.
      if (!this._timers.has(this._pongTimer)) {
        this._pongTimer = this._later(() => this._dropWs(), this.options.heartbeatTimeout);
      }
      this._schedulePing();
    }, this.options.heartbeat);
  }

  _onWsMessage(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    this._cancel(this._pongTimer);
    if (!this._wsConfirmed) this._onWsConfirmed();
    const {op} = frame;
    if (op === 'event') {
      delete frame.op;
      this._deliver(frame);
    } else if (op === 'pong') {
      // The heartbeat is already running; any frame proved the connection alive.
    } else if (op === 'ack' || op === 'error') {
      this._settle(frame);
    } else if (op === 'gap') {
      this._gap({channel: frame.channel, since: frame.since});
    } else if (op === 'shutdown') {
      // The gateway is restarting; it closes with 1001 next. Reconnect after its retry hint.
      this._retryHint = frame.retry;
    }
  }

  _settle(frame) {
    const pending = this._pending.get(frame.ref);
    if (!pending) {
      if (frame.op === 'error') this._emit('error', new GatewayError(frame.code, frame.message));
      return;
    }
    this._pending.delete(frame.ref);
    this._cancel(pending.timer);
    if (pending.subscribe) {
      if (frame.op === 'error') {
        const channel = pending.subscribe;
        this._subscriptionError(channel, new GatewayError(frame.code, frame.message));
        // Refused for good (forbidden, invalid): do not ask again on every reconnect.
        if (frame.code !== 'unavailable') this._subs.delete(channel);
      }
      return;
    }
    const {op, ref, ...ack} = frame;
    if (op === 'ack') pending.resolve(ack);
    else pending.reject(new GatewayError(frame.code, frame.message));
  }

  _dropWs() {
    // A dead connection may never finish the closing handshake: stop listening to it now.
    const ws = this._ws;
    if (!ws) return;
    this._wsLost(this._wsConfirmed, 4000);
    try {
      ws.close();
    } catch {
      /* already closed */
    }
  }

  _teardownWs() {
    for (const timer of [this._connectTimer, this._pingTimer, this._pongTimer]) this._cancel(timer);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= 1) ws.close(1000);
    }
    this._wsConfirmed = false;
  }

  _wsLost(confirmed, code) {
    this._teardownWs();
    if (this._closed) return;
    // Publishes already sent may or may not have happened: the caller decides whether to retry.
    this._rejectPending((p) => p.subscribe || p.sent, 'disconnected', 'connection lost');
    if (!confirmed) this._wsFailures += 1;
    const auto = this.options.transport === 'auto';
    if (auto && !this._everOpened && this._wsFailures >= this.options.wsAttempts) {
      this._switchToSse();
      return;
    }
    if (code === 4008) {
      this._scheduleReconnect(50 + Math.random() * 200); // slow consumer: resume at once
    } else if (this._retryHint !== undefined) {
      const hint = this._retryHint;
      this._retryHint = undefined;
      this._scheduleReconnect(Math.min(hint, 1000) * (0.5 + Math.random()));
    } else {
      this._scheduleReconnect();
    }
  }

  _switchToSse() {
    this._setTransport('sse');
    this._attempt = 0;
    // Publishes queued for the WebSocket go over HTTP instead.
    for (const [ref, pending] of this._pending) {
      if (!pending.op) continue;
      this._pending.delete(ref);
      this._cancel(pending.timer);
      this._httpPublish(pending.channel, pending.type, pending.data).then(
        pending.resolve,
        pending.reject,
      );
    }
    this._start();
  }

  // --- Server-Sent Events ----------------------------------------------------------------------
  //
  // Read with fetch() rather than EventSource so that a silent link is noticed (no bytes for
  // heartbeat + heartbeatTimeout) and a refused stream's problem detail reaches the caller. Every
  // message's data is JSON: an envelope (it has `specversion` and `id`) or a signal whose `type`
  // is `gap`, `shutdown`, `error` or `heartbeat`. Resuming sends the last id of each channel back
  // as a `since` cursor.

  _sseUrl(channels) {
    const params = new URLSearchParams();
    for (const channel of channels) params.append('channel', channel);
    const cursor = [];
    for (const channel of channels) {
      const sub = this._subs.get(channel);
      if (sub && sub.lastId) cursor.push(`${channel}@${sub.lastId}`);
    }
    if (cursor.length) params.set('since', cursor.join(','));
    const token = this.options.token || [...this._subs.values()].map((s) => s.token).find(Boolean);
    if (token) params.set('token', token);
    params.set('heartbeat', String(this._sseHeartbeat() / 1000));
    return `${this.baseUrl}/events?${params}`;
  }

  _sseHeartbeat() {
    return Math.max(1000, this.options.heartbeat); // the gateway sends at most one a second
  }

  _restartSse() {
    if (this._sseRestart || this._closed) return;
    this._sseRestart = true;
    queueMicrotask(() => {
      this._sseRestart = false;
      if (this.transport !== 'sse' || this._closed) return;
      this._teardownSse();
      this._cancel(this._reconnectTimer);
      this._openSse();
    });
  }

  _teardownSse() {
    this._cancel(this._idleTimer);
    if (this._sse) {
      this._sse.abort();
      this._sse = null;
    }
  }

  async _openSse() {
    const controller = new AbortController();
    this._sse = controller;
    const channels = [...this._subs.keys()];
    // A request sent on a dead link (say, a pooled connection) may never be answered.
    const connectTimer = this._later(() => controller.abort(), this.options.connectTimeout);
    try {
      if (!channels.length) {
        // Nothing to stream yet: check that the gateway answers, so `open` means something.
        const response = await fetch(`${this.baseUrl}/healthz`, {signal: controller.signal});
        this._cancel(connectTimer);
        if (!response.ok) throw new GatewayError('unavailable', `healthz: ${response.status}`);
        if (this._sse !== controller) return;
        this._opened();
        // No stream to notice a lost gateway: ask again every heartbeat while idle.
        this._idleTimer = this._later(() => {
          if (this._sse === controller) this._openSse();
        }, this.options.heartbeat);
        return;
      }
      const response = await fetch(this._sseUrl(channels), {
        headers: {Accept: 'text/event-stream'},
        cache: 'no-store',
        signal: controller.signal,
      });
      this._cancel(connectTimer);
      if (!response.ok || !response.body) {
        const detail = await response.json().catch(() => ({}));
        const error = new GatewayError(problemCode(detail, response.status), detail.detail);
        // One refused channel fails the whole stream: blame (and drop) the channels that never
        // streamed before, so the others keep working. Server trouble (5xx, 429) is retried.
        const refused = response.status < 500 && response.status !== 429;
        const fresh = channels.filter((channel) => !this._subs.get(channel)?.streamed);
        for (const channel of fresh.length ? fresh : channels) {
          this._subscriptionError(channel, error);
          if (refused && fresh.length) this._subs.delete(channel);
        }
        if (refused && fresh.length && this._sse === controller) {
          this._sse = null;
          this._restartSse();
          return;
        }
        throw error;
      }
      for (const channel of channels) {
        const sub = this._subs.get(channel);
        if (sub) sub.streamed = true;
      }
      this._opened();
      await this._readSse(response.body, controller);
      if (this._sse !== controller) return;
      this._sse = null;
      const hint = this._retryHint;
      this._retryHint = undefined;
      this._scheduleReconnect(hint !== undefined ? Math.min(hint, 1000) * (0.5 + Math.random()) : undefined);
    } catch (err) {
      this._cancel(connectTimer);
      if (this._sse !== controller) return; // aborted on purpose
      this._sse = null;
      this._cancel(this._idleTimer);
      this._scheduleReconnect();
    }
  }

  async _readSse(body, controller) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let data = [];
    const silence = this._sseHeartbeat() + this.options.heartbeatTimeout;
    const touch = () => {
      this._cancel(this._idleTimer);
      this._idleTimer = this._later(() => controller.abort(), silence);
    };
    touch();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        touch();
        buffer += decoder.decode(value, {stream: true});
        let newline;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
          if (line === '') {
            if (data.length) this._onSseFrame(data.join('\n'));
            data = [];
          } else if (line.startsWith('data:')) {
            data.push(line.slice(line[5] === ' ' ? 6 : 5));
          }
        }
      }
    } finally {
      this._cancel(this._idleTimer);
    }
  }

  _onSseFrame(text) {
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      return;
    }
    if (!body || typeof body !== 'object') return;
    if (body.specversion) {
      this._deliver(body);
    } else if (body.type === 'gap') {
      this._gap({channel: body.channel, since: body.since});
    } else if (body.type === 'shutdown') {
      this._retryHint = body.retry;
    } else if (body.type === 'error') {
      this._emit('error', new GatewayError(body.code, body.message));
    }
    // `heartbeat`: its bytes already reset the silence timer.
  }

  async _httpPublish(channel, type, data) {
    const headers = {'Content-Type': 'application/json'};
    if (this.options.token) headers.Authorization = `Bearer ${this.options.token}`;
    const response = await fetch(`${this.baseUrl}/channels/${encodeURIComponent(channel)}/events`, {
      method: 'POST',
      headers,
      body: JSON.stringify({type, data}),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new GatewayError(problemCode(body, response.status), body.detail || body.title, body);
    }
    return body;
  }
}

/** The code of an RFC 9457 problem body: its `code`, else the last segment of its `type`. */
function problemCode(body, status) {
  if (body && body.code) return body.code;
  if (body && typeof body.type === 'string' && body.type.includes('/')) {
    return body.type.slice(body.type.lastIndexOf('/') + 1);
  }
  return `http_${status}`;
}

function baseUrl(url) {
  if (!url) return globalThis.location ? globalThis.location.origin : 'http://127.0.0.1:8000';
  const parsed = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  const protocol = parsed.protocol.replace(/^ws/, 'http');
  const path = parsed.pathname.replace(/\/ws\/?$/, '').replace(/\/+$/, '');
  return `${protocol}//${parsed.host}${path}`;
}
