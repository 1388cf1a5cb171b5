/**
 * Herald client for browsers and Node 20+: connect to a Herald engine over
 * WebSocket, subscribe to topics, and stay connected (reconnect with backoff,
 * resubscribe, heartbeat), authenticated by a token the client renews when the
 * server asks. The wire protocol is docs/protocol.md.
 *
 * ```ts
 * import { Herald } from "@heraldrt/client";
 *
 * const herald = new Herald("ws://127.0.0.1:8080/ws", { user: "alice" });
 * herald.subscribe("room:general", (msg) => console.log(msg.seq, msg.data));
 * await herald.connect();
 * ```
 */

/** The states of a {@link Herald} client. */
export type State =
  /** Not connected and not trying: before `connect()`. */
  | "disconnected"
  /** Opening a WebSocket and waiting for the server's `connected` frame. */
  | "connecting"
  /** Connected: commands flow, subscriptions are live. */
  | "connected"
  /** The connection was lost; waiting for the backoff delay before the next attempt. */
  | "reconnecting"
  /** Stopped for good: `close()` was called, or the server said not to reconnect. `connect()` starts again. */
  | "closed";

/** One message published to a topic. Exactly one of `data`, `text`, `b64` is set. */
export interface Message {
  topic: string;
  /** The message's sequence number in its topic (1, 2, 3, …). */
  seq: number;
  /**
   * The topic's epoch (an opaque string): sequence numbers count within it. A topic created
   * again (an engine restart) has a new one and starts again at 1.
   */
  epoch?: string;
  /** The JSON value, for JSON payloads (`application/json`, `…+json`). */
  data?: unknown;
  /** The string, for `text/…` payloads. */
  text?: string;
  /** Standard base64 of the bytes, for any other payload. */
  b64?: string;
  /** The producer's content type, given with `b64` when not empty. */
  contentType?: string;
}

/** Details of an established connection. */
export interface ConnectedEvent {
  /** The connection's id (backends use it in gRPC calls). */
  connId: string;
  pingIntervalMs: number;
  idleTimeoutMs: number;
  /** True when this is not the first connection of this client. */
  reconnected: boolean;
}

/** Why a connection (or a connection attempt) ended. */
export interface DisconnectedEvent {
  /** The WebSocket close code (1006 when the connection just broke). */
  code: number;
  reason: string;
  /** Whether the client will try again. */
  reconnect: boolean;
  /** True when the server announced the close with a `disconnect` frame first. */
  announced: boolean;
}

/** Topics the server put the connection into or took it out of (a backend's gRPC call). */
export interface ServerSubscriptionEvent {
  topics: string[];
}

/** A position in a topic: a sequence number and the epoch it counts in. */
export interface Position {
  seq: number;
  /** Empty from an engine that predates epochs (then nothing is recovered). */
  epoch: string;
}

/**
 * The outcome of resubscribing to a topic with the position of the last message received
 * (after a reconnect).
 */
export interface RecoveryEvent {
  topic: string;
  /**
   * True: every message missed meanwhile was delivered (before this event), in order, with no
   * gap and no duplicate. False: the engine no longer had them all (it restarted, the topic
   * keeps no history or not enough); nothing was replayed, so reload the topic's state.
   */
  recovered: boolean;
  /** Where live delivery continues: messages after this one follow. */
  position: Position;
}

/** The next connection attempt. */
export interface RetryEvent {
  /** 1 for the first retry after a loss, then 2, 3, … until a connection succeeds. */
  attempt: number;
  delayMs: number;
}

/** The server accepted a renewed token (answer to its `refresh_required`). */
export interface RefreshedEvent {
  /** The new token's `exp`, seconds since the epoch. */
  expiresAt: number;
}

/** The events of a {@link Herald} client and their arguments. */
export interface Events {
  state: [state: State, previous: State];
  connected: [event: ConnectedEvent];
  disconnected: [event: DisconnectedEvent];
  retry: [event: RetryEvent];
  /** Every message, whichever topic (including topics a backend subscribed the connection to). */
  message: [message: Message];
  serverSubscribed: [event: ServerSubscriptionEvent];
  serverUnsubscribed: [event: ServerSubscriptionEvent];
  /** A topic was resubscribed from the last message received (after a reconnect). */
  recovery: [event: RecoveryEvent];
  /** The token was renewed on the live connection. */
  refreshed: [event: RefreshedEvent];
  /**
   * Errors not tied to a call: unsolicited `error` frames (among them the server's token
   * refusals, `token_bad_signature`, `token_expired`, …), failed resubscribes and
   * refreshes, token failures.
   */
  error: [error: HeraldError];
}

