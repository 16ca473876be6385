// Type declarations for gateway.js (the module beside this file), for editors and TypeScript.
// The module itself stays plain JavaScript: no build step. See docs/gateway-js.md.

/** An event envelope (CloudEvents 1.0 members, plus `channel`): docs/events.md. */
export interface GatewayEvent<Data = unknown> {
  specversion: string;
  /** `<ms>-<seq>`; the position to resume from. */
  id: string;
  source: string;
  type: string;
  channel: string;
  time: string;
  data: Data;
  [member: string]: unknown;
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';
export type Transport = 'websocket' | 'sse';
/** Where a shared connection lives: a SharedWorker, or the tab elected leader; null: this page's own. */
export type Sharing = 'worker' | 'tabs' | null;

export interface GapInfo {
  channel: string;
  /** Events after this id were trimmed from history (or lost) before they could be replayed. */
  since: string;
}

export interface StateInfo {
  transport: Transport;
  /** Set when the server closed the connection for good (4001). */
  code?: number;
  reason?: string;
}

export interface SubscribedInfo {
  channel: string;
  /** True: the server subscribed the connection (the token's `channels` claim). */
  server: boolean;
}

export interface UnsubscribedInfo {
  channel: string;
  reason?: string;
}

export interface PublishAck {
  channel: string;
  /** The new event's id (null when the gateway did not keep it). */
  id: string | null;
  [member: string]: unknown;
}

export interface ConnectOptions {
  /** A channel token: sent with the connection (`?token=`) and used for its ops. */
  token?: string;
  /** 'auto' (default): WebSocket, SSE when WebSocket never gets through, and back. */
  transport?: 'auto' | Transport;
  /**
   * Share one connection among the origin's tabs: 'auto' (default; a SharedWorker where there is
   * one, else a tab elected with Web Locks), 'worker', 'tabs', or false for a page's own.
   */
  shared?: 'auto' | 'worker' | 'tabs' | boolean;
  /** ms between WebSocket pings (and SSE heartbeats asked for); default 4000. */
  heartbeat?: number;
  /** ms more of silence before the link counts as dead; default 4000. */
  heartbeatTimeout?: number;
  /** ms for a new WebSocket to answer its first ping; default 10000. */
  connectTimeout?: number;
  /** ms for a pong when the page is shown again, before reconnecting; default 2000. */
  wakeTimeout?: number;
  /** Reconnect backoff, ms: first delay and ceiling (with jitter); defaults 500 and 8000. */
  backoffInitial?: number;
  backoffMax?: number;
  /** Failed WebSocket attempts, before one ever worked, that switch to SSE; default 3. */
  wsAttempts?: number;
  /** ms after a fallback to SSE before trying WebSocket again (doubling); 0: never. Default 10000. */
  wsProbe?: number;
  /** Ceiling of that probe's backoff, ms; default 300000. */
  wsProbeMax?: number;
  /** ms to wait for a publish's ack; default 10000. */
  publishTimeout?: number;
  /** Called on every gap, whichever subscription it concerns. */
  onGap?: (info: GapInfo) => void;
}

export interface SubscribeOptions {
  /** Only events after this id (without it: all retained history first). */
  since?: string;
  /** A token for this channel only (else the connection's). */
  token?: string;
  onGap?: (info: GapInfo) => void;
  /** The subscription was refused (`error.code`: forbidden, token_required, ...). */
  onError?: (error: GatewayError) => void;
  /** The server ended the subscription (`unsubscribed`). */
  onUnsubscribed?: (info: UnsubscribedInfo) => void;
}

export interface PublishOptions {
  token?: string;
  /** ms; default `publishTimeout`. */
  timeout?: number;
}

export interface GatewayEvents {
  state: (state: ConnectionState, info: StateInfo) => void;
  transport: (transport: Transport) => void;
  event: (event: GatewayEvent) => void;
  subscribed: (info: SubscribedInfo) => void;
  unsubscribed: (info: UnsubscribedInfo) => void;
  gap: (info: GapInfo) => void;
  error: (error: GatewayError) => void;
}

/** What `connect()` returns: a page's own connection, or its view of a shared one. */
export interface GatewayConnection {
  readonly state: ConnectionState;
  readonly transport: Transport;
  readonly baseUrl: string;
  readonly sharing: Sharing;
  /** In 'tabs' sharing: this tab holds the connection. */
  readonly leader: boolean;
  /** After a close by the server (4001): its code and reason. */
  readonly closeCode: number | undefined;
  readonly closeReason: string | undefined;
  on<Name extends keyof GatewayEvents>(name: Name, listener: GatewayEvents[Name]): () => void;
  /** Returns `unsubscribe()`. */
  subscribe<Data = unknown>(
    channel: string,
    onEvent: (event: GatewayEvent<Data>) => void,
    options?: SubscribeOptions,
  ): () => void;
  publish(channel: string, type: string, data?: unknown, options?: PublishOptions): Promise<PublishAck>;
  /** Reconnect now if the link may be stale: 'online', or 'visible' (the page is shown again). */
  wake(why: 'online' | 'offline' | 'visible'): void;
  /** Close for good; this tab's subscriptions end (other tabs keep a shared connection). */
  close(): void;
}

export function connect(url?: string, options?: ConnectOptions): GatewayConnection;
export function connect(options: ConnectOptions): GatewayConnection;

/** A page's own connection (what `connect(url, {shared: false})` returns). */
export class Gateway implements GatewayConnection {
  constructor(url?: string, options?: ConnectOptions);
  readonly state: ConnectionState;
  readonly transport: Transport;
  readonly baseUrl: string;
  readonly sharing: Sharing;
  readonly leader: boolean;
  readonly closeCode: number | undefined;
  readonly closeReason: string | undefined;
  readonly options: Required<Omit<ConnectOptions, 'token' | 'onGap'>> & ConnectOptions;
  on<Name extends keyof GatewayEvents>(name: Name, listener: GatewayEvents[Name]): () => void;
  subscribe<Data = unknown>(
    channel: string,
    onEvent: (event: GatewayEvent<Data>) => void,
    options?: SubscribeOptions,
  ): () => void;
  publish(channel: string, type: string, data?: unknown, options?: PublishOptions): Promise<PublishAck>;
  wake(why: 'online' | 'offline' | 'visible'): void;
  close(): void;
}

/** A tab's view of a connection shared with the origin's other tabs. */
export class SharedGateway implements GatewayConnection {
  readonly state: ConnectionState;
  readonly transport: Transport;
  readonly baseUrl: string;
  readonly sharing: Sharing;
  readonly leader: boolean;
  readonly closeCode: number | undefined;
  readonly closeReason: string | undefined;
  on<Name extends keyof GatewayEvents>(name: Name, listener: GatewayEvents[Name]): () => void;
  subscribe<Data = unknown>(
    channel: string,
    onEvent: (event: GatewayEvent<Data>) => void,
    options?: SubscribeOptions,
  ): () => void;
  publish(channel: string, type: string, data?: unknown, options?: PublishOptions): Promise<PublishAck>;
  wake(why: 'online' | 'offline' | 'visible'): void;
  close(): void;
}

/** A refused op (`error` frame or HTTP problem), with the gateway's `code`. */
export class GatewayError extends Error {
  constructor(code: string, message?: string, detail?: unknown);
  readonly code: string;
  readonly detail: unknown;
  /** The channel, for a refused subscription. */
  channel?: string;
}

/** WebSocket close code (and SSE `disconnected` code): disconnected, do not reconnect. */
export const DISCONNECTED: 4001;
/** Disconnected; reconnect (e.g. to pick up a new token). */
export const DISCONNECTED_RECONNECT: 4002;

/** Compare two event ids as number pairs: negative, zero or positive. */
export function compareIds(a: string, b: string): number;
/** True for `job.completed`, `job.failed` and `job.cancelled`. */
export function isTerminal(event: Pick<GatewayEvent, 'type'> | null | undefined): boolean;
/** Serve shared connections from a SharedWorker's global scope (what gateway-worker.js does). */
export function serveTabs(scope: EventTarget): unknown;
