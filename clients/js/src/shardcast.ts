// The shardcast client: one socket to a shardcast server that stays one
// session through reconnects. It resumes the session (its id), recovers the
// broadcasts missed while away (the newest position of the global channel
// and of each room), joins its rooms again, waits out a drain as the server
// asks (retry_after_ms) and any other loss with jittered backoff, takes a
// silent connection for dead after missed heartbeats, and refreshes its
// token before it expires. No dependencies: the platform's WebSocket
// (browsers, Node 22+, or one passed in).

/** The token, or a function that gives the current one (called at every connect). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** The server's WebSocket endpoint, e.g. `wss://chat.example/ws/chat/`. */
  url: string;
  /** With `auth_secret` on the server: the token for each connect. */
  token?: TokenSource;
  /**
   * Called before the token expires (its `exp` claim, less
   * `refreshBeforeMs`); the new token is sent on the open socket. Without
   * it, a socket whose token expires is closed by the server, and the next
   * connect asks `token` again.
   */
  refreshToken?: () => string | Promise<string>;
  /** How long before `exp` to refresh. Default 30 s. */
  refreshBeforeMs?: number;
  /** A session id to resume at the first connect (kept from an earlier page). */
  sessionId?: string;
  /** The server's `heartbeat_interval`. Default 30 s. */
  heartbeatIntervalMs?: number;
  /** Silence after which the connection is taken for dead. Default 2.5 heartbeats. */
  deadAfterMs?: number;
  /** The first backoff after a lost connection. Default 500 ms. */
  backoffMinMs?: number;
  /** The longest backoff. Default 30 s. */
  backoffMaxMs?: number;
  /** The WebSocket class. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketClass;
}

/** What the client needs of a WebSocket class (the platform's one fits). */
export interface WebSocketClass {
  new (url: string): WebSocketLike;
}

/** What the client needs of a WebSocket. */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** Where the client is. */
export type State = "connecting" | "open" | "waiting" | "closed";

/** A broadcast as the server sent it. */
export interface Broadcast {
  /** The message. */
  text: string;
  /** The room, for a room's broadcast. */
  room?: string;
  /** Its offset in its channel, with history on. */
  offset?: string;
  /** True when it was recovered (published while the client was away). */
  recovered: boolean;
}

/** A member of a room, as presence frames name it. */
export interface Member {
  session_id: string;
  sub?: string;
}

/** Who joined and left a room (rooms the server announces presence for). */
export interface PresenceChange {
  joins: Member[];
  leaves: Member[];
}

/**
 * Broadcasts of a channel were lost and cannot be recovered: `reason` says
 * why (`epoch_changed`, `trimmed`, `unavailable`, `overflow`, `rewound`).
 * Refetch that channel's state from your own backend.
 */
export interface Unrecovered {
  reason: string;
  room?: string;
}

/** The answer to a counted message. */
export interface Count {
  count: number;
  /** False when the server counted it but Redis has not confirmed it yet. */
  confirmed: boolean;
}

/** A room's handlers. */
export interface RoomHandlers {
  onMessage?: (b: Broadcast) => void;
  onUnrecovered?: (u: Unrecovered) => void;
  onPresence?: (p: PresenceChange) => void;
}

/** A refusal or loss, as an Error with the server's code. */
export class ShardcastError extends Error {
  /** `rate_limited`, `redis_unavailable`, `forbidden`, `too_many_rooms`, `disconnected`, ... */
  readonly code: string;
  constructor(code: string, message?: string) {
    super(message ?? code);
    this.name = "ShardcastError";
    this.code = code;
  }
}

interface Events {
  state: (s: State) => void;
  welcome: (w: { sessionId: string; count: number; resumed: boolean; recovered?: boolean }) => void;
  broadcast: (b: Broadcast) => void;
  unrecovered: (u: Unrecovered) => void;
  bye: (b: { reason?: string; total: number; retryAfterMs?: number }) => void;
  /** The socket closed (the client reconnects unless `close` was called). */
  close: (c: { code: number; reason: string }) => void;
  /** A token refresh was accepted; `exp` is the new token's, in Unix seconds. */
  refreshed: (r: { exp?: number }) => void;
  error: (e: ShardcastError) => void;
}