/** An error from the server (`code` is its error code) or from the client. */
export class HeraldError extends Error {
  /**
   * The server's code (`invalid_topic`, `too_many_subscriptions`, `bad_frame`, …; see
   * docs/protocol.md) or one of the client's: `timeout` (no reply in time),
   * `not_connected` (the call needs a connection), `connection_lost` (it ended
   * before the reply), `closed` (the client was closed), `token` (the token function
   * failed), `unauthorized` (HTTP 401 to a `?token=` handshake, where the WebSocket
   * shows it), `token_expired` also when a fixed token string expired.
   */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
  }
}

/** The minimal WebSocket the client needs: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Returns a fresh connection token (typically fetched from the application's backend). */
export type TokenSource = () => string | Promise<string>;

export interface Options {
  /** User id of the connection (`?user=`), for servers without authentication (open mode). */
  user?: string;
  /** Client info shown to backends through presence (`?info=`, JSON, at most 1 KiB); open mode only. */
  info?: unknown;
  /**
   * The connection token (a JWT from the application's backend), or a function returning
   * one: called before every connection attempt and whenever the server asks for a
   * refresh (`refresh_required`). A fixed string cannot be renewed: once it expires the
   * client stops (`token_expired`).
   */
  token?: string | TokenSource;
  /** The same as a function `token` (kept for compatibility). */
  getToken?: TokenSource;
  /**
   * Send the token as `?token=` in the WebSocket URL instead of a first `connect` frame
   * (default false: URLs end up in proxy and access logs).
   */
  tokenInQuery?: boolean;
  /** The WebSocket constructor; default `globalThis.WebSocket` (Node 20 needs one, e.g. from `ws`). */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay cap in ms (default 500); the cap doubles per failed attempt. */
  minReconnectDelay?: number;
  /** Largest reconnect delay cap in ms (default 20000). */
  maxReconnectDelay?: number;
  /** Time allowed to open the socket and get `connected`, in ms (default 10000). */
  connectTimeout?: number;
  /** Time to wait for a command's reply, in ms (default 10000). */
  commandTimeout?: number;
  /**
   * How long to wait for any frame after the client's own `ping`, in ms (default 10000). The
   * client sends a `ping` once the connection has been quiet for the server's ping interval;
   * nothing received within the grace after it means dead: close and reconnect.
   */
  heartbeatGrace?: number;
}

/** A handler for the messages of one topic. */
export type Handler = (message: Message) => void;

/** One handler's subscription to a topic (see {@link Herald.subscribe}). */
export interface Subscription {
  readonly topic: string;
  /**
   * Resolves once the server confirmed the subscription (on the first connection that
   * has it); rejects with the server's error (for example `invalid_topic`), in which case the
   * handler is removed.
   */
  readonly ready: Promise<void>;
  /** Removes this handler; the topic is left when its last handler is removed. */
  unsubscribe(): void;
}

interface Pending {
  resolve(frame: Frame): void;
  reject(err: HeraldError): void;
  timer: ReturnType<typeof setTimeout>;
}

interface TopicState {
  handlers: Set<Handler>;
  /** Confirmed by the server on the current connection. */
  live: boolean;
  /** Settled on the first confirmation or refusal. */
  waiters: Array<{ resolve(): void; reject(err: HeraldError): void }>;
}

type Frame = Record<string, unknown> & { type?: unknown; id?: unknown };
type Listener<K extends keyof Events> = (...args: Events[K]) => void;

const TOPICS_PER_COMMAND = 100;
/** A connection that stayed up this long (ms) resets the backoff; shorter ones keep it growing. */
const STABLE_MS = 5000;
/** The token expired (at connect or on a live connection): reconnect with a fresh one. */
const TOKEN_EXPIRED = 4004;
/** Close codes after which the client must not reconnect (besides 4500–4999). */
const FATAL_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);

