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
// default); coming back `online`, or a page shown again after a while hidden, reconnects at once.
// When WebSocket never gets through (blocked by a proxy), it falls back to Server-Sent Events on
// /events, and tries WebSocket again now and then (with backoff) to go back to it.
//
// All tabs of an origin share one connection (docs/gateway-js.md): a SharedWorker
// (gateway-worker.js, beside this file) holds it where the browser has one, else one tab elected
// with Web Locks holds it and the others talk to it over a BroadcastChannel; when that tab
// closes, another takes over and resumes every channel from the last id seen. `shared: false`
// gives the page a connection of its own.

const TERMINAL = new Set(['job.completed', 'job.failed', 'job.cancelled']);

/** Close codes (WebSocket) and `disconnected` codes (SSE) of a server-side disconnect. */
export const DISCONNECTED = 4001; // do not reconnect
export const DISCONNECTED_RECONNECT = 4002; // reconnect (e.g. with a new token)

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

/** Presence join/leave events are not in history: no position to resume from, never deduplicated. */
function positionless(event) {
  return typeof event.type === 'string' && event.type.startsWith('presence.');
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
  shared: 'auto', // 'auto' | 'worker' | 'tabs' | false: share one connection among the origin's tabs
  heartbeat: 4000, // ms between WebSocket pings; the SSE stream sends a heartbeat as often
  heartbeatTimeout: 4000, // ms more of silence (no pong, no SSE bytes) before the link counts as dead
  connectTimeout: 10000, // ms for a WebSocket to answer its first ping
  wakeTimeout: 2000, // ms for a pong when the page is shown again, before reconnecting
  backoffInitial: 500,
  backoffMax: 8000,
  wsAttempts: 3, // failed WebSocket attempts, before one ever worked, that switch to SSE
  wsProbe: 10000, // ms after falling back to SSE before trying WebSocket again (0: never)
  wsProbeMax: 300000, // the probe's backoff ceiling
  publishTimeout: 10000,
  onGap: undefined,
};

// The options that shape a connection: tabs share one only when all of these are equal.
const CONNECTION_OPTIONS = [
  'token',
  'transport',
  'heartbeat',
  'heartbeatTimeout',
  'connectTimeout',
  'wakeTimeout',
  'backoffInitial',
  'backoffMax',
  'wsAttempts',
  'wsProbe',
  'wsProbeMax',
];

/**
 * Connect to a gateway. `url` is its base (http(s)://host[:port], or ws(s)://host/ws); omitted,
 * the page's own origin. Returns a `Gateway` (or a `SharedGateway`, when the connection is
 * shared with the origin's other tabs: the same interface); it connects at once and keeps
 * reconnecting until `close()`.
 */
export function connect(url, options) {
  if (url && typeof url === 'object') {
    options = url;
    url = undefined;
  }
  options = {...DEFAULTS, ...options};
  const sharing = sharingAvailable(options.shared);
  if (!sharing) return new Gateway(url, options);
  return new SharedGateway(url, options, sharing);
}

/** The sharing this context can do for the `shared` option: 'worker', 'tabs' or null. */
function sharingAvailable(shared) {
  if (shared === false || shared === null || shared === 'none') return null;
  const g = globalThis;
  if (!g.document) return null; // a worker: it is the shared connection, or owns its own
  const tabs = g.navigator && g.navigator.locks && typeof g.BroadcastChannel === 'function';
  if (shared !== 'tabs' && typeof g.SharedWorker === 'function' && workerUrl()) return 'worker';
  return tabs ? 'tabs' : null;
}

/** The SharedWorker script beside this module, if a page of this origin may start it. */
function workerUrl() {
  try {
    const url = new URL('./gateway-worker.js', import.meta.url);
    return url.origin === globalThis.location.origin ? url.href : null;
  } catch {
    return null;
  }
}

/** A short stable name for a key (lock and channel names; the key itself may hold a token). */
function digest(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0).toString(36);
}

class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /**
   * Listen to `state` (state, {transport, code, reason}), `transport`, `event` (every event
   * delivered), `subscribed` ({channel, server}), `unsubscribed` ({channel, reason}), `gap`,
   * `error`; returns an off function.
   */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name).delete(fn);
  }

  _emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error('gateway.js listener failed', err);
      }
    }
  }
}

/** Call each subscriber of a channel, isolated from the others' failures. */
function callEach(entries, name, arg) {
  for (const entry of [...entries]) {
    if (!entry[name]) continue;
    try {
      entry[name](arg);
    } catch (err) {
      console.error('gateway.js subscriber failed', err);
    }
  }
}

/** One page's own connection (`connect(url, {shared: false})`), and what a shared one runs on. */
export class Gateway extends Emitter {
  constructor(url, options = {}) {
    super();
    this.options = {...DEFAULTS, ...options};
    this.baseUrl = baseUrl(url);
    this.state = 'connecting';
    this.transport = this.options.transport === 'sse' ? 'sse' : 'websocket';
    this.sharing = null;
    this.leader = false;
    this.closeCode = undefined;
    this.closeReason = undefined;
    this._subs = new Map(); // channel -> {channel, lastId, token, entries:Set, server, held}
    this._pending = new Map(); // ref -> {resolve, reject, timer, op, sent} | {subscribe} | {quiet}
    this._ref = 0;
    this._attempt = 0;
    this._wsFailures = 0;
    this._wsWorked = false; // WebSocket got through since the last switch to it
    this._everOpened = false;
    this._closed = false;
    this._timers = new Set();
    this._ws = null;
    this._sse = null;
    this._sseRestart = false;
    this._probe = null;
    this._probeAttempt = 0;
    this._openedAt = 0;
    this._offlineAt = 0;
    this._receivedAt = 0;
    this._hiddenAt = 0;
    this._onOnline = () => this.wake('online');
    this._onOffline = () => this.wake('offline');
    this._onVisibility = () => {
      if (globalThis.document.visibilityState === 'hidden') this._hiddenAt = Date.now();
      else if (this._hiddenAt) this.wake('visible');
    };
    if (this.options.listen !== false && globalThis.addEventListener) {
      globalThis.addEventListener('online', this._onOnline);
      globalThis.addEventListener('offline', this._onOffline);
      if (globalThis.document) globalThis.document.addEventListener('visibilitychange', this._onVisibility);
    }
    this._start();
  }

