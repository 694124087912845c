//! One WebSocket's life: upgrade, welcome, the count loop, and the goodbye.
//!
//! The task waits on two things at once: the socket's next bytes and its
//! mailbox (heartbeats, broadcasts, drain, kick). glommio's non-buffered
//! `read` keeps its readiness state in the stream, not in the future, so
//! dropping a read that lost the race loses no data.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::Durability;
use crate::http::{self, Request};
use crate::mailbox::{Mailbox, Note};
use crate::metrics::ErrorKind;
use crate::protocol;
use crate::pubsub;
use crate::session::{self, Session};
use crate::shard::{Shard, Slot};
use crate::store::OpenError;
use crate::ws::codec::{self, Decoder, Event, WsError};
use crate::ws::handshake;

/// How long a close on a client's behalf may wait for Redis.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connect waits for Redis to confirm its room's subscription.
const ROOM_JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the client's Close after sending ours (not draining).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why the loop ended.
#[derive(Debug)]
enum Exit {
    PeerClose(Option<u16>),
    Invalid(WsError),
    Drain,
    Kick,
    SlowReader,
    RateLimited,
    Idle,
    Gone,
}

/// Token bucket for one socket.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// Runs an open socket (past its welcome) until it ends, then says goodbye.
/// The socket's own task: it holds the connection slot, and takes the socket
/// boxed, because an async fn keeps its arguments for its whole life.
pub async fn serve(slot: Slot, opened: Box<Opened>) {
    let shard = &slot.0;
    let Opened {
        mut stream,
        session,
        resumed,
        rest,
        sub,
        conn,
        mailbox,
        room,
    } = *opened;
    stream.set_nodelay(true).ok();
    tracing::info!(conn_id = conn, session_id = %session.id, resumed, count = session.count(), sub, room, "ws open");
    // Only the log line needs these; the shard's registry holds the room.
    drop((sub, room));
    let started = Instant::now();
    let (exit, messages) = Conn::new(shard, &mut stream, &session, &mailbox, rest)
        .run()
        .await;
    shard.unregister(conn);
    let code = Box::pin(finish(shard, &mut stream, &session, &exit)).await;
    shard.store.release(&session);
    tracing::info!(
        conn_id = conn,
        session_id = %session.id,
        code,
        reason = ?exit,
        messages,
        total = session.count(),
        duration_ms = started.elapsed().as_millis() as u64,
        "ws close"
    );
}

/// Whether a browser on `origin` may open a socket: any when the list is
/// empty, else an exact match without case (scheme, host and port).
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin.trim()))
}

/// A socket past its welcome.
pub struct Opened {
    stream: TcpStream,
    session: Rc<Session>,
    resumed: bool,
    /// Bytes that came after the request head (the client's first frames).
    rest: Vec<u8>,
    /// The token's subject, with `--auth-secret`.
    sub: Option<String>,
    conn: u64,
    /// Registered with the shard before the welcome went out, so nothing
    /// broadcast after the welcome can miss it.
    mailbox: Rc<Mailbox>,
    room: Option<String>,
}