type Pending =
  | { kind: "text"; resolve: (c: Count) => void; reject: (e: Error) => void }
  | { kind: "join"; room: string; resolve: () => void; reject: (e: Error) => void }
  | { kind: "leave"; room: string; resolve: () => void; reject: (e: Error) => void }
  | { kind: "refresh"; resolve: (r: { exp?: number }) => void; reject: (e: Error) => void };

interface Room {
  handlers: RoomHandlers;
  /** The newest position the server gave for this room. */
  position?: string;
  /** The server has said `joined` on the current connection. */
  joined: boolean;
  /** Joins waiting for that. */
  waiting: Array<{ resolve: () => void; reject: (e: Error) => void }>;
}

const OPEN = 1;

/** The `exp` claim of a JWT, in ms, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** A backoff delay: full jitter over an exponential cap. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random = Math.random): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
  return Math.round(minMs / 2 + random() * (cap - minMs / 2));
}

/** A shardcast connection that stays one session through reconnects. */
export class Client {
  private readonly opts: Required<Omit<ClientOptions, "token" | "refreshToken" | "sessionId" | "WebSocket">> &
    Pick<ClientOptions, "token" | "refreshToken">;
  private readonly WS: WebSocketClass;
  private ws: WebSocketLike | null = null;
  private st: State = "closed";
  private sid: string | undefined;
  private cnt = 0;
  /** The newest position of the global channel. */
  private position: string | undefined;
  private readonly rooms = new Map<string, Room>();
  private pending: Pending[] = [];
  private welcomed = false;
  private attempt = 0;
  private retryAfter: number | undefined;
  private timers: { reconnect?: ReturnType<typeof setTimeout>; dead?: ReturnType<typeof setTimeout>; refresh?: ReturnType<typeof setTimeout> } = {};
  private token: string | undefined;
  private readonly listeners: { [K in keyof Events]: Set<Events[K]> } = {
    state: new Set(),
    welcome: new Set(),
    broadcast: new Set(),
    unrecovered: new Set(),
    bye: new Set(),
    error: new Set(),
    close: new Set(),
    refreshed: new Set(),
  };

  constructor(options: ClientOptions) {
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
    if (!ws) throw new ShardcastError("no_websocket", "no WebSocket class: pass options.WebSocket");
    this.WS = ws;
    const heartbeat = options.heartbeatIntervalMs ?? 30_000;
    this.opts = {
      url: options.url,
      token: options.token,
      refreshToken: options.refreshToken,
      refreshBeforeMs: options.refreshBeforeMs ?? 30_000,
      heartbeatIntervalMs: heartbeat,
      deadAfterMs: options.deadAfterMs ?? Math.round(heartbeat * 2.5),
      backoffMinMs: options.backoffMinMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? 30_000,
    };
    this.sid = options.sessionId;
  }

  /** The session's id once welcomed: keep it to resume in a later page. */
  get sessionId(): string | undefined {
    return this.sid;
  }

  /** The session's count as the server last said it. */
  get count(): number {
    return this.cnt;
  }

  get state(): State {
    return this.st;
  }

  /** Listens for an event; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    this.listeners[event].add(fn);
    return () => this.listeners[event].delete(fn);
  }

  /** Connects (and keeps reconnecting until `close`). */
  connect(): void {
    if (this.st !== "closed") return;
    this.open();
  }