  /**
   * Call `onEvent(envelope)` for every event on `channel`. Without `since` the channel's retained
   * history is replayed first; with `since` only what came after it. Returns `unsubscribe()`.
   * Options: `since`, `token`, `onGap(info)` (history was trimmed), `onError(error)`,
   * `onUnsubscribed(info)` (the server ended it).
   */
  subscribe(channel, onEvent, options = {}) {
    if (this._closed) throw new GatewayError('closed', 'this connection is closed');
    const entry = {
      onEvent,
      onGap: options.onGap,
      onError: options.onError,
      onUnsubscribed: options.onUnsubscribed,
    };
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = {
        channel,
        lastId: options.since || null,
        token: options.token || this.options.token,
        entries: new Set(),
        server: false,
      };
      this._subs.set(channel, sub);
      sub.entries.add(entry);
      this._sendSubscribe(sub);
    } else {
      sub.entries.add(entry);
    }
    return () => {
      if (!sub.entries.delete(entry) || sub.entries.size > 0) return;
      // A channel the server subscribed this connection to stays: the server decides.
      if (this._subs.get(channel) !== sub || sub.server) return;
      this._subs.delete(channel);
      if (this.transport === 'websocket') {
        if (this._wsReady()) this._sendQuiet({op: 'unsubscribe', channel});
      } else {
        this._restartSse();
      }
    };
  }

  /** Publish an event; resolves with the ack (`{channel, id}`), rejects with a GatewayError. */
  publish(channel, type, data, options = {}) {
    if (this._closed) return Promise.reject(new GatewayError('closed', 'connection closed'));
    if (this.transport === 'sse') return this._httpPublish(channel, type, data, options.token);
    return new Promise((resolve, reject) => {
      const ref = this._nextRef();
      const op = {op: 'publish', channel, type, data, ref};
      const token = options.token || this.options.token;
      if (token && token !== this.options.token) op.token = token;
      const pending = {resolve, reject, op, sent: false, channel, type, data, token};
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

  /**
   * The network came back (`online`) or the page is shown again (`visible`): reconnect now
   * instead of when the backoff or the heartbeat says. Called by the page's own listeners, and by
   * every tab of a shared connection.
   */
  wake(why) {
    if (this._closed) return;
    const now = Date.now();
    if (why === 'offline') {
      this._offlineAt = now;
      return;
    }
    if (this._reconnectTimer && this._timers.has(this._reconnectTimer)) {
      this._cancel(this._reconnectTimer);
      this._attempt = 0;
      this._start();
      return;
    }
    if (this.state !== 'open') return; // an attempt is under way
    this._attempt = 0;
    if (why === 'online') {
      // The network changed under the connection, which may be dead without a word (a new
      // address, a NAT that forgot it): resume now, which costs a round trip and loses nothing.
      // Every tab of a shared connection reports the same `online`: a connection opened after
      // the last `offline` (or, with none seen, within the last second) is already the new one.
      const fresh = this._offlineAt ? this._openedAt > this._offlineAt : now - this._openedAt < 1000;
      if (!fresh) this._reconnectNow();
      return;
    }
    // Shown again: timers slept with the page or the machine, and the connection may have died
    // meanwhile. Ask the WebSocket for a pong within `wakeTimeout`; an SSE stream that has been
    // silent for longer than its heartbeat is dropped at once.
    if (this.transport === 'websocket') {
      if (!this._wsReady()) return;
      this._send({op: 'ping', ref: this._nextRef()});
      this._cancel(this._pongTimer);
      this._pongTimer = this._later(() => this._dropWs(true), this.options.wakeTimeout);
    } else if (now - this._receivedAt > this._sseHeartbeat() + 1000) {
      this._reconnectNow();
    }
  }

  _reconnectNow() {
    if (this.transport === 'websocket') {
      this._dropWs(true);
    } else {
      this._teardownSse();
      this._scheduleReconnect(0);
    }
  }

  /** Close for good: no reconnects; pending publishes are rejected. */
  close() {
    this._finish(undefined, undefined);
  }

  // --- internals -------------------------------------------------------------------------------

  _finish(code, reason) {
    if (this._closed) return;
    this._closed = true;
    this.closeCode = code;
    this.closeReason = reason;
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener('online', this._onOnline);
      globalThis.removeEventListener('offline', this._onOffline);
      if (globalThis.document) globalThis.document.removeEventListener('visibilitychange', this._onVisibility);
    }
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._teardownProbe();
    this._teardownWs();
    this._teardownSse();
    this._rejectPending(() => true, 'closed', reason || 'connection closed');
    this._setState('closed');
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', state, this._stateInfo());
  }

  _stateInfo() {
    const info = {transport: this.transport};
    if (this.closeCode !== undefined) {
      info.code = this.closeCode;
      info.reason = this.closeReason;
    }
    return info;
  }

  _setTransport(transport) {
    if (this.transport === transport) return;
    this.transport = transport;
    this._emit('transport', transport);
    this._emit('state', this.state, this._stateInfo());
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
    this._openedAt = this._receivedAt = Date.now();
    this._setState('open');
  }

  _deliver(envelope) {
    const sub = this._subs.get(envelope.channel);
    if (!sub) return;
    if (positionless(envelope)) {
      this._call(sub, envelope);
      return;
    }
    if (!envelope.id || sub.rewinding) return; // rewinding: the replay after the ack brings it
    if (sub.held) {
      this._hold(sub, envelope);
      return;
    }
    this._advance(sub, envelope);
  }

  _advance(sub, envelope) {
    if (sub.lastId && compareIds(envelope.id, sub.lastId) <= 0) return;
    sub.lastId = envelope.id;
    this._call(sub, envelope);
  }

  _call(sub, envelope) {
    callEach(sub.entries, 'onEvent', envelope);
    this._emit('event', envelope);
  }

  // A channel the server subscribes this connection to on connect streams live events at once,
  // while the client's own `subscribe` with `since` is answered `already`, followed by the
  // events missed meanwhile: older than those live ones. Until that ack (`held` an array), live
  // events wait; after it (`held` a sorted array with `acked`), each arriving event first lets
  // the held ones older than itself through, and the next pong lets the rest go.
  _hold(sub, envelope) {
    const held = sub.held;
    if (!held.acked) {
      held.push(envelope);
      return;
    }
    while (held.length && compareIds(held[0].id, envelope.id) < 0) this._advance(sub, held.shift());
    this._advance(sub, envelope);
    if (!held.length) sub.held = null;
  }

  _release(sub) {
    const held = sub.held;
    sub.held = null;
    if (held) for (const envelope of held.sort((a, b) => compareIds(a.id, b.id))) this._advance(sub, envelope);
  }

  _gap(info) {
    const sub = this._subs.get(info.channel);
    if (sub) callEach(sub.entries, 'onGap', info);
    if (this.options.onGap) this.options.onGap(info);
    this._emit('gap', info);
  }

  _subscriptionError(channel, error) {
    const sub = this._subs.get(channel);
    if (sub) callEach(sub.entries, 'onError', error);
    this._emit('error', Object.assign(error, {channel}));
  }

  _serverSubscribed(channel) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = {channel, lastId: null, token: this.options.token, entries: new Set(), server: true};
      this._subs.set(channel, sub);
    } else {
      sub.server = true;
      // Resuming: hold its live events until the answer to our `subscribe` with `since`.
      if (sub.lastId && sub.awaitingAck) sub.held = [];
    }
    this._emit('subscribed', {channel, server: true});
  }

  _serverUnsubscribed(channel, reason) {
    const sub = this._subs.get(channel);
    if (sub) {
      this._subs.delete(channel);
      callEach(sub.entries, 'onUnsubscribed', {channel, reason});
    }
    this._emit('unsubscribed', {channel, reason});
  }

  /** Serve `channel` again from `since` (null: all retained history): a tab joined late. */
  rewind(channel, since) {
    const sub = this._subs.get(channel);
    if (!sub || this._closed) return;
    sub.lastId = since || null;
    sub.held = null;
    if (this.transport === 'sse') {
      this._restartSse();
    } else if (this._wsReady() && !sub.awaitingAck) {
      this._resubscribe(sub);
    } else if (this._wsReady()) {
      // The answer to the first subscribe is still to come: ask again once it has.
      sub.rewindAfterAck = true;
    }
  }

  _resubscribe(sub) {
    // `subscribe` on a subscribed channel replays nothing: leave and come back from `since`.
    // Events published in between are in the history after `since`, so none is missed; live
    // events arriving before the new ack are dropped, as the replay after it brings them again.
    this._sendQuiet({op: 'unsubscribe', channel: sub.channel});
    sub.rewinding = true;
    this._sendSubscribe(sub);
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
    const url = this.baseUrl.replace(/^http/, 'ws') + '/ws';
    // The connection's token: what server-side subscriptions (the token's `channels`) need.
    return this.options.token ? `${url}?token=${encodeURIComponent(this.options.token)}` : url;
  }

  _wsReady() {
    return this._ws !== null && this._ws.readyState === 1 && this._wsConfirmed;
  }

  _send(op) {
    this._ws.send(JSON.stringify(op));
  }

  /** An op whose answer nobody waits for (an error to it is not the application's business). */
  _sendQuiet(op) {
    op.ref = this._nextRef();
    this._pending.set(op.ref, {quiet: true});
    this._send(op);
  }

  _sendSubscribe(sub) {
    if (this.transport === 'sse') {
      this._restartSse();
      return;
    }
    if (!this._wsReady()) return; // sent by _onWsConfirmed
    const op = {op: 'subscribe', channel: sub.channel, ref: this._nextRef()};
    if (sub.lastId) op.since = sub.lastId;
    if (sub.token && sub.token !== this.options.token) op.token = sub.token;
    this._pending.set(op.ref, {subscribe: sub.channel});
    sub.awaitingAck = true;
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
      if (this._ws === ws) this._wsLost(this._wsConfirmed, event.code, event.reason);
    };
  }

  _onWsConfirmed() {
    this._wsConfirmed = true;
    this._wsFailures = 0;
    this._wsWorked = true;
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
    if (!frame || typeof frame !== 'object') return;
    this._receivedAt = Date.now();
    this._cancel(this._pongTimer);
    if (!this._wsConfirmed) this._onWsConfirmed();
    const {op} = frame;
    if (op === 'event') {
      delete frame.op;
      this._deliver(frame);
    } else if (op === 'pong') {
      // The heartbeat is already running; any frame proved the connection alive. Events held
      // for a resumed server-side channel have had their replay by now.
      for (const sub of this._subs.values()) if (sub.held && sub.held.acked) this._release(sub);
    } else if (op === 'ack' || op === 'error') {
      this._settle(frame);
    } else if (op === 'gap') {
      this._gap({channel: frame.channel, since: frame.since});
    } else if (op === 'subscribed') {
      if (frame.server) this._serverSubscribed(frame.channel);
    } else if (op === 'unsubscribed') {
      this._serverUnsubscribed(frame.channel, frame.reason);
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
    if (pending.quiet) return;
    if (pending.subscribe) {
      const channel = pending.subscribe;
      const sub = this._subs.get(channel);
      if (sub) sub.awaitingAck = sub.rewinding = false;
      if (frame.op === 'error') {
        if (sub) sub.held = null;
        this._subscriptionError(channel, new GatewayError(frame.code, frame.message));
        // Refused for good (forbidden, invalid): do not ask again on every reconnect.
        if (frame.code !== 'unavailable' && sub && !sub.server) this._subs.delete(channel);
      } else if (sub && sub.rewindAfterAck) {
        sub.rewindAfterAck = false;
        this._resubscribe(sub);
      } else if (sub && sub.held) {
        // The events missed while away come next: merge the held live ones in by id.
        sub.held.sort((a, b) => compareIds(a.id, b.id));
        sub.held.acked = true;
        this._sendQuiet({op: 'ping'});
      }
      return;
    }
    const {op, ref, ...ack} = frame;
    if (op === 'ack') pending.resolve(ack);
    else pending.reject(new GatewayError(frame.code, frame.message));
  }

  _dropWs(now) {
    // A dead connection may never finish the closing handshake: stop listening to it now.
    const ws = this._ws;
    if (!ws) return;
    this._wsLost(this._wsConfirmed, 4000, '', now);
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
    for (const sub of this._subs.values()) {
      sub.awaitingAck = sub.rewindAfterAck = sub.rewinding = false;
      sub.held = null; // not delivered: the resume from the last id brings them again, in order
    }
  }

  _wsLost(confirmed, code, reason, now) {
    this._teardownWs();
    if (this._closed) return;
    // Publishes already sent may or may not have happened: the caller decides whether to retry.
    this._rejectPending((p) => p.subscribe || p.quiet || p.sent, 'disconnected', 'connection lost');
    if (code === DISCONNECTED) {
      this._finish(code, reason); // the server said: do not come back
      return;
    }
    if (!confirmed) this._wsFailures += 1;
    const auto = this.options.transport === 'auto';
    if (auto && !this._wsWorked && this._wsFailures >= this.options.wsAttempts) {
      this._switchToSse();
      return;
    }
    if (now) {
      this._scheduleReconnect(0);
    } else if (code === 4008 || code === DISCONNECTED_RECONNECT) {
      this._scheduleReconnect(50 + Math.random() * 200); // resume at once
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
      this._httpPublish(pending.channel, pending.type, pending.data, pending.token).then(
        pending.resolve,
        pending.reject,
      );
    }
    this._probeAttempt = 0;
    this._scheduleProbe();
    this._start();
  }

  // --- Back to WebSocket -------------------------------------------------------------------------
  //
  // After a fallback to SSE, try a WebSocket now and then (wsProbe ms, doubling up to wsProbeMax).
  // A probe that gets its pong proves WebSocket gets through again: the SSE stream is closed and
  // the connection goes back to WebSocket, resuming every channel from its last id.

  _scheduleProbe() {
    if (!this.options.wsProbe || this.options.transport !== 'auto' || this._closed) return;
    const base = Math.min(this.options.wsProbeMax, this.options.wsProbe * 2 ** this._probeAttempt);
    this._probeAttempt += 1;
    this._cancel(this._probeTimer);
    this._probeTimer = this._later(() => this._runProbe(), base / 2 + Math.random() * (base / 2));
  }

  _runProbe() {
    if (this.transport !== 'sse' || this._closed) return;
    let ws;
    try {
      ws = new WebSocket(this._wsUrl(), 'gateway.v1');
    } catch {
      this._scheduleProbe();
      return;
    }
    this._probe = ws;
    const failed = () => {
      if (this._probe !== ws) return;
      this._teardownProbe();
      this._scheduleProbe();
    };
    const timer = this._later(failed, this.options.connectTimeout);
    ws.onopen = () => ws.send(JSON.stringify({op: 'ping', ref: 0}));
    ws.onmessage = () => {
      if (this._probe !== ws) return;
      this._cancel(timer);
      this._teardownProbe();
      this._backToWs();
    };
    ws.onclose = () => {
      this._cancel(timer);
      failed();
    };
  }

  _teardownProbe() {
    this._cancel(this._probeTimer);
    const ws = this._probe;
    this._probe = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= 1) ws.close(1000);
    }
  }

  _backToWs() {
    if (this.transport !== 'sse' || this._closed) return;
    this._teardownSse();
    this._cancel(this._reconnectTimer);
    this._wsFailures = 0;
    this._wsWorked = false;
    this._attempt = 0;
    this._setTransport('websocket');
    this._start();
  }

  // --- Server-Sent Events ----------------------------------------------------------------------
  //
  // Read with fetch() rather than EventSource so that a silent link is noticed (no bytes for
  // heartbeat + heartbeatTimeout) and a refused stream's problem detail reaches the caller. Every
  // message's data is JSON: an envelope (it has `specversion` and `id`) or a signal whose `type`
  // is `gap`, `shutdown`, `disconnected`, `error` or `heartbeat`. Resuming sends the last id of
  // each channel back as a `since` cursor.

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
      if (this._closed) return;
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
      this._receivedAt = Date.now();
      this._cancel(this._idleTimer);
      this._idleTimer = this._later(() => controller.abort(), silence);
    };
    touch();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done || this._sse !== controller) return;
        touch();
        buffer += decoder.decode(value, {stream: true});
        let newline;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
          if (line === '') {
            if (data.length) this._onSseFrame(data.join('\n'));
            data = [];
            if (this._closed) return;
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
    } else if (body.type === 'disconnected') {
      // The last message of a stream the server ended for this user (CONTRACT: 4001 / 4002).
      if (body.code === DISCONNECTED) this._finish(DISCONNECTED, body.reason);
      else this._retryHint = 0;
    } else if (body.type === 'error') {
      this._emit('error', new GatewayError(body.code, body.message));
    }
    // `heartbeat`: its bytes already reset the silence timer.
  }

  async _httpPublish(channel, type, data, token) {
    const headers = {'Content-Type': 'application/json'};
    token = token || this.options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
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

// --- Sharing one connection among tabs ------------------------------------------------------------
//
// A `Switchboard` holds the shared connections (one `Gateway` per distinct url + options, the
// "key") and the tabs using each: in the SharedWorker, or in the tab elected leader. Tabs speak
// to it in messages:
//
//   tab -> switchboard: hello {url, options}; sub {channel, since, token}; unsub {channel};
//                       pub {ref, channel, type, data, token, timeout}; wake {why}; bye
//   switchboard -> tabs: state {state, transport, code, reason, server}; event {channel, event};
//                        gap {channel, since}; suberror {channel, error}; subscribed {channel};
//                        unsubscribed {channel, reason}; error {error}; puback {ref, ack};
//                        puberr {ref, error}; leader (tabs mode: a new switchboard, re-register)
//
// Every message carries `key` and the tab's id (`tab`; `to`, a list of tab ids, on messages for
// some tabs only). Each tab subscribes a channel at most once, with `since` = the last id it saw
// (so a tab joining a channel late still gets its history, and after a hand-over each resumes
// from its own position); the switchboard counts the tabs per channel and leaves the channel
// when the last one goes. A tab that closes without saying `bye` is noticed through its Web Lock.

function errorFields(error) {
  return {code: error.code || 'error', message: error.message, detail: error.detail};
}

function errorFrom(fields) {
  return new GatewayError(fields.code, fields.message, fields.detail);
}

/** The switchboard's side of one shared connection. */
class Line {
  constructor(switchboard, key, url, options) {
    this.switchboard = switchboard;
    this.key = key;
    this.tabs = new Set();
    this.channels = new Map(); // channel -> {regs: Map<tab, {lastId}>, off}
    this.gateway = new Gateway(url, {...options, listen: false});
    const gw = this.gateway;
    gw.on('state', () => this.post(this.stateMessage()));
    gw.on('event', (event) => this.onEvent(event));
    gw.on('gap', (info) => this.onGap(info));
    gw.on('subscribed', ({channel}) => this.post({t: 'subscribed', channel}));
    gw.on('unsubscribed', ({channel, reason}) => {
      this.channels.delete(channel);
      this.post({t: 'unsubscribed', channel, reason});
    });
    gw.on('error', (error) => {
      if (!error.channel) this.post({t: 'error', error: errorFields(error)});
    });
  }

  post(message, to) {
    this.switchboard.post(this.key, message, to || [...this.tabs]);
  }

  stateMessage() {
    const gw = this.gateway;
    const server = [...gw._subs.values()].filter((s) => s.server).map((s) => s.channel);
    return {t: 'state', state: gw.state, transport: gw.transport, code: gw.closeCode, reason: gw.closeReason, server};
  }

  onEvent(event) {
    const channel = this.channels.get(event.channel);
    const sub = this.gateway._subs.get(event.channel);
    if (sub && sub.server) {
      this.post({t: 'event', channel: event.channel, event}); // every tab: the connection's channel
      return;
    }
    if (!channel) return;
    const to = [];
    for (const [tab, reg] of channel.regs) {
      if (!positionless(event)) {
        if (reg.lastId && compareIds(event.id, reg.lastId) <= 0) continue;
        reg.lastId = event.id;
      }
      to.push(tab);
    }
    if (to.length) this.post({t: 'event', channel: event.channel, event}, to);
  }

  onGap(info) {
    const channel = this.channels.get(info.channel);
    if (!channel) return;
    // Only the tabs that wanted events from before the gap's `since` missed any.
    const to = [...channel.regs]
      .filter(([, reg]) => !reg.lastId || compareIds(reg.lastId, info.since) <= 0)
      .map(([tab]) => tab);
    if (to.length) this.post({t: 'gap', channel: info.channel, since: info.since}, to);
  }

  subscribe(tab, channel, since, token) {
    const existed = this.gateway._subs.has(channel);
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = {regs: new Map(), off: null};
      this.channels.set(channel, entry);
      entry.off = this.gateway.subscribe(channel, () => {}, {
        since,
        token,
        onError: (error) => {
          const to = [...entry.regs.keys()];
          if (error.code !== 'unavailable' && !this.gateway._subs.has(channel)) {
            this.channels.delete(channel);
          }
          this.post({t: 'suberror', channel, error: errorFields(error)}, to);
        },
      });
    }
    const had = entry.regs.get(tab);
    entry.regs.set(tab, {lastId: since || (had && had.lastId) || null});
    if (!existed) return; // subscribed from `since` just now
    // A tab that wants events from before the connection's position (its history, or what it
    // missed while another tab led): serve the channel again from there. Tabs already past it
    // drop what they have seen.
    const sub = this.gateway._subs.get(channel);
    if (sub && sub.lastId && (!since || compareIds(since, sub.lastId) < 0)) this.gateway.rewind(channel, since);
  }

  unsubscribe(tab, channel) {
    const entry = this.channels.get(channel);
    if (!entry || !entry.regs.delete(tab) || entry.regs.size) return;
    this.channels.delete(channel);
    entry.off();
  }

  leave(tab) {
    this.tabs.delete(tab);
    for (const channel of [...this.channels.keys()]) this.unsubscribe(tab, channel);
  }
}