/// Validates the handshake, opens or resumes the session and sends the 101
/// with the welcome; None when the upgrade was refused (and answered).
pub async fn open(shard: &Rc<Shard>, mut stream: TcpStream, mut req: Request) -> Option<Opened> {
    let m = shard.metrics();
    let accept = match handshake::validate(&req) {
        Ok(a) => a,
        Err(r) => {
            m.error(ErrorKind::BadRequest);
            tracing::info!(status = r.status, reason = r.reason, "upgrade refused");
            let body = serde_json::json!({ "error": r.reason }).to_string();
            let _ = stream
                .write_all(&http::response(
                    r.status,
                    "application/json",
                    r.headers,
                    body.as_bytes(),
                ))
                .await;
            return None;
        }
    };
    if let Some(origin) = req.header("origin") {
        if !origin_allowed(&shard.cfg().allowed_origins, origin) {
            m.error(ErrorKind::ForbiddenOrigin);
            tracing::info!(origin, "upgrade refused: origin not allowed: 403");
            let _ = stream
                .write_all(&http::error(403, "origin not allowed"))
                .await;
            return None;
        }
    }
    let sub = match &shard.cfg().auth_secret {
        None => None,
        Some(secret) => {
            let token = crate::auth::token_of(&req).unwrap_or("");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            match crate::auth::verify(secret.as_bytes(), token, now) {
                Ok(id) => id.sub,
                Err(e) => {
                    m.error(ErrorKind::Unauthorized);
                    tracing::info!(reason = %e, "upgrade refused: 401");
                    let body =
                        serde_json::json!({ "error": "unauthorized", "reason": e.to_string() });
                    let _ = stream
                        .write_all(&http::response(
                            401,
                            "application/json",
                            &[("WWW-Authenticate", "Bearer")],
                            body.to_string().as_bytes(),
                        ))
                        .await;
                    return None;
                }
            }
        }
    };
    if shard.is_draining() {
        let _ = stream.write_all(&http::error(503, "draining")).await;
        return None;
    }
    let requested = session::id_from_query(&req.query).and_then(session::parse_id);
    let room = match pubsub::room_from_query(&req.query) {
        None => None,
        Some(r) => match pubsub::check_room(r) {
            Ok(()) => Some(r.to_string()),
            Err(e) => {
                m.error(ErrorKind::BadRequest);
                tracing::info!(room = r, "upgrade refused: bad room: 400");
                let _ = stream.write_all(&http::error(400, &e.to_string())).await;
                return None;
            }
        },
    };
    // Only the bytes after the head live on; the headers go now.
    let rest = std::mem::take(&mut req.rest);
    drop(req);
    let (session, resumed) = match shard.store.open(requested).await {
        Ok(x) => x,
        Err(e) => {
            m.error(ErrorKind::RedisUnavailable);
            let why = match e {
                OpenError::RedisUnavailable => "redis_unavailable",
                OpenError::Backlog => "redis_backlog_full",
            };
            tracing::warn!(reason = why, "upgrade refused: 503");
            let _ = stream.write_all(&http::error(503, why)).await;
            return None;
        }
    };
    let conn = shard.next_conn_id();
    let mailbox = Mailbox::new(shard.cfg().outbound_queue);
    let confirmed = match shard.register(conn, mailbox.clone(), session.id, room.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            m.error(ErrorKind::TooManyRooms);
            if let Some(unlogged) = shard.log_gate(ErrorKind::TooManyRooms) {
                tracing::warn!(
                    limit = shard.cfg().max_rooms,
                    unlogged,
                    "upgrade refused: {e}: 503"
                );
            }
            shard.store.release(&session);
            let _ = stream.write_all(&http::error(503, "too_many_rooms")).await;
            return None;
        }
    };
    if let Some(confirmed) = confirmed {
        // Bounded: with the subscription connection down the socket still
        // opens, and gets the room's broadcasts once it is back.
        let waited = glommio::timer::timeout(ROOM_JOIN_TIMEOUT, async {
            let _ = confirmed.await;
            Ok(())
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                room,
                "room subscription not confirmed in time; opening anyway"
            );
        }
    }
    // A drain that began while this upgrade waited on Redis sent its notice
    // before the socket was registered: deliver it now.
    if shard.is_draining() {
        mailbox.push(Note::Drain);
    }
    if resumed {
        m.sessions_resumed_total.inc();
    }
    let mut out = handshake::accept_response(&accept);
    codec::encode_text(
        &mut out,
        protocol::welcome(&session.id, session.count(), resumed).as_bytes(),
    );
    if stream.write_all(&out).await.is_err() {
        shard.unregister(conn);
        shard.store.release(&session);
        return None;
    }
    Some(Opened {
        stream,
        session,
        resumed,
        rest,
        sub,
        conn,
        mailbox,
        room,
    })
}

/// Read buffer of a socket between bursts. Over 256 bytes, so a control
/// frame (at most 131 bytes) always fits whole.
const IDLE_BUFFER: usize = 512;