  /** Closes for good: no reconnect. Pending sends are rejected. */
  close(): void {
    this.clearTimers();
    this.setState("closed");
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= OPEN) ws.close(1000, "client closed");
    this.failPending("closed");
  }

  /**
   * Sends a text message, which the server counts; resolves with the new
   * count. Rejects with `rate_limited`, `redis_unavailable` (not counted:
   * send it again), or `disconnected` (the connection was lost first: it
   * may or may not have been counted; the next welcome's count tells).
   */
  send(text: string): Promise<Count> {
    return new Promise((resolve, reject) => {
      if (!this.isReady()) {
        reject(new ShardcastError("disconnected", "not connected"));
        return;
      }
      this.pending.push({ kind: "text", resolve, reject });
      this.ws!.send(text);
    });
  }

  /**
   * Joins a room; its broadcasts go to `handlers`. Resolves once the
   * server has the socket in it; rejects with `forbidden`,
   * `too_many_rooms`, `invalid_room`. The room is joined again after every
   * reconnect, from the newest position the client had there, so what was
   * missed comes first. Joining while disconnected resolves at the next
   * connect.
   */
  join(room: string, handlers: RoomHandlers = {}): Promise<void> {
    let r = this.rooms.get(room);
    if (!r) {
      r = { handlers, joined: false, waiting: [] };
      this.rooms.set(room, r);
    } else {
      r.handlers = handlers;
    }
    const entry = r;
    return new Promise((resolve, reject) => {
      if (entry.joined) {
        resolve();
        return;
      }
      entry.waiting.push({ resolve, reject });
      if (this.isReady()) this.sendJoin(room);
    });
  }

  /** Leaves a room: its handlers get nothing more. */
  leave(room: string): Promise<void> {
    const had = this.rooms.delete(room);
    return new Promise((resolve, reject) => {
      if (!had || !this.isReady()) {
        resolve();
        return;
      }
      this.pending.push({ kind: "leave", room, resolve, reject });
      this.command({ leave: room });
    });
  }

  /**
   * Sends a new token for the open socket now (the same subject, allowing
   * every room the client is in); resolves once the server took it.
   * Rejects with the refusal: the server then closes the socket (4001).
   */
  refresh(token: string): Promise<{ exp?: number }> {
    return new Promise((resolve, reject) => {
      if (!this.isReady()) {
        reject(new ShardcastError("disconnected", "not connected"));
        return;
      }
      this.token = token;
      this.pending.push({ kind: "refresh", resolve, reject });
      this.command({ refresh: token });
    });
  }

  /**
   * Forgets the session, and every position: the next connect starts a
   * fresh session, with nothing to recover.
   */
  forgetSession(): void {
    this.sid = undefined;
    this.position = undefined;
    for (const r of this.rooms.values()) r.position = undefined;
  }

  /** The rooms the client is in, or will join at its next connect. */
  get joinedRooms(): string[] {
    return [...this.rooms.keys()];
  }

  // -- the connection ------------------------------------------------------

  private isReady(): boolean {
    return this.welcomed && this.ws !== null && this.ws.readyState === OPEN;
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    this.welcomed = false;
    let url: string;
    try {
      url = await this.url();
    } catch (e) {
      this.emit("error", new ShardcastError("token", `the token source failed: ${e}`));
      this.lost();
      return;
    }
    if (this.st !== "connecting") return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (e) {
      this.emit("error", new ShardcastError("connect", String(e)));
      this.lost();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws === ws && typeof ev.data === "string") this.onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {};
    this.armDead();
  }

  private async url(): Promise<string> {
    const q: string[] = [];
    if (this.sid) q.push("session_id=" + encodeURIComponent(this.sid));
    const src = this.opts.token;
    if (src !== undefined) {
      const t = typeof src === "string" ? src : await src();
      // An empty token is none (a server without auth_secret needs none).
      this.token = t || undefined;
      if (this.token) q.push("token=" + encodeURIComponent(this.token));
    }
    // The global channel's newest position, then each room's: the server
    // reads each channel from the first token that names it.
    if (this.position) q.push("position=" + encodeURIComponent(this.position));
    for (const r of this.rooms.values()) {
      if (r.position) q.push("position=" + encodeURIComponent(r.position));
    }
    const base = this.opts.url;
    return q.length === 0 ? base : base + (base.includes("?") ? "&" : "?") + q.join("&");
  }

  private onFrame(data: string): void {
    this.armDead();
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof m.session_id === "string" && typeof m.count === "number") {
      this.onWelcome(m);
    } else if (typeof m.ts === "string") {
      // A heartbeat: the connection is alive, which armDead noted.
    } else if (typeof m.broadcast === "string") {
      this.onBroadcast(m);
    } else if (m.presence && typeof m.room === "string") {
      const p = m.presence as PresenceChange;
      this.rooms.get(m.room)?.handlers.onPresence?.({ joins: p.joins ?? [], leaves: p.leaves ?? [] });
    } else if (m.unrecovered && typeof m.unrecovered === "object") {
      const u = m.unrecovered as Unrecovered;
      if (u.room !== undefined) this.rooms.get(u.room)?.handlers.onUnrecovered?.(u);
      this.emit("unrecovered", u);
    } else if (m.bye === true) {
      const retry = typeof m.retry_after_ms === "number" ? m.retry_after_ms : undefined;
      if (m.reason === "shutdown") this.retryAfter = retry;
      this.emit("bye", { reason: m.reason as string | undefined, total: m.total as number, retryAfterMs: retry });
    } else if (typeof m.joined === "string" && m.restored === true) {
      // A room of the session, joined again by the server at a resume.
      this.onJoined(m.joined, m, true);
    } else {
      this.onReply(m);
    }
  }

  private onWelcome(m: Record<string, unknown>): void {
    this.sid = m.session_id as string;
    this.cnt = m.count as number;
    if (typeof m.position === "string") this.position = m.position;
    this.welcomed = true;
    this.attempt = 0;
    this.retryAfter = undefined;
    for (const r of this.rooms.values()) r.joined = false;
    this.setState("open");
    this.emit("welcome", {
      sessionId: this.sid,
      count: this.cnt,
      resumed: m.resumed === true,
      recovered: typeof m.recovered === "boolean" ? m.recovered : undefined,
    });
    // Every room the client is in, from its newest position; a room the
    // server joined again already answers with its position and no more.
    for (const room of this.rooms.keys()) this.sendJoin(room);
    this.armRefresh();
  }

  private onBroadcast(m: Record<string, unknown>): void {
    const b: Broadcast = {
      text: m.broadcast as string,
      recovered: m.recovered === true,
    };
    if (typeof m.offset === "string") b.offset = m.offset;
    if (typeof m.room === "string") {
      b.room = m.room;
      const r = this.rooms.get(m.room);
      if (!r) return;
      if (typeof m.position === "string") r.position = m.position;
      r.handlers.onMessage?.(b);
      return;
    }
    if (typeof m.position === "string") this.position = m.position;
    this.emit("broadcast", b);
  }

  private onJoined(room: string, m: Record<string, unknown>, unasked: boolean): void {
    const r = this.rooms.get(room);
    if (!r) {
      // The session was in a room this client has left since: leave it.
      if (unasked) {
        this.pending.push({ kind: "leave", room, resolve: () => {}, reject: () => {} });
        this.command({ leave: room });
      }
      return;
    }
    if (typeof m.position === "string") r.position = m.position;
    r.joined = true;
    for (const w of r.waiting.splice(0)) w.resolve();
  }

  /** The answer to the oldest request: answers come in the order asked. */
  private onReply(m: Record<string, unknown>): void {
    const p = this.pending.shift();
    if (!p) return;
    const error = typeof m.error === "string" ? new ShardcastError(m.error, (m.reason as string) ?? m.error) : undefined;
    switch (p.kind) {
      case "text":
        if (error) p.reject(error);
        else {
          this.cnt = m.count as number;
          p.resolve({ count: this.cnt, confirmed: m.confirmed !== false });
        }
        return;
      case "join":
        if (error) {
          // A refused join leaves the client out of the room.
          const r = this.rooms.get(p.room);
          this.rooms.delete(p.room);
          for (const w of r?.waiting.splice(0) ?? []) w.reject(error);
          this.emit("error", error);
        } else this.onJoined(p.room, m, false);
        return;
      case "leave":
        if (error) p.reject(error);
        else p.resolve();
        return;
      case "refresh":
        if (error) {
          p.reject(error);
          if (error.code !== "auth_off") this.emit("error", error);
        } else {
          const r = typeof m.exp === "number" ? { exp: m.exp } : {};
          p.resolve(r);
          this.emit("refreshed", r);
          this.armRefresh();
        }
        return;
    }
  }

  private sendJoin(room: string): void {
    const r = this.rooms.get(room);
    if (!r) return;
    const cmd: Record<string, string> = { join: room };
    if (r.position) cmd.position = r.position;
    this.pending.push({
      kind: "join",
      room,
      resolve: () => {},
      reject: () => {},
    });
    this.command(cmd);
  }

  /** A control frame: a binary message holding one JSON object. */
  private command(cmd: Record<string, string>): void {
    this.ws?.send(new TextEncoder().encode(JSON.stringify(cmd)));
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    this.emit("close", { code, reason });
    this.welcomed = false;
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.refresh);
    this.failPending("disconnected");
    if (this.st === "closed") return;
    if (code === 1008 && reason === "session deleted") {
      // The session is gone for good: the next connect starts a fresh one.
      this.sid = undefined;
      this.position = undefined;
      for (const r of this.rooms.values()) r.position = undefined;
    }
    this.lost();
  }

  /** The connection is gone: wait as the server asked, or back off. */
  private lost(): void {
    if (this.st === "closed") return;
    this.setState("waiting");
    const delay =
      this.retryAfter ?? backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs);
    this.retryAfter = undefined;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => {
      if (this.st === "waiting") void this.open();
    }, delay);
  }

  /** Silence for deadAfterMs (no heartbeat, nothing) ends the connection. */
  private armDead(): void {
    clearTimeout(this.timers.dead);
    const ws = this.ws;
    this.timers.dead = setTimeout(() => {
      if (this.ws !== ws || !ws) return;
      this.ws = null;
      ws.onclose = null;
      ws.close(4000, "no heartbeat");
      this.onCloseDead();
    }, this.opts.deadAfterMs);
  }

  private onCloseDead(): void {
    this.welcomed = false;
    clearTimeout(this.timers.refresh);
    this.failPending("disconnected");
    this.lost();
  }

  /** Schedules the token's refresh before its `exp`. */
  private armRefresh(): void {
    clearTimeout(this.timers.refresh);
    const refresh = this.opts.refreshToken;
    const exp = this.token ? tokenExpiry(this.token) : undefined;
    if (!refresh || exp === undefined) return;
    const ws = this.ws;
    const due = Math.max(0, exp - this.opts.refreshBeforeMs - Date.now());
    this.timers.refresh = setTimeout(async () => {
      let t: string;
      try {
        t = await refresh();
      } catch (e) {
        this.emit("error", new ShardcastError("token", `refreshToken failed: ${e}`));
        return;
      }
      if (this.ws !== ws || !this.isReady()) return;
      // A refusal ends the socket (4001), and the next connect asks `token`.
      this.refresh(t).catch(() => {});
    }, due);
  }

  private failPending(code: string): void {
    const err = new ShardcastError(code);
    for (const p of this.pending.splice(0)) {
      if (p.kind !== "join") p.reject(err);
    }
  }

  private clearTimers(): void {
    clearTimeout(this.timers.reconnect);
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.refresh);
  }

  private setState(s: State): void {
    if (this.st === s) return;
    this.st = s;
    this.emit("state", s);
  }

  private emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    for (const fn of this.listeners[event]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (e) {
        console.error("shardcast: a listener threw", e);
      }
    }
  }
}