/** Where shared connections live: the SharedWorker, or the leader tab. */
class Switchboard {
  constructor(post) {
    this.post = post; // (key, message, to?) => void
    this.lines = new Map();
    this.tabLocks = new Set();
    this.stopped = new AbortController();
  }

  line(key, message) {
    let line = this.lines.get(key);
    if (line && line.gateway._closed) {
      // Closed by the server (4001): tabs connecting later start over.
      if (message.t !== 'hello') return line;
      this.lines.delete(key);
      line = null;
    }
    if (!line) {
      if (!message.url && message.t !== 'hello') return null;
      line = new Line(this, key, message.url, message.options);
      this.lines.set(key, line);
    }
    return line;
  }

  handle(message) {
    const {key, tab} = message;
    if (message.t === 'hello') {
      const line = this.line(key, message);
      this.adopt(line, tab);
      this.post(key, line.stateMessage(), [tab]);
      return;
    }
    const line = this.lines.get(key);
    if (!line) return;
    if (message.t === 'bye') {
      line.leave(tab);
      this.retire(key, line);
      return;
    }
    this.adopt(line, tab);
    const gw = line.gateway;
    if (message.t === 'sub') {
      if (!gw._closed) line.subscribe(tab, message.channel, message.since, message.token);
    } else if (message.t === 'unsub') {
      line.unsubscribe(tab, message.channel);
    } else if (message.t === 'wake') {
      gw.wake(message.why);
    } else if (message.t === 'pub') {
      gw.publish(message.channel, message.type, message.data, {token: message.token, timeout: message.timeout}).then(
        (ack) => this.post(key, {t: 'puback', ref: message.ref, ack}, [tab]),
        (error) => this.post(key, {t: 'puberr', ref: message.ref, error: errorFields(error)}, [tab]),
      );
    }
  }