struct Conn<'a> {
    shard: &'a Rc<Shard>,
    stream: &'a mut TcpStream,
    session: &'a Rc<Session>,
    mailbox: &'a Rc<Mailbox>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    decoder: Decoder,
    bucket: Bucket,
    messages: u64,
    /// Bytes of the last read, and whether it filled the free space.
    last_read: (usize, bool),
}

impl<'a> Conn<'a> {
    fn new(
        shard: &'a Rc<Shard>,
        stream: &'a mut TcpStream,
        session: &'a Rc<Session>,
        mailbox: &'a Rc<Mailbox>,
        rest: Vec<u8>,
    ) -> Self {
        let cfg = shard.cfg();
        let mut buf = vec![0u8; IDLE_BUFFER.max(rest.len())].into_boxed_slice();
        buf[..rest.len()].copy_from_slice(&rest);
        Self {
            shard,
            stream,
            session,
            mailbox,
            end: rest.len(),
            buf,
            start: 0,
            decoder: Decoder::new(cfg.max_message_bytes),
            bucket: Bucket {
                rate: cfg.rate_limit as f64,
                burst: cfg.rate_burst as f64,
                tokens: cfg.rate_burst as f64,
                last: Instant::now(),
                strikes: 0,
            },
            messages: 0,
            last_read: (0, false),
        }
    }

    /// Sizes the read buffer between reads, when nothing is buffered: a read
    /// that filled it grows it to `read_buffer_bytes`, so a burst takes few
    /// syscalls; small reads shrink it back to [`IDLE_BUFFER`], so the
    /// thousands of sockets that are quiet at any moment hold 512 bytes each,
    /// not 4 KiB. Medium reads keep it as it is, so steady traffic of
    /// mid-sized messages does not reallocate on every read.
    fn fit_buffer(&mut self) {
        if self.start != self.end {
            return;
        }
        let big = self.shard.cfg().read_buffer_bytes.max(IDLE_BUFFER);
        let want = match self.last_read {
            (_, true) => big,
            (n, false) if n <= IDLE_BUFFER / 2 => IDLE_BUFFER,
            _ => return,
        };
        if self.buf.len() != want {
            self.buf = vec![0u8; want].into_boxed_slice();
        }
    }

    async fn run(mut self) -> (Exit, u64) {
        let exit = self.serve().await;
        (exit, self.messages)
    }

    async fn serve(&mut self) -> Exit {
        let mut out: Vec<u8> = Vec::new();
        let mut arrived = Instant::now();
        loop {
            if let Some(exit) = self.decode_buffered(&mut out, arrived).await {
                // Replies to what came before the Close still go out first.
                if !out.is_empty() {
                    let _ = self.stream.write_all(&out).await;
                }
                return exit;
            }
            if !out.is_empty() {
                if let Err(e) = self.stream.write_all(&out).await {
                    // The write timeout fired: the peer stopped reading and
                    // the kernel's buffers are full. That is a slow reader.
                    return if e.kind() == std::io::ErrorKind::TimedOut {
                        Exit::SlowReader
                    } else {
                        Exit::Gone
                    };
                }
                out.clear();
                if out.capacity() > 16 << 10 {
                    out = Vec::new();
                }
            }
            self.fit_buffer();
            let step = {
                let read = self.stream.read(&mut self.buf[self.end..]);
                let note = self.mailbox.next();
                future::or(async { Ok(read.await) }, async { Err(note.await) }).await
            };
            match step {
                Ok(Ok(0)) | Ok(Err(_)) => return Exit::Gone,
                Ok(Ok(n)) => {
                    self.last_read = (n, self.end + n == self.buf.len());
                    self.end += n;
                    arrived = Instant::now();
                    self.mailbox.heard(arrived);
                }
                Err(note) => match self.on_note(note, &mut out) {
                    Some(Exit::Drain) => {
                        return Box::pin(self.finish_in_flight(&mut out, arrived)).await
                    }
                    Some(exit) => return exit,
                    None => {
                        // Drain what else is queued into the same write.
                        while let Some(note) = self.mailbox.try_next() {
                            if let Some(exit) = self.on_note(note, &mut out) {
                                return exit;
                            }
                        }
                    }
                },
            }
        }
    }

