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
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
export declare class ShardcastError extends Error {
    /** `rate_limited`, `redis_unavailable`, `forbidden`, `too_many_rooms`, `disconnected`, ... */
    readonly code: string;
    constructor(code: string, message?: string);
}
interface Events {
    state: (s: State) => void;
    welcome: (w: {
        sessionId: string;
        count: number;
        resumed: boolean;
        recovered?: boolean;
    }) => void;
    broadcast: (b: Broadcast) => void;
    unrecovered: (u: Unrecovered) => void;
    bye: (b: {
        reason?: string;
        total: number;
        retryAfterMs?: number;
    }) => void;
    /** The socket closed (the client reconnects unless `close` was called). */
    close: (c: {
        code: number;
        reason: string;
    }) => void;
    /** A token refresh was accepted; `exp` is the new token's, in Unix seconds. */
    refreshed: (r: {
        exp?: number;
    }) => void;
    error: (e: ShardcastError) => void;
}
/** The `exp` claim of a JWT, in ms, if it has one. */
export declare function tokenExpiry(token: string): number | undefined;
/** A backoff delay: full jitter over an exponential cap. */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;
/** A shardcast connection that stays one session through reconnects. */
export declare class Client {
    private readonly opts;
    private readonly WS;
    private ws;
    private st;
    private sid;
    private cnt;
    /** The newest position of the global channel. */
    private position;
    private readonly rooms;
    private pending;
    private welcomed;
    private attempt;
    private retryAfter;
    private timers;
    private token;
    private readonly listeners;
    constructor(options: ClientOptions);
    /** The session's id once welcomed: keep it to resume in a later page. */
    get sessionId(): string | undefined;
    /** The session's count as the server last said it. */
    get count(): number;
    get state(): State;
    /** Listens for an event; returns a function that stops listening. */
    on<K extends keyof Events>(event: K, fn: Events[K]): () => void;
    /** Connects (and keeps reconnecting until `close`). */
    connect(): void;
    /** Closes for good: no reconnect. Pending sends are rejected. */
    close(): void;
    /**
     * Sends a text message, which the server counts; resolves with the new
     * count. Rejects with `rate_limited`, `redis_unavailable` (not counted:
     * send it again), or `disconnected` (the connection was lost first: it
     * may or may not have been counted; the next welcome's count tells).
     */
    send(text: string): Promise<Count>;
    /**
     * Joins a room; its broadcasts go to `handlers`. Resolves once the
     * server has the socket in it; rejects with `forbidden`,
     * `too_many_rooms`, `invalid_room`. The room is joined again after every
     * reconnect, from the newest position the client had there, so what was
     * missed comes first. Joining while disconnected resolves at the next
     * connect.
     */
    join(room: string, handlers?: RoomHandlers): Promise<void>;
    /** Leaves a room: its handlers get nothing more. */
    leave(room: string): Promise<void>;
    /**
     * Sends a new token for the open socket now (the same subject, allowing
     * every room the client is in); resolves once the server took it.
     * Rejects with the refusal: the server then closes the socket (4001).
     */
    refresh(token: string): Promise<{
        exp?: number;
    }>;
    /**
     * Forgets the session, and every position: the next connect starts a
     * fresh session, with nothing to recover.
     */
    forgetSession(): void;
    /** The rooms the client is in, or will join at its next connect. */
    get joinedRooms(): string[];
    private isReady;
    private open;
    private url;
    private onFrame;
    private onWelcome;
    private onBroadcast;
    private onJoined;
    /** The answer to the oldest request: answers come in the order asked. */
    private onReply;
    private sendJoin;
    /** A control frame: a binary message holding one JSON object. */
    private command;
    private onClose;
    /** The connection is gone: wait as the server asked, or back off. */
    private lost;
    /** Silence for deadAfterMs (no heartbeat, nothing) ends the connection. */
    private armDead;
    private onCloseDead;
    /** Schedules the token's refresh before its `exp`. */
    private armRefresh;
    private failPending;
    private clearTimers;
    private setState;
    private emit;
}
export {};