  adopt(line, tab) {
    if (line.tabs.has(tab)) return;
    line.tabs.add(tab);
    // The tab holds a lock named after it for its whole life: asking for it here is answered
    // when the tab is gone, even if it never said `bye` (crashed, killed, frozen and discarded).
    if (this.tabLocks.has(tab) || !globalThis.navigator || !globalThis.navigator.locks) return;
    this.tabLocks.add(tab);
    const gone = () => {
      this.tabLocks.delete(tab);
      if (this.onGone) this.onGone(tab);
      for (const [key, other] of this.lines) {
        if (!other.tabs.has(tab)) continue;
        other.leave(tab);
        this.retire(key, other);
      }
    };
    globalThis.navigator.locks.request(tabLockName(tab), {signal: this.stopped.signal}, gone).catch(() => {});
  }

  retire(key, line) {
    // The last tab is gone: so is the connection.
    if (line.tabs.size) return;
    this.lines.delete(key);
    line.gateway.close();
  }

  /** Stop without a word to the tabs (a leader handing over): the next switchboard resumes. */
  stop() {
    this.stopped.abort();
    for (const line of this.lines.values()) {
      line.gateway._listeners.clear();
      line.gateway.close();
    }
    this.lines.clear();
  }
}

function tabLockName(tab) {
  return `gateway.js tab ${tab}`;
}