    /// Before the drain goodbye: answer what the client already sent, whether
    /// it sits in our buffer or still in the kernel's, without waiting for more.
    async fn finish_in_flight(&mut self, out: &mut Vec<u8>, mut arrived: Instant) -> Exit {
        loop {
            if let Some(exit) = self.decode_buffered(out, arrived).await {
                if !out.is_empty() {
                    let _ = self.stream.write_all(out).await;
                }
                return exit;
            }
            match future::poll_once(self.stream.read(&mut self.buf[self.end..])).await {
                Some(Ok(n)) if n > 0 => {
                    self.end += n;
                    arrived = Instant::now();
                }
                _ => break,
            }
        }
        if !out.is_empty() {
            let _ = self.stream.write_all(out).await;
        }
        Exit::Drain
    }

    fn on_note(&mut self, note: Note, out: &mut Vec<u8>) -> Option<Exit> {
        match note {
            Note::Frame(f) => {
                out.extend_from_slice(&f);
                None
            }
            Note::Drain => Some(Exit::Drain),
            Note::Kick => Some(Exit::Kick),
            Note::Overflow => Some(Exit::SlowReader),
            Note::Ping => {
                codec::encode_ping(out, b"idle?");
                None
            }
            Note::Idle => Some(Exit::Idle),
        }
    }