/** Whether a close code allows reconnecting (docs/protocol.md, "Close codes"). */
export function shouldReconnect(code: number): boolean {
  if (code >= 4500 && code <= 4999) return false;
  return !FATAL_CODES.has(code);
}

/** Exponential backoff with full jitter: a random delay in [0, min(max, min·2^(attempt-1))). */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const cap = Math.min(max, min * 2 ** Math.min(attempt - 1, 30));
  return Math.floor(random() * cap);
}

/** A connection to a Herald engine that stays up by itself. */
export class Herald {
  readonly url: string;
  private readonly opts: Required<
    Pick<Options, "minReconnectDelay" | "maxReconnectDelay" | "connectTimeout" | "commandTimeout" | "heartbeatGrace">
  > &
    Options;
  private readonly WS: WebSocketConstructor;
  private _state: State = "disconnected";
  private ws: WebSocketLike | null = null;
  private _connId: string | null = null;
  private connections = 0;
  private attempt = 0;
  /** Bumped by every open() and stop(): an open() that awaited a token checks it is still current. */
  private epoch = 0;
  private connectedAt = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly topics = new Map<string, TopicState>();
  /** The last message received per topic: kept across reconnects, sent as `since`. */
  private readonly positions = new Map<string, Position>();
  private readonly listeners: { [K in keyof Events]?: Set<Listener<K>> } = {};
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private pingIntervalMs = 25000;
  private lastReceived = 0;
  private pingSentAt = 0;
  private notice: { code: number; reason: string; reconnect: boolean } | null = null;
  /** The server's refusal of the current attempt's token, if any. */
  private authError: HeraldError | null = null;
  /** Handshakes refused with HTTP 401 in a row (`tokenInQuery`). */
  private refusals = 0;
  private connectWaiters: Array<{ resolve(): void; reject(err: HeraldError): void }> = [];