/** Serve shared connections to the tabs that connect to this SharedWorker (gateway-worker.js). */
export function serveTabs(scope) {
  const ports = new Map(); // tab -> MessagePort
  const switchboard = new Switchboard((key, message, to) => {
    message.key = key;
    for (const tab of to) {
      const port = ports.get(tab);
      if (port) port.postMessage(message);
    }
  });
  const forget = (tab) => {
    ports.delete(tab);
  };
  switchboard.onGone = forget;
  scope.addEventListener('connect', (event) => {
    const port = event.ports[0];
    port.onmessage = ({data}) => {
      if (!data || typeof data !== 'object') return;
      if (data.t === 'hello') ports.set(data.tab, port);
      switchboard.handle(data);
      if (data.t === 'bye') {
        let used = false;
        for (const line of switchboard.lines.values()) used = used || line.tabs.has(data.tab);
        if (!used) forget(data.tab);
      }
    };
    port.start();
  });
  for (const why of ['online', 'offline']) {
    scope.addEventListener(why, () => {
      for (const line of switchboard.lines.values()) line.gateway.wake(why);
    });
  }
  return switchboard;
}

let tabSequence = 0;

/**
 * A tab's view of a shared connection: the same interface as `Gateway`. Subscriptions and
 * publishes go to the switchboard (the SharedWorker, or the leader tab); events, states and
 * answers come back.
 */