    /// Handles every complete event in the buffer; appends replies to `out`.
    async fn decode_buffered(&mut self, out: &mut Vec<u8>, arrived: Instant) -> Option<Exit> {
        let shard = self.shard;
        let m = shard.metrics();
        while self.start < self.end {
            let base = self.start;
            let (ev, n) = match self.decoder.decode(&mut self.buf[base..self.end]) {
                Ok(x) => x,
                Err(e) => return Some(Exit::Invalid(e)),
            };
            self.start += n;
            match ev {
                None if n == 0 => break,
                None => {}
                Some(Event::Text) => {
                    // One clock read serves the rate limit and the latency histogram.
                    let now = Instant::now();
                    if !self.bucket.take(now) {
                        m.error(ErrorKind::RateLimited);
                        if let Some(unlogged) = shard.log_gate(ErrorKind::RateLimited) {
                            tracing::info!(unlogged, "rate limited: message not counted");
                        }
                        if self.bucket.strikes >= shard.cfg().rate_strikes {
                            return Some(Exit::RateLimited);
                        }
                        codec::encode_text(out, protocol::error("rate_limited").as_bytes());
                        continue;
                    }
                    let count = self.session.increment();
                    if shard.cfg().durability == Durability::Sync {
                        let written = Box::pin(shard.store.persist(self.session)).await;
                        // If another socket counted since, the increment can
                        // no longer be taken back: it stays, and is answered.
                        if let Err(e) = written {
                            if self.session.undo(count) {
                                m.error(ErrorKind::RedisUnavailable);
                                tracing::debug!(error = %e, "sync write failed; message not counted");
                                codec::encode_text(
                                    out,
                                    protocol::error("redis_unavailable").as_bytes(),
                                );
                                continue;
                            }
                        }
                    } else {
                        shard.store.enqueue(self.session);
                    }
                    self.messages += 1;
                    m.messages_total.inc();
                    // The reply is under 126 bytes: a two-byte header, no allocation.
                    let at = out.len();
                    out.extend_from_slice(&[0x81, 0]);
                    protocol::count(out, count);
                    out[at + 1] = (out.len() - at - 2) as u8;
                    m.message_duration
                        .observe_ns(now.saturating_duration_since(arrived).as_nanos() as u64);
                }
                Some(Event::Ping(r)) => {
                    let payload = self.buf[base + r.start..base + r.end].to_vec();
                    codec::encode_pong(out, &payload);
                }
                Some(Event::Pong) => {}
                Some(Event::Close(code)) => return Some(Exit::PeerClose(code)),
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                // Cannot happen with a buffer over 256 bytes: data frames
                // stream through and a control frame is at most 131 bytes.
                return Some(Exit::Invalid(WsError::Protocol(
                    "frame does not fit the buffer",
                )));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        None
    }
}

/// Sends what the exit calls for (goodbye, Close) and returns the close code.
async fn finish(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    session: &Rc<Session>,
    exit: &Exit,
) -> u16 {
    let m = shard.metrics();
    // The count reaches Redis before our Close frame does (contract).
    if !matches!(exit, Exit::Kick) {
        let persisted = glommio::timer::timeout(PERSIST_TIMEOUT, async {
            Ok(shard.store.persist(session).await)
        })
        .await;
        if !matches!(persisted, Ok(Ok(()))) {
            shard.store.enqueue(session);
        }
    }
    let mut out = Vec::new();
    let (code, wait_until) = match exit {
        Exit::PeerClose(code) => {
            let code = code.unwrap_or(1000);
            codec::encode_text(&mut out, protocol::bye(session.count()).as_bytes());
            codec::encode_close(&mut out, code, "");
            (code, None)
        }
        Exit::Drain => {
            let retry = shard.retry_after_ms();
            codec::encode_text(
                &mut out,
                protocol::bye_shutdown(session.count(), retry).as_bytes(),
            );
            codec::encode_close(&mut out, 1001, "server shutting down");
            (1001, Some(shard.drain_deadline()))
        }
        Exit::Invalid(e) => {
            let kind = match e {
                WsError::Protocol(_) => ErrorKind::Protocol,
                WsError::Binary => ErrorKind::Binary,
                WsError::InvalidUtf8 => ErrorKind::InvalidUtf8,
                WsError::TooBig => ErrorKind::TooBig,
            };
            m.error(kind);
            tracing::info!(code = e.code(), reason = e.reason(), "closing on bad input");
            codec::encode_close(&mut out, e.code(), e.reason());
            (e.code(), Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Kick => {
            codec::encode_close(&mut out, 1008, "session deleted");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::SlowReader => {
            m.error(ErrorKind::SlowReader);
            tracing::info!("closing a slow reader: its backlog passed the bound");
            codec::encode_close(&mut out, 1008, "slow reader");
            (1008, None)
        }
        Exit::Idle => {
            m.error(ErrorKind::IdleTimeout);
            tracing::info!(
                idle_s = shard.cfg().idle_timeout.as_secs(),
                "closing a silent socket"
            );
            codec::encode_text(&mut out, protocol::bye_idle(session.count()).as_bytes());
            codec::encode_close(&mut out, 1001, "idle timeout");
            (1001, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::RateLimited => {
            codec::encode_close(&mut out, 1008, "rate limit exceeded");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Gone => {
            m.close(1006);
            return 1006;
        }
    };
    m.close(code);
    // Bounded: a peer that stopped reading must not hold the task for
    // another write timeout.
    let written =
        glommio::timer::timeout(CLOSE_WAIT, async { Ok(stream.write_all(&out).await) }).await;
    if !matches!(written, Ok(Ok(()))) {
        return code;
    }
    if let Some(until) = wait_until {
        // Give the client time to answer our Close, so it sees a clean close.
        await_peer_close(stream, until).await;
    }
    let _ = stream.close().await;
    code
}

async fn await_peer_close(stream: &mut TcpStream, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let _ = glommio::timer::timeout(left, async {
        let mut decoder = Decoder::new(usize::MAX);
        let mut buf = vec![0u8; 512];
        let mut end = 0;
        loop {
            match stream.read(&mut buf[end..]).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => end += n,
            }
            let mut start = 0;
            while start < end {
                match decoder.decode(&mut buf[start..end]) {
                    Ok((Some(Event::Close(_)), _)) | Err(_) => return Ok(()),
                    Ok((_, 0)) => break,
                    Ok((_, n)) => start += n,
                }
            }
            buf.copy_within(start..end, 0);
            end -= start;
        }
    })
    .await;
}
