// The shardcast client: one socket to a shardcast server that stays one
// session through reconnects. It resumes the session (its id), recovers the
// broadcasts missed while away (the newest position of the global channel
// and of each room), joins its rooms again, waits out a drain as the server
// asks (retry_after_ms) and any other loss with jittered backoff, takes a
// silent connection for dead after missed heartbeats, and refreshes its
// token before it expires. No dependencies: the platform's WebSocket
// (browsers, Node 22+, or one passed in).
/** A refusal or loss, as an Error with the server's code. */
export class ShardcastError extends Error {
    constructor(code, message) {
        super(message ?? code);
        this.name = "ShardcastError";
        this.code = code;
    }
}
const OPEN = 1;
/** The `exp` claim of a JWT, in ms, if it has one. */
export function tokenExpiry(token) {
    const part = token.split(".")[1];
    if (!part)
        return undefined;
    try {
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
        return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
/** A backoff delay: full jitter over an exponential cap. */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
    const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
    return Math.round(minMs / 2 + random() * (cap - minMs / 2));
}
/** A shardcast connection that stays one session through reconnects. */
export class Client {
    constructor(options) {
        this.ws = null;
        this.st = "closed";
        this.cnt = 0;
        this.rooms = new Map();
        this.pending = [];
        this.welcomed = false;
        this.attempt = 0;
        this.timers = {};
        this.listeners = {
            state: new Set(),
            welcome: new Set(),
            broadcast: new Set(),
            unrecovered: new Set(),
            bye: new Set(),
            error: new Set(),
            close: new Set(),
            refreshed: new Set(),
        };
        const ws = options.WebSocket ?? globalThis.WebSocket;
        if (!ws)
            throw new ShardcastError("no_websocket", "no WebSocket class: pass options.WebSocket");
        this.WS = ws;
        const heartbeat = options.heartbeatIntervalMs ?? 30000;
        this.opts = {
            url: options.url,
            token: options.token,
            refreshToken: options.refreshToken,
            refreshBeforeMs: options.refreshBeforeMs ?? 30000,
            heartbeatIntervalMs: heartbeat,
            deadAfterMs: options.deadAfterMs ?? Math.round(heartbeat * 2.5),
            backoffMinMs: options.backoffMinMs ?? 500,
            backoffMaxMs: options.backoffMaxMs ?? 30000,
        };
        this.sid = options.sessionId;
    }
    /** The session's id once welcomed: keep it to resume in a later page. */
    get sessionId() {
        return this.sid;
    }
    /** The session's count as the server last said it. */
    get count() {
        return this.cnt;
    }
    get state() {
        return this.st;
    }
    /** Listens for an event; returns a function that stops listening. */
    on(event, fn) {
        this.listeners[event].add(fn);
        return () => this.listeners[event].delete(fn);
    }
    /** Connects (and keeps reconnecting until `close`). */
    connect() {
        if (this.st !== "closed")
            return;
        this.open();
    }
    /** Closes for good: no reconnect. Pending sends are rejected. */
    close() {
        this.clearTimers();
        this.setState("closed");
        const ws = this.ws;
        this.ws = null;
        if (ws && ws.readyState <= OPEN)
            ws.close(1000, "client closed");
        this.failPending("closed");
    }
    /**
     * Sends a text message, which the server counts; resolves with the new
     * count. Rejects with `rate_limited`, `redis_unavailable` (not counted:
     * send it again), or `disconnected` (the connection was lost first: it
     * may or may not have been counted; the next welcome's count tells).
     */
    send(text) {
        return new Promise((resolve, reject) => {
            if (!this.isReady()) {
                reject(new ShardcastError("disconnected", "not connected"));
                return;
            }
            this.pending.push({ kind: "text", resolve, reject });
            this.ws.send(text);
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
    join(room, handlers = {}) {
        let r = this.rooms.get(room);
        if (!r) {
            r = { handlers, joined: false, waiting: [] };
            this.rooms.set(room, r);
        }
        else {
            r.handlers = handlers;
        }
        const entry = r;
        return new Promise((resolve, reject) => {
            if (entry.joined) {
                resolve();
                return;
            }
            entry.waiting.push({ resolve, reject });
            if (this.isReady())
                this.sendJoin(room);
        });
    }
    /** Leaves a room: its handlers get nothing more. */
    leave(room) {
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
    refresh(token) {
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
    forgetSession() {
        this.sid = undefined;
        this.position = undefined;
        for (const r of this.rooms.values())
            r.position = undefined;
    }
    /** The rooms the client is in, or will join at its next connect. */
    get joinedRooms() {
        return [...this.rooms.keys()];
    }
    // -- the connection ------------------------------------------------------
    isReady() {
        return this.welcomed && this.ws !== null && this.ws.readyState === OPEN;
    }
    async open() {
        this.setState("connecting");
        this.welcomed = false;
        let url;
        try {
            url = await this.url();
        }
        catch (e) {
            this.emit("error", new ShardcastError("token", `the token source failed: ${e}`));
            this.lost();
            return;
        }
        if (this.st !== "connecting")
            return;
        let ws;
        try {
            ws = new this.WS(url);
        }
        catch (e) {
            this.emit("error", new ShardcastError("connect", String(e)));
            this.lost();
            return;
        }
        ws.binaryType = "arraybuffer";
        this.ws = ws;
        ws.onmessage = (ev) => {
            if (this.ws === ws && typeof ev.data === "string")
                this.onFrame(ev.data);
        };
        ws.onclose = (ev) => {
            if (this.ws === ws)
                this.onClose(ev.code, ev.reason);
        };
        ws.onerror = () => { };
        this.armDead();
    }
    async url() {
        const q = [];
        if (this.sid)
            q.push("session_id=" + encodeURIComponent(this.sid));
        const src = this.opts.token;
        if (src !== undefined) {
            const t = typeof src === "string" ? src : await src();
            // An empty token is none (a server without auth_secret needs none).
            this.token = t || undefined;
            if (this.token)
                q.push("token=" + encodeURIComponent(this.token));
        }
        // The global channel's newest position, then each room's: the server
        // reads each channel from the first token that names it.
        if (this.position)
            q.push("position=" + encodeURIComponent(this.position));
        for (const r of this.rooms.values()) {
            if (r.position)
                q.push("position=" + encodeURIComponent(r.position));
        }
        const base = this.opts.url;
        return q.length === 0 ? base : base + (base.includes("?") ? "&" : "?") + q.join("&");
    }
    onFrame(data) {
        this.armDead();
        let m;
        try {
            m = JSON.parse(data);
        }
        catch {
            return;
        }
        if (typeof m.session_id === "string" && typeof m.count === "number") {
            this.onWelcome(m);
        }
        else if (typeof m.ts === "string") {
            // A heartbeat: the connection is alive, which armDead noted.
        }
        else if (typeof m.broadcast === "string") {
            this.onBroadcast(m);
        }
        else if (m.presence && typeof m.room === "string") {
            const p = m.presence;
            this.rooms.get(m.room)?.handlers.onPresence?.({ joins: p.joins ?? [], leaves: p.leaves ?? [] });
        }
        else if (m.unrecovered && typeof m.unrecovered === "object") {
            const u = m.unrecovered;
            if (u.room !== undefined)
                this.rooms.get(u.room)?.handlers.onUnrecovered?.(u);
            this.emit("unrecovered", u);
        }
        else if (m.bye === true) {
            const retry = typeof m.retry_after_ms === "number" ? m.retry_after_ms : undefined;
            if (m.reason === "shutdown")
                this.retryAfter = retry;
            this.emit("bye", { reason: m.reason, total: m.total, retryAfterMs: retry });
        }
        else if (typeof m.joined === "string" && m.restored === true) {
            // A room of the session, joined again by the server at a resume.
            this.onJoined(m.joined, m, true);
        }
        else {
            this.onReply(m);
        }
    }
    onWelcome(m) {
        this.sid = m.session_id;
        this.cnt = m.count;
        if (typeof m.position === "string")
            this.position = m.position;
        this.welcomed = true;
        this.attempt = 0;
        this.retryAfter = undefined;
        for (const r of this.rooms.values())
            r.joined = false;
        this.setState("open");
        this.emit("welcome", {
            sessionId: this.sid,
            count: this.cnt,
            resumed: m.resumed === true,
            recovered: typeof m.recovered === "boolean" ? m.recovered : undefined,
        });
        // Every room the client is in, from its newest position; a room the
        // server joined again already answers with its position and no more.
        for (const room of this.rooms.keys())
            this.sendJoin(room);
        this.armRefresh();
    }
    onBroadcast(m) {
        const b = {
            text: m.broadcast,
            recovered: m.recovered === true,
        };
        if (typeof m.offset === "string")
            b.offset = m.offset;
        if (typeof m.room === "string") {
            b.room = m.room;
            const r = this.rooms.get(m.room);
            if (!r)
                return;
            if (typeof m.position === "string")
                r.position = m.position;
            r.handlers.onMessage?.(b);
            return;
        }
        if (typeof m.position === "string")
            this.position = m.position;
        this.emit("broadcast", b);
    }
    onJoined(room, m, unasked) {
        const r = this.rooms.get(room);
        if (!r) {
            // The session was in a room this client has left since: leave it.
            if (unasked) {
                this.pending.push({ kind: "leave", room, resolve: () => { }, reject: () => { } });
                this.command({ leave: room });
            }
            return;
        }
        if (typeof m.position === "string")
            r.position = m.position;
        r.joined = true;
        for (const w of r.waiting.splice(0))
            w.resolve();
    }
    /** The answer to the oldest request: answers come in the order asked. */
    onReply(m) {
        const p = this.pending.shift();
        if (!p)
            return;
        const error = typeof m.error === "string" ? new ShardcastError(m.error, m.reason ?? m.error) : undefined;
        switch (p.kind) {
            case "text":
                if (error)
                    p.reject(error);
                else {
                    this.cnt = m.count;
                    p.resolve({ count: this.cnt, confirmed: m.confirmed !== false });
                }
                return;
            case "join":
                if (error) {
                    // A refused join leaves the client out of the room.
                    const r = this.rooms.get(p.room);
                    this.rooms.delete(p.room);
                    for (const w of r?.waiting.splice(0) ?? [])
                        w.reject(error);
                    this.emit("error", error);
                }
                else
                    this.onJoined(p.room, m, false);
                return;
            case "leave":
                if (error)
                    p.reject(error);
                else
                    p.resolve();
                return;
            case "refresh":
                if (error) {
                    p.reject(error);
                    if (error.code !== "auth_off")
                        this.emit("error", error);
                }
                else {
                    const r = typeof m.exp === "number" ? { exp: m.exp } : {};
                    p.resolve(r);
                    this.emit("refreshed", r);
                    this.armRefresh();
                }
                return;
        }
    }
    sendJoin(room) {
        const r = this.rooms.get(room);
        if (!r)
            return;
        const cmd = { join: room };
        if (r.position)
            cmd.position = r.position;
        this.pending.push({
            kind: "join",
            room,
            resolve: () => { },
            reject: () => { },
        });
        this.command(cmd);
    }
    /** A control frame: a binary message holding one JSON object. */
    command(cmd) {
        this.ws?.send(new TextEncoder().encode(JSON.stringify(cmd)));
    }
    onClose(code, reason) {
        this.ws = null;
        this.emit("close", { code, reason });
        this.welcomed = false;
        clearTimeout(this.timers.dead);
        clearTimeout(this.timers.refresh);
        this.failPending("disconnected");
        if (this.st === "closed")
            return;
        if (code === 1008 && reason === "session deleted") {
            // The session is gone for good: the next connect starts a fresh one.
            this.sid = undefined;
            this.position = undefined;
            for (const r of this.rooms.values())
                r.position = undefined;
        }
        this.lost();
    }
    /** The connection is gone: wait as the server asked, or back off. */
    lost() {
        if (this.st === "closed")
            return;
        this.setState("waiting");
        const delay = this.retryAfter ?? backoffDelay(this.attempt++, this.opts.backoffMinMs, this.opts.backoffMaxMs);
        this.retryAfter = undefined;
        clearTimeout(this.timers.reconnect);
        this.timers.reconnect = setTimeout(() => {
            if (this.st === "waiting")
                void this.open();
        }, delay);
    }
    /** Silence for deadAfterMs (no heartbeat, nothing) ends the connection. */
    armDead() {
        clearTimeout(this.timers.dead);
        const ws = this.ws;
        this.timers.dead = setTimeout(() => {
            if (this.ws !== ws || !ws)
                return;
            this.ws = null;
            ws.onclose = null;
            ws.close(4000, "no heartbeat");
            this.onCloseDead();
        }, this.opts.deadAfterMs);
    }
    onCloseDead() {
        this.welcomed = false;
        clearTimeout(this.timers.refresh);
        this.failPending("disconnected");
        this.lost();
    }
    /** Schedules the token's refresh before its `exp`. */
    armRefresh() {
        clearTimeout(this.timers.refresh);
        const refresh = this.opts.refreshToken;
        const exp = this.token ? tokenExpiry(this.token) : undefined;
        if (!refresh || exp === undefined)
            return;
        const ws = this.ws;
        const due = Math.max(0, exp - this.opts.refreshBeforeMs - Date.now());
        this.timers.refresh = setTimeout(async () => {
            let t;
            try {
                t = await refresh();
            }
            catch (e) {
                this.emit("error", new ShardcastError("token", `refreshToken failed: ${e}`));
                return;
            }
            if (this.ws !== ws || !this.isReady())
                return;
            // A refusal ends the socket (4001), and the next connect asks `token`.
            this.refresh(t).catch(() => { });
        }, due);
    }
    failPending(code) {
        const err = new ShardcastError(code);
        for (const p of this.pending.splice(0)) {
            if (p.kind !== "join")
                p.reject(err);
        }
    }
    clearTimers() {
        clearTimeout(this.timers.reconnect);
        clearTimeout(this.timers.dead);
        clearTimeout(this.timers.refresh);
    }
    setState(s) {
        if (this.st === s)
            return;
        this.st = s;
        this.emit("state", s);
    }
    emit(event, ...args) {
        for (const fn of this.listeners[event]) {
            try {
                fn(...args);
            }
            catch (e) {
                console.error("shardcast: a listener threw", e);
            }
        }
    }
}