export class SharedGateway extends Emitter {
  constructor(url, options, sharing) {
    super();
    this.options = {...DEFAULTS, ...options};
    this.baseUrl = baseUrl(url);
    this.state = 'connecting';
    this.transport = this.options.transport === 'sse' ? 'sse' : 'websocket';
    this.sharing = sharing;
    this.leader = false;
    this.closeCode = undefined;
    this.closeReason = undefined;
    const fields = {};
    for (const name of CONNECTION_OPTIONS) fields[name] = this.options[name];
    this._connectionOptions = fields;
    this.key = JSON.stringify([this.baseUrl, fields]);
    this._tab = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${(tabSequence += 1)}`;
    this._subs = new Map(); // channel -> {channel, lastId, token, entries}
    this._server = new Map(); // channel -> lastId: channels the server subscribed the connection to
    this._pending = new Map(); // ref -> {resolve, reject, timer}
    this._ref = 0;
    this._closed = false;
    this._hiddenAt = 0;
    this._releaseTabLock = null;
    this._releaseLeadership = null;
    this._switchboard = null; // ours, when this tab leads
    this._heard = false; // a switchboard has spoken to this tab (tabs mode)
    this._onOnline = () => this._post({t: 'wake', why: 'online'});
    this._onOffline = () => this._post({t: 'wake', why: 'offline'});
    this._onVisibility = () => {
      if (globalThis.document.visibilityState === 'hidden') this._hiddenAt = Date.now();
      else if (this._hiddenAt) this._post({t: 'wake', why: 'visible'});
    };
    this._onPageHide = () => this._post({t: 'bye'});
    this._onPageShow = (event) => {
      if (event.persisted && !this._closed) this._hello(); // back from the back/forward cache
    };
    globalThis.addEventListener('online', this._onOnline);
    globalThis.addEventListener('offline', this._onOffline);
    globalThis.addEventListener('pagehide', this._onPageHide);
    globalThis.addEventListener('pageshow', this._onPageShow);
    globalThis.document.addEventListener('visibilitychange', this._onVisibility);
    this._holdTabLock().then(() => {
      if (this._closed) return;
      if (this.sharing === 'worker' && this._startWorker()) return;
      this.sharing = 'tabs';
      this._startTabs();
    });
  }

  subscribe(channel, onEvent, options = {}) {
    if (this._closed) throw new GatewayError('closed', 'this connection is closed');
    const entry = {
      onEvent,
      onGap: options.onGap,
      onError: options.onError,
      onUnsubscribed: options.onUnsubscribed,
    };
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = {
        channel,
        lastId: options.since || this._server.get(channel) || null,
        token: options.token || this.options.token,
        entries: new Set(),
      };
      this._subs.set(channel, sub);
      sub.entries.add(entry);
      this._register(sub);
    } else {
      sub.entries.add(entry);
    }
    return () => {
      if (!sub.entries.delete(entry) || sub.entries.size > 0) return;
      if (this._subs.get(channel) !== sub) return;
      this._subs.delete(channel);
      if (this._server.has(channel)) this._server.set(channel, sub.lastId);
      this._post({t: 'unsub', channel});
    };
  }

  publish(channel, type, data, options = {}) {
    if (this._closed) return Promise.reject(new GatewayError('closed', 'connection closed'));
    return new Promise((resolve, reject) => {
      this._ref += 1;
      const ref = this._ref;
      const timeout = options.timeout || this.options.publishTimeout;
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new GatewayError('timeout', `no ack for publish to ${channel}`));
      }, timeout + 1000); // the connection's own timeout answers first
      const message = {t: 'pub', ref, channel, type, data, timeout};
      if (options.token) message.token = options.token;
      const pending = {resolve, reject, timer, message, delivered: false};
      this._pending.set(ref, pending);
      pending.delivered = this._post(message);
    });
  }

  /** Reconnect now if the connection may have gone stale (see `Gateway.wake`). */
  wake(why) {
    this._post({t: 'wake', why});
  }

  close() {
    if (this._closed) return;
    this._post({t: 'bye'});
    this._shutdown();
    this._setState('closed', {transport: this.transport});
  }

  // --- internals -------------------------------------------------------------------------------

  _shutdown(byServer) {
    this._closed = true;
    globalThis.removeEventListener('online', this._onOnline);
    globalThis.removeEventListener('offline', this._onOffline);
    globalThis.removeEventListener('pagehide', this._onPageHide);
    globalThis.removeEventListener('pageshow', this._onPageShow);
    globalThis.document.removeEventListener('visibilitychange', this._onVisibility);
    for (const [ref, pending] of this._pending) {
      this._pending.delete(ref);
      clearTimeout(pending.timer);
      pending.reject(new GatewayError('closed', this.closeReason || 'connection closed'));
    }
    if (this._switchboard) {
      // Leading: hand over. The next tab in line takes the lock and resumes every channel.
      this._switchboard.stop();
      this._switchboard = null;
    }
    if (this._releaseLeadership) {
      // Closed by the server (4001): hold the lead a moment, so that every tab hears of it
      // before one of them could take over and connect again.
      if (byServer) setTimeout(this._releaseLeadership, 1000);
      else this._releaseLeadership();
    }
    if (this._releaseTabLock) this._releaseTabLock();
    if (this._port) this._port.close();
    if (this._bus) this._bus.close();
  }

  _holdTabLock() {
    const locks = globalThis.navigator.locks;
    if (!locks) return Promise.resolve();
    return new Promise((held) => {
      locks
        .request(tabLockName(this._tab), () => {
          held();
          return new Promise((release) => {
            this._releaseTabLock = release;
          });
        })
        .catch(() => held());
    });
  }

  _startWorker() {
    let worker;
    try {
      worker = new SharedWorker(workerUrl(), {type: 'module', name: 'gateway.js'});
    } catch {
      return false;
    }
    this._port = worker.port;
    this._port.onmessage = ({data}) => this._receive(data);
    worker.onerror = () => {
      // The worker script failed to load (not served beside the module?): share among tabs.
      if (this._closed || this.sharing !== 'worker') return;
      this._port.close();
      this._port = null;
      this.sharing = 'tabs';
      this._startTabs();
    };
    this._port.start();
    this._hello();
    return true;
  }

  _startTabs() {
    const name = `gateway.js ${digest(this.key)}`;
    this._bus = new BroadcastChannel(name);
    this._bus.onmessage = ({data}) => {
      if (!data || data.key !== this.key) return;
      if (data.from === 'tab') {
        if (this._switchboard) this._switchboard.handle(data);
      } else {
        this._receive(data);
      }
    };
    this._hello();
    // Wait in line for the leadership; it comes when every tab before this one has closed.
    globalThis.navigator.locks
      .request(`${name} leader`, () => {
        if (this._closed) return undefined;
        this._lead();
        return new Promise((release) => {
          this._releaseLeadership = release;
        });
      })
      .catch(() => {
        // No locks here (an opaque origin, say): lead alone rather than never connect.
        if (!this._closed && !this.leader) this._lead();
      });
  }

  _lead() {
    this.leader = true;
    const bus = this._bus;
    this._switchboard = new Switchboard((key, message, to) => {
      message.key = key;
      message.from = 'leader';
      message.to = to;
      bus.postMessage(message);
      queueMicrotask(() => this._receive(message)); // this tab too
    });
    // Every tab (this one included) registers again with where it is.
    const announce = {t: 'leader', key: this.key, from: 'leader'};
    bus.postMessage(announce);
    this._receive(announce);
  }

  _hello() {
    this._post({t: 'hello', url: this.baseUrl, options: this._connectionOptions});
    for (const sub of this._subs.values()) this._register(sub);
    for (const pending of this._pending.values()) {
      if (!pending.delivered) pending.delivered = this._post(pending.message);
    }
  }

  _register(sub) {
    const message = {t: 'sub', channel: sub.channel, since: sub.lastId};
    if (sub.token && sub.token !== this.options.token) message.token = sub.token;
    this._post(message);
  }

  /** Send to the switchboard; false when none may be there to hear it (sent again on hello). */
  _post(message) {
    if (this._closed) return false;
    message.key = this.key;
    message.tab = this._tab;
    if (this._port) {
      this._port.postMessage(message); // queued by the port until the worker listens
      return true;
    }
    if (!this._bus) return false;
    message.from = 'tab';
    if (this._switchboard) {
      const switchboard = this._switchboard;
      queueMicrotask(() => switchboard.handle(message));
      return true;
    }
    this._bus.postMessage(message);
    return this._heard; // a leader answered before: it is there (or its successor resends)
  }

  _setState(state, info) {
    const changed = this.state !== state;
    this.state = state;
    if (info.transport && info.transport !== this.transport) {
      this.transport = info.transport;
      this._emit('transport', info.transport);
      this._emit('state', state, info);
      return;
    }
    if (changed) this._emit('state', state, info);
  }

  _receive(message) {
    if (this._closed || !message || message.key !== this.key) return;
    if (message.to && !message.to.includes(this._tab)) return;
    if (message.t !== 'leader') this._heard = true;
    switch (message.t) {
      case 'leader':
        // A new switchboard (the last leader closed): publishes the old one heard are lost with
        // it, or not; as after a dropped connection, the caller decides. Those nobody heard go
        // to the new one.
        for (const [ref, pending] of this._pending) {
          if (!pending.delivered) continue;
          this._pending.delete(ref);
          clearTimeout(pending.timer);
          pending.reject(new GatewayError('disconnected', 'connection lost'));
        }
        if (this.state === 'open') this._setState('reconnecting', {transport: this.transport});
        this._heard = true;
        this._hello();
        break;
      case 'state':
        this._onState(message);
        break;
      case 'event':
        this._deliver(message.event);
        break;
      case 'gap': {
        const info = {channel: message.channel, since: message.since};
        const sub = this._subs.get(message.channel);
        if (sub) callEach(sub.entries, 'onGap', info);
        if (this.options.onGap) this.options.onGap(info);
        this._emit('gap', info);
        break;
      }
      case 'suberror': {
        const error = errorFrom(message.error);
        const sub = this._subs.get(message.channel);
        if (sub) callEach(sub.entries, 'onError', error);
        if (error.code !== 'unavailable') this._subs.delete(message.channel);
        this._emit('error', Object.assign(error, {channel: message.channel}));
        break;
      }
      case 'subscribed':
        if (!this._server.has(message.channel)) {
          this._server.set(message.channel, null);
          this._emit('subscribed', {channel: message.channel, server: true});
        }
        break;
      case 'unsubscribed': {
        const info = {channel: message.channel, reason: message.reason};
        const sub = this._subs.get(message.channel);
        this._subs.delete(message.channel);
        this._server.delete(message.channel);
        if (sub) callEach(sub.entries, 'onUnsubscribed', info);
        this._emit('unsubscribed', info);
        break;
      }
      case 'error':
        this._emit('error', errorFrom(message.error));
        break;
      case 'puback':
      case 'puberr': {
        const pending = this._pending.get(message.ref);
        if (!pending) break;
        this._pending.delete(message.ref);
        clearTimeout(pending.timer);
        if (message.t === 'puback') pending.resolve(message.ack);
        else pending.reject(errorFrom(message.error));
        break;
      }
      default:
        break;
    }
  }

  _onState(message) {
    for (const channel of message.server || []) {
      if (this._server.has(channel)) continue;
      this._server.set(channel, null);
      this._emit('subscribed', {channel, server: true});
    }
    const info = {transport: message.transport};
    if (message.code !== undefined && message.code !== null) {
      info.code = message.code;
      info.reason = message.reason;
    }
    if (message.state === 'closed') {
      // Only the server closes a shared connection (4001): every tab is done.
      this.closeCode = message.code;
      this.closeReason = message.reason;
      this._shutdown(true);
    }
    this._setState(message.state, info);
  }

  _deliver(envelope) {
    const sub = this._subs.get(envelope.channel);
    const server = this._server.has(envelope.channel);
    if (!sub && !server) return;
    if (!positionless(envelope)) {
      const lastId = sub ? sub.lastId : this._server.get(envelope.channel);
      if (lastId && compareIds(envelope.id, lastId) <= 0) return;
      if (sub) sub.lastId = envelope.id;
      else this._server.set(envelope.channel, envelope.id);
    }
    if (sub) callEach(sub.entries, 'onEvent', envelope);
    this._emit('event', envelope);
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