  constructor(url: string, options: Options = {}) {
    if (typeof url !== "string" || !/^wss?:\/\//i.test(url)) {
      throw new TypeError(`Herald: url must start with ws:// or wss://, got ${String(url)}`);
    }
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError(
        "Herald: no global WebSocket here (Node 20): pass one as the WebSocket option, e.g. `import { WebSocket } from \"ws\"`",
      );
    }
    for (const k of ["minReconnectDelay", "maxReconnectDelay", "connectTimeout", "commandTimeout", "heartbeatGrace"] as const) {
      const v = options[k];
      if (v !== undefined && !(typeof v === "number" && v >= 0 && Number.isFinite(v))) {
        throw new TypeError(`Herald: ${k} must be a non-negative number of milliseconds, got ${String(v)}`);
      }
    }
    if (options.user !== undefined && (typeof options.user !== "string" || options.user === "" || /[\u0000-\u001f\u007f]/.test(options.user))) {
      throw new TypeError("Herald: user must be a non-empty string without control characters");
    }
    if (options.info !== undefined && JSON.stringify(options.info) === undefined) {
      throw new TypeError("Herald: info must be a JSON value");
    }
    for (const k of ["token", "getToken"] as const) {
      const v = options[k];
      if (v !== undefined && typeof v !== "function" && (k === "getToken" || typeof v !== "string" || v === "")) {
        throw new TypeError(`Herald: ${k} must be a non-empty string or a function returning one`);
      }
    }
    this.WS = WS;
    this.url = url;
    this.opts = {
      minReconnectDelay: 500,
      maxReconnectDelay: 20000,
      connectTimeout: 10000,
      commandTimeout: 10000,
      heartbeatGrace: 10000,
      // An option given as undefined keeps its default.
      ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Options),
    };
  }

  /** The current state. */
  get state(): State {
    return this._state;
  }

  /** The current connection's id, or null when not connected. */
  get connId(): string | null {
    return this._connId;
  }

  /** The topics this client subscribed to (whether or not currently connected). */
  get subscriptions(): string[] {
    return [...this.topics.keys()];
  }

  /**
   * The sequence number of the last message received in `topic`, or undefined if none. Kept
   * across reconnects; forgotten when the topic is left.
   */
  lastSeq(topic: string): number | undefined {
    return this.positions.get(topic)?.seq;
  }

  /** The `seq` and `epoch` of the last message received in `topic` (see {@link lastSeq}). */
  position(topic: string): Position | undefined {
    const p = this.positions.get(topic);
    return p && { ...p };
  }

  /** Listen to an event; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, listener: Listener<K>): () => void {
    let set = this.listeners[event] as Set<Listener<K>> | undefined;
    if (!set) {
      set = new Set();
      (this.listeners as Record<string, Set<Listener<K>>>)[event] = set;
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Listener<K>): void {
    (this.listeners[event] as Set<Listener<K>> | undefined)?.delete(listener);
  }

  /**
   * Start connecting (a no-op when already connecting or connected). Resolves once
   * connected; rejects if the client is closed first (by `close()` or a close code that
   * forbids reconnecting). Failed attempts are retried with backoff meanwhile.
   */
  connect(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      if (this._state === "connected") resolve();
      else this.connectWaiters.push({ resolve, reject });
    });
    if (this._state === "disconnected" || this._state === "closed") {
      this.attempt = this.refusals = 0;
      void this.open();
    }
    return done;
  }

  /** Close the connection and stop reconnecting. Subscriptions are kept for a later `connect()`. */
  close(): void {
    this.stop(1000, "client closed", new HeraldError("closed", "the client was closed"));
  }

  /**
   * Call `handler` for every message of `topic`. The topic is subscribed on the server
   * now if connected, else as soon as a connection is up, and again after every reconnect.
   */
  subscribe(topic: string, handler: Handler): Subscription {
    if (typeof topic !== "string" || topic === "") {
      throw new TypeError(`Herald.subscribe: topic must be a non-empty string, got ${JSON.stringify(topic)}`);
    }
    if (typeof handler !== "function") throw new TypeError("Herald.subscribe: handler must be a function");
    let st = this.topics.get(topic);
    const isNew = !st;
    if (!st) {
      st = { handlers: new Set(), live: false, waiters: [] };
      this.topics.set(topic, st);
    }
    const state = st;
    // The same function twice is two subscriptions: wrap it so each has its own identity.
    const own: Handler = (m) => handler(m);
    state.handlers.add(own);
    const ready = new Promise<void>((resolve, reject) => {
      if (state.live) resolve();
      else state.waiters.push({ resolve, reject });
    });
    ready.catch(() => {}); // a refusal is also reported to whoever awaits `ready`
    if (isNew && this._state === "connected") this.sendSubscribe([topic]);
    return {
      topic,
      ready,
      unsubscribe: () => {
        if (!state.handlers.delete(own) || state.handlers.size > 0) return;
        if (this.topics.get(topic) !== state) return;
        this.topics.delete(topic);
        this.positions.delete(topic);
        for (const w of state.waiters.splice(0)) w.reject(new HeraldError("unsubscribed", `unsubscribed from ${topic}`));
        if (this._state === "connected") {
          this.command({ type: "unsubscribe", topics: [topic] }).catch(() => {});
        }
      },
    };
  }

  /** Round trip of an application `ping`, in milliseconds. Needs a connection. */
  async ping(): Promise<number> {
    const start = now();
    await this.command({ type: "ping" });
    return now() - start;
  }

  // --- internals ------------------------------------------------------------------

  private emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.listeners[event] as Set<Listener<K>> | undefined;
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  private setState(next: State): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit("state", next, prev);
  }

  private async open(): Promise<void> {
    const epoch = ++this.epoch;
    this.setState("connecting");
    this.authError = null;
    let token: string | undefined;
    try {
      token = await this.fetchToken();
    } catch (err) {
      if (epoch !== this.epoch) return;
      this.emit("error", new HeraldError("token", `getToken failed: ${errText(err)}`));
      this.scheduleRetry();
      return;
    }
    if (epoch !== this.epoch) return; // closed (and maybe reopened) while the token was fetched
    const inFrame = token !== undefined && !this.opts.tokenInQuery;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.buildUrl(inFrame ? undefined : token));
    } catch (err) {
      // A malformed URL: no retry will fix it.
      this.emit("error", new HeraldError("bad_url", `cannot open ${this.url}: ${errText(err)}`));
      this.stop(1002, "bad url", new HeraldError("bad_url", errText(err)));
      return;
    }
    this.ws = ws;
    this.notice = null;
    this.connectTimer = setTimeout(() => {
      if (this.ws === ws) this.drop(ws, 4000, "connect timeout");
    }, this.opts.connectTimeout);
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.receive(ws, ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.lost(ev.code, ev.reason);
    };
    ws.onopen = () => {
      // The token as the first frame: the server answers `connected` only once it is valid.
      // With our positions: topics the token's `subscribe` claim joins recover too.
      if (this.ws === ws && inFrame) ws.send(JSON.stringify({ type: "connect", token, since: this.since() }));
    };
    ws.onerror = (ev) => {
      // Always followed by a close event, which decides what happens. A refused `?token=`
      // handshake is an HTTP 401, which only some WebSockets (Node's `ws`) let us see.
      if (this.ws === ws && token !== undefined && / 401\b/.test(String(ev?.message))) {
        this.authError = new HeraldError("unauthorized", "the server refused the token (HTTP 401)");
      }
    };
  }

  /** The token source: a string, a function, or undefined without authentication. */
  private source(): string | TokenSource | undefined {
    return this.opts.token ?? this.opts.getToken;
  }

  private async fetchToken(): Promise<string | undefined> {
    const src = this.source();
    const token = typeof src === "function" ? await src() : src;
    if (token !== undefined && (typeof token !== "string" || token === "")) {
      throw new TypeError("the token function returned no token");
    }
    return token;
  }

  private buildUrl(token: string | undefined): string {
    const params: string[] = [];
    const add = (k: string, v: string) => params.push(`${k}=${encodeURIComponent(v)}`);
    if (this.opts.user !== undefined) add("user", this.opts.user);
    if (this.opts.info !== undefined) add("info", JSON.stringify(this.opts.info));
    if (token !== undefined) add("token", token);
    if (params.length === 0) return this.url;
    return this.url + (this.url.includes("?") ? "&" : "?") + params.join("&");
  }

  private receive(ws: WebSocketLike, data: unknown): void {
    this.lastReceived = now();
    if (typeof data !== "string") return; // the server only sends text frames
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.type) {
      case "message":
        this.deliver(frame);
        return;
      case "connected":
        this.established(ws, frame);
        return;
      case "disconnect":
        this.notice = {
          code: Number(frame.code),
          reason: String(frame.reason ?? ""),
          reconnect: frame.reconnect !== false,
        };
        return;
      case "subscribed":
      case "unsubscribed":
        if (frame.server === true) {
          const topics = Array.isArray(frame.topics) ? frame.topics.map(String) : [];
          this.recover(frame, topics);
          this.emit(frame.type === "subscribed" ? "serverSubscribed" : "serverUnsubscribed", { topics });
          return;
        }
        break;
      case "refresh_required":
        void this.refresh(ws);
        return;
      case "error":
        if (typeof frame.id !== "number" || !this.pending.has(frame.id)) {
          // Our `connect` frame on a server without authentication: nothing to do.
          if (frame.code === "already_connected") return;
          const err = new HeraldError(String(frame.code), String(frame.message ?? ""));
          // Before `connected`, an error is the server refusing the token.
          if (this._state === "connecting") this.authError = err;
          this.emit("error", err);
          return;
        }
        break;
    }
    if (typeof frame.id === "number") {
      const p = this.pending.get(frame.id);
      if (!p) return;
      this.pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.type === "error") p.reject(new HeraldError(String(frame.code), String(frame.message ?? "")));
      else p.resolve(frame);
    }
  }

  private deliver(frame: Frame): void {
    const msg: Message = { topic: String(frame.topic), seq: Number(frame.seq) };
    if (typeof frame.epoch === "string") msg.epoch = frame.epoch;
    if ("data" in frame) msg.data = frame.data;
    if (typeof frame.text === "string") msg.text = frame.text;
    if (typeof frame.b64 === "string") msg.b64 = frame.b64;
    if (typeof frame.content_type === "string") msg.contentType = frame.content_type;
    this.positions.set(msg.topic, { seq: msg.seq, epoch: msg.epoch ?? "" });
    const st = this.topics.get(msg.topic);
    if (st) {
      for (const h of [...st.handlers]) {
        try {
          h(msg);
        } catch (err) {
          reportListenerError(err);
        }
      }
    }
    this.emit("message", msg);
  }

  private established(ws: WebSocketLike, frame: Frame): void {
    clearTimeout(this.connectTimer);
    this.ws = ws;
    this._connId = String(frame.conn_id);
    const interval = Number(frame.ping_interval_ms);
    this.pingIntervalMs = interval > 0 ? interval : 25000;
    this.connectedAt = now();
    this.lastReceived = this.connectedAt;
    this.pingSentAt = 0;
    const tick = Math.max(100, Math.min(this.pingIntervalMs, this.opts.heartbeatGrace) / 4);
    this.heartbeatTimer = setInterval(() => this.heartbeat(ws), tick);
    const reconnected = this.connections > 0;
    this.connections++;
    this.refusals = 0;
    this.setState("connected");
    const topics = [...this.topics.keys()];
    for (let i = 0; i < topics.length; i += TOPICS_PER_COMMAND) {
      this.sendSubscribe(topics.slice(i, i + TOPICS_PER_COMMAND));
    }
    this.emit("connected", {
      connId: this._connId,
      pingIntervalMs: this.pingIntervalMs,
      idleTimeoutMs: Number(frame.idle_timeout_ms),
      reconnected,
    });
    for (const w of this.connectWaiters.splice(0)) w.resolve();
  }

  /** `refresh_required`: get a fresh token and hand it to the server on this connection. */
  private async refresh(ws: WebSocketLike): Promise<void> {
    // A fixed token cannot be renewed: the server closes at its expiry (4004) and we stop.
    if (typeof this.source() !== "function") return;
    let token: string | undefined;
    try {
      token = await this.fetchToken();
    } catch (err) {
      // The connection lasts until the token expires; the reconnect then asks again.
      if (this.ws === ws) this.emit("error", new HeraldError("token", `getToken failed: ${errText(err)}`));
      return;
    }
    if (this.ws !== ws || token === undefined) return;
    this.command({ type: "refresh", token }).then(
      (reply) => this.emit("refreshed", { expiresAt: Number(reply.expires_at) }),
      (err: HeraldError) => {
        if (err.code !== "connection_lost" && err.code !== "closed") this.emit("error", err);
      },
    );
  }

  private heartbeat(ws: WebSocketLike): void {
    if (this.ws !== ws || this._state !== "connected") return;
    const t = now();
    if (this.pingSentAt > this.lastReceived) {
      // Our ping is out: nothing at all since then for the grace period means dead. Timed
      // from the ping, not from the last frame, so that a timer the browser delayed (a
      // background tab) does not count against the connection.
      if (t - this.pingSentAt >= this.opts.heartbeatGrace) this.drop(ws, 4000, "heartbeat timeout");
    } else if (t - this.lastReceived >= this.pingIntervalMs) {
      this.pingSentAt = t;
      this.command({ type: "ping" }).catch(() => {});
    }
  }

  /** Where the client was in each topic: the engine replays what came after, or says it cannot. */
  private since(topics: Iterable<string> = this.positions.keys()): Record<string, Position> {
    const since: Record<string, Position> = {};
    for (const t of topics) {
      const p = this.positions.get(t);
      if (p?.epoch) since[t] = p; // an engine without epochs cannot recover
    }
    return since;
  }

  /** The `recovered` and `positions` of a `subscribed` reply or push: `recovery` events. */
  private recover(frame: Frame, topics: string[]): void {
    const recovered = (frame.recovered ?? {}) as Record<string, boolean>;
    const positions = (frame.positions ?? {}) as Record<string, Position>;
    for (const t of topics) {
      const p = positions[t];
      if (!(t in recovered) || !p) continue;
      // Live messages follow p; one may already have arrived, just before the reply.
      const cur = this.positions.get(t);
      if (!cur || cur.epoch !== p.epoch || cur.seq < p.seq) this.positions.set(t, { seq: p.seq, epoch: p.epoch });
      this.emit("recovery", { topic: t, recovered: recovered[t] === true, position: { seq: p.seq, epoch: p.epoch } });
    }
  }

  private sendSubscribe(topics: string[]): void {
    this.command({ type: "subscribe", topics, since: this.since(topics) }).then(
      (reply) => {
        for (const t of topics) {
          const st = this.topics.get(t);
          if (!st) continue;
          st.live = true;
          for (const w of st.waiters.splice(0)) w.resolve();
        }
        this.recover(reply, topics.filter((t) => this.topics.has(t)));
      },
      (err: HeraldError) => {
        if (err.code === "connection_lost" || err.code === "closed") return; // redone on reconnect
        if (err.code === "timeout") {
          this.emit("error", new HeraldError("timeout", `subscribe to ${topics.join(", ")} got no reply`));
          return;
        }
        // Refused (a bad topic name, too many subscriptions). The server refuses a whole
        // command for one bad topic: ask for each topic on its own to find out which.
        if (topics.length > 1) {
          for (const t of topics) if (this.topics.has(t)) this.sendSubscribe([t]);
          return;
        }
        for (const t of topics) {
          const st = this.topics.get(t);
          if (!st) continue;
          if (st.waiters.length === 0) this.emit("error", new HeraldError(err.code, `subscribe to ${t}: ${err.message}`));
          this.topics.delete(t);
          for (const w of st.waiters.splice(0)) w.reject(err);
        }
      },
    );
  }

  private command(cmd: { type: string; topics?: string[]; since?: Record<string, Position>; token?: string }): Promise<Frame> {
    const ws = this.ws;
    if (this._state !== "connected" || !ws) {
      return Promise.reject(new HeraldError("not_connected", `cannot send ${cmd.type}: not connected`));
    }
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError("timeout", `no reply to ${cmd.type} within ${this.opts.commandTimeout} ms`));
      }, this.opts.commandTimeout);
      this.pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...cmd, id }));
      } catch (err) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new HeraldError("connection_lost", `send failed: ${errText(err)}`));
      }
    });
  }

  /** Give up on a socket from our side (timeouts) and go on as if the server had closed it. */
  private drop(ws: WebSocketLike, code: number, reason: string): void {
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this.lost(code, reason);
  }

  /** The current socket is gone: tidy up, then reconnect or stop as the close code says. */
  private lost(code: number, reason: string): void {
    const notice = this.notice;
    if (this._state === "connected" && now() - this.connectedAt >= STABLE_MS) this.attempt = 0;
    this.detach();
    const announced = notice !== null;
    if (notice) {
      code = notice.code || code;
      reason = notice.reason || reason;
    }
    let reconnect = notice ? notice.reconnect && shouldReconnect(code) : shouldReconnect(code);
    let err = this.authError;
    const src = this.source();
    const renewable = typeof src === "function";
    if (err?.code === "unauthorized") {
      // A refused `?token=` handshake: the reason is unknown (maybe only expired), so a
      // token function gets one more try; a second refusal in a row stops.
      this.emit("error", err);
      reconnect = renewable && ++this.refusals < 2;
    } else if (code === TOKEN_EXPIRED && typeof src === "string") {
      // The same fixed token would be refused again.
      reconnect = false;
      if (!err) this.emit("error", (err = new HeraldError("token_expired", "the fixed token expired")));
    }
    this.emit("disconnected", { code, reason, reconnect, announced });
    if (reconnect) {
      this.scheduleRetry();
    } else {
      this.stop(code, reason, err ?? new HeraldError(`closed`, `closed by the server: ${code} ${reason}`));
    }
  }

  private detach(): void {
    const ws = this.ws;
    this.ws = null;
    this._connId = null;
    clearTimeout(this.connectTimer);
    clearInterval(this.heartbeatTimer);
    if (ws) {
      // No-ops rather than null: some implementations (ws) throw an error event nobody listens to.
      ws.onmessage = ws.onclose = ws.onerror = ws.onopen = ignore;
    }
    for (const st of this.topics.values()) st.live = false;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError("connection_lost", "the connection ended before the reply"));
    }
  }

  private scheduleRetry(): void {
    this.attempt++;
    const delayMs = backoffDelay(this.attempt, this.opts.minReconnectDelay, this.opts.maxReconnectDelay);
    this.setState("reconnecting");
    this.emit("retry", { attempt: this.attempt, delayMs });
    this.retryTimer = setTimeout(() => {
      if (this._state === "reconnecting") void this.open();
    }, delayMs);
  }

  private stop(code: number, reason: string, err: HeraldError): void {
    this.epoch++;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    if (ws) {
      this.detach();
      try {
        ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
      } catch {
        // already closing
      }
    }
    this.setState("closed");
    for (const w of this.connectWaiters.splice(0)) w.reject(err);
  }
}

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function ignore(): void {}

/** A listener's exception must not break the client (nor the other listeners): log it. */
function reportListenerError(err: unknown): void {
  console.error("Herald: a listener threw", err);
}
