//! The shard's WebSocket data plane: every open socket of the shard is a
//! small struct in one table, readiness comes from one epoll descriptor that
//! the shard awaits through glommio (one io_uring poll per wake, whatever
//! the number of sockets), bytes land in one receive buffer per shard, frames
//! are decoded in place, and the replies of a wake go out in one send per
//! socket. Pings, idle closes and stalled writers are found by sweeps over
//! the table, not by timers per socket.
//!
//! A socket leaves the table when it ends; its goodbye, Close and the wait
//! for the peer's Close run in a short task of their own ([`goodbye::close`]),
//! so the table only ever holds sockets that are counting.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::auth;
use crate::config::Durability;
use crate::context::{Context, Slot};
use crate::metrics::ErrorKind;
use crate::protocol;
use crate::session::Session;
use crate::ws::codec::{self, Decoder, Event, WsError};
use crate::ws::control::{self, Command};
use crate::ws::goodbye::{self, Ended, Exit};

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 512;
/// A socket whose unsent bytes have not moved for this long is a slow reader.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Kept allocations above this are given back once empty.
const KEEP: usize = 256;

/// Token bucket for one socket; the rate and burst are the shard's.
struct Bucket {
    tokens: f32,
    last: Instant,
    strikes: u32,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f32, burst: f32) -> bool {
        if rate == 0.0 {
            return true;
        }
        let refill = now.duration_since(self.last).as_secs_f32() * rate;
        self.tokens = (self.tokens + refill).min(burst);
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

/// What a socket's token granted, kept while it is open (with
/// `--auth-secret` only; boxed so a socket without one pays a pointer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`: a refresh must name the same one.
    pub sub: Option<Box<str>>,
    /// When the token expires; the sweep closes the socket past it.
    pub expires: Option<Instant>,
}

/// One open socket: its descriptor, session and the few bytes of state
/// between reads.
struct Sock {
    fd: OwnedFd,
    slot: Slot,
    session: Rc<Session>,
    room: Option<Rc<str>>,
    grant: Option<Box<Grant>>,
    decoder: Decoder,
    bucket: Bucket,
    /// An incomplete frame head (or, while a sync write is in flight, the
    /// bytes after the message that waits): decoded before the next read.
    partial: Vec<u8>,
    /// Bytes the kernel would not take yet, in order.
    backlog: Vec<u8>,
    /// Frames appended to a non-empty backlog, against `outbound_queue`.
    backlog_frames: u32,
    /// When the backlog last stopped moving.
    stalled_since: Option<Instant>,
    /// When the peer last sent anything, and whether a Ping went out since.
    heard: Instant,
    pinged: bool,
    /// A sync-durability write is in flight: reading waits for it.
    waiting: bool,
    /// The socket has ended and waits in `Plane::ended` to leave the table.
    ended: bool,
    /// The epoll events this socket is registered for.
    interest: u32,
    opened: Instant,
    messages: u64,
}

/// A socket past its handshake, as the upgrade hands it over.
pub struct Upgraded {
    pub conn: u64,
    pub fd: OwnedFd,
    /// Its place under `max_connections`, given back when it ends.
    pub slot: Slot,
    pub session: Rc<Session>,
    /// The room it joined, if any.
    pub room: Option<Rc<str>>,
    /// What its token granted (with `--auth-secret`).
    pub grant: Option<Box<Grant>>,
    /// What the client sent after its request head (its first frames).
    pub rest: Vec<u8>,
}

/// What the bytes of one socket led to.
enum Stop {
    /// A text message counted in sync mode waits for Redis.
    Park {
        count: u64,
        arrived: Instant,
    },
    Exit(Exit),
}

/// One of `of` even parts of the socket table, by connection id (ids are
/// handed out in turn, so the parts stay even). Periodic walks (heartbeats,
/// the sweep) visit one part per tick: a walk over 10,000 sockets at once
/// held the shard for milliseconds, and every message waiting behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub index: u64,
    pub of: u64,
}

impl Slice {
    /// Ticks no shorter than this, whatever the table's size.
    const MIN_TICK: Duration = Duration::from_millis(5);

    /// How many parts a walk over `len` sockets once per `period` takes, so
    /// that each tick visits about `per_tick` sockets.
    pub fn parts(len: usize, per_tick: usize, period: Duration) -> u64 {
        let most = (period.as_nanos() / Self::MIN_TICK.as_nanos()).max(1) as usize;
        (len / per_tick.max(1)).clamp(1, most) as u64
    }

    fn holds(self, conn: u64) -> bool {
        conn % self.of == self.index
    }
}

/// The settings the hot path reads, copied out of the config once.
struct Limits {
    max_message: usize,
    rate: f32,
    burst: f32,
    strikes: u32,
    outbound_frames: u32,
    sync: bool,
}

/// A shard's sockets and their epoll descriptor.
pub struct Plane {
    ctx: Rc<Context>,
    epoll: OwnedFd,
    socks: RefCell<HashMap<u64, Box<Sock>>>,
    rx: RefCell<Box<[u8]>>,
    /// Replies of the socket being handled.
    out: RefCell<Vec<u8>>,
    /// Sockets that ended while the table was borrowed.
    ended: RefCell<Vec<(u64, Exit)>>,
    limits: Limits,
}

/// Why the plane could not be built.
#[derive(Debug, thiserror::Error)]
#[error("epoll_create1: {0}")]
pub struct PlaneError(#[from] io::Error);

impl Plane {
    pub fn new(ctx: Rc<Context>) -> Result<Rc<Self>, PlaneError> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let epoll = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let cfg = ctx.cfg();
        let limits = Limits {
            max_message: cfg.max_message_bytes,
            rate: cfg.rate_limit as f32,
            burst: cfg.rate_burst as f32,
            strikes: cfg.rate_strikes,
            outbound_frames: cfg.outbound_queue as u32,
            sync: cfg.durability == Durability::Sync,
        };
        let rx_bytes = cfg.read_buffer_bytes;
        Ok(Rc::new(Self {
            ctx,
            epoll,
            socks: RefCell::new(HashMap::new()),
            // A read takes at most this much from one socket; level-triggered
            // epoll reports the socket again while more waits.
            rx: RefCell::new(vec![0u8; rx_bytes].into_boxed_slice()),
            out: RefCell::new(Vec::with_capacity(4096)),
            ended: RefCell::new(Vec::new()),
            limits,
        }))
    }

    /// Open sockets in the table.
    pub fn len(&self) -> usize {
        self.socks.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes an upgraded socket into the table and sends `first` (the 101
    /// and the welcome) as its first bytes. From here on every broadcast
    /// reaches it, in order after the welcome.
    pub fn adopt(self: &Rc<Self>, up: Upgraded, first: &[u8]) {
        let now = Instant::now();
        let conn = up.conn;
        let mut sock = Box::new(Sock {
            fd: up.fd,
            slot: up.slot,
            session: up.session,
            room: up.room,
            grant: up.grant,
            decoder: Decoder::new(self.limits.max_message),
            bucket: Bucket {
                tokens: self.limits.burst,
                last: now,
                strikes: 0,
            },
            partial: up.rest,
            backlog: Vec::new(),
            backlog_frames: 0,
            stalled_since: None,
            heard: now,
            pinged: false,
            waiting: false,
            ended: false,
            interest: 0,
            opened: now,
            messages: 0,
        });
        let m = self.ctx.metrics();
        m.connections_active.inc();
        m.connections_total.inc();
        if let Err(e) = self.epoll_ctl(libc::EPOLL_CTL_ADD, conn, &mut sock, libc::EPOLLIN as u32) {
            tracing::warn!(error = %e, "epoll_ctl add failed");
            self.end(conn, &mut sock, Exit::Gone);
        } else if let Err(exit) = self.write(conn, &mut sock, first) {
            self.end(conn, &mut sock, exit);
        } else if self.ctx.is_draining() {
            // A drain that began while this upgrade waited on Redis.
            self.end(conn, &mut sock, Exit::Drain);
        } else if !sock.partial.is_empty() {
            self.pump(conn, &mut sock, None);
        }
        self.socks.borrow_mut().insert(conn, sock);
        self.close_ended();
    }

    /// The shard's socket loop: waits for the epoll descriptor, then handles
    /// every ready socket. Runs for the life of the shard.
    pub async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            if let Err(e) = glommio::net::readable(self.epoll.as_raw_fd()).await {
                tracing::error!(error = %e, "waiting on the socket table failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            loop {
                // SAFETY: `events` outlives the call and its length is passed.
                let n = unsafe {
                    libc::epoll_wait(
                        self.epoll.as_raw_fd(),
                        events.as_mut_ptr(),
                        events.len() as i32,
                        0,
                    )
                };
                if n <= 0 {
                    break;
                }
                for ev in &events[..n as usize] {
                    self.on_event(ev.u64, ev.events);
                }
                self.close_ended();
                if (n as usize) < events.len() {
                    break;
                }
                // A full batch: let timers and Redis run before the next one.
                glommio::executor().yield_if_needed().await;
            }
        }
    }

    fn on_event(self: &Rc<Self>, conn: u64, events: u32) {
        let mut socks = self.socks.borrow_mut();
        let Some(sock) = socks.get_mut(&conn).filter(|s| !s.ended) else {
            return;
        };
        if events & libc::EPOLLOUT as u32 != 0 {
            if let Err(exit) = self.flush_backlog(conn, sock) {
                self.end(conn, sock, exit);
                return;
            }
        }
        let hangup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if sock.waiting {
            // Reading waits for Redis, but a hang-up is reported whatever
            // the interest, and would be reported again on every wake.
            if events & hangup != 0 {
                self.end(conn, sock, Exit::Gone);
            }
        } else if events & (libc::EPOLLIN as u32 | hangup) != 0 {
            self.read(conn, sock);
        }
    }

    /// One read into the shard's buffer, then everything it completes.
    /// Returns whether anything was read.
    fn read(self: &Rc<Self>, conn: u64, sock: &mut Sock) -> bool {
        let mut rx = self.rx.borrow_mut();
        let kept = sock.partial.len();
        if kept >= rx.len() {
            // Kept bytes are a frame head or a control frame, far smaller.
            let e = WsError::Protocol("frame does not fit the buffer");
            self.end(conn, sock, Exit::Invalid(e));
            return false;
        }
        rx[..kept].copy_from_slice(&sock.partial);
        // SAFETY: the buffer is valid for writes past `kept` and outlives the call.
        let n = unsafe {
            libc::recv(
                sock.fd.as_raw_fd(),
                rx[kept..].as_mut_ptr().cast(),
                rx.len() - kept,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                self.end(conn, sock, Exit::Gone);
            }
            return false;
        }
        if n == 0 {
            self.end(conn, sock, Exit::Gone);
            return false;
        }
        sock.partial.clear();
        let now = Instant::now();
        sock.heard = now;
        sock.pinged = false;
        let end = kept + n as usize;
        self.decode(conn, sock, &mut rx[..end], now);
        true
    }

    /// Decodes the socket's kept bytes alone (after a sync write, or the
    /// frames that came with the upgrade), without a read.
    fn pump(self: &Rc<Self>, conn: u64, sock: &mut Sock, arrived: Option<Instant>) {
        let arrived = arrived.unwrap_or_else(Instant::now);
        let mut rx = self.rx.borrow_mut();
        // Kept bytes fit the buffer but for an upgrade whose first frames
        // came with a large head: take them a buffer at a time.
        while !sock.partial.is_empty() && !sock.waiting && !sock.ended {
            let take = sock.partial.len().min(rx.len());
            let tail = sock.partial.split_off(take);
            rx[..take].copy_from_slice(&sock.partial);
            sock.partial.clear();
            self.decode(conn, sock, &mut rx[..take], arrived);
            let stuck = sock.partial.len() == take;
            sock.partial.extend_from_slice(&tail);
            if stuck || tail.is_empty() {
                break;
            }
        }
    }

    /// Handles every complete event in `buf`, writes the replies, keeps what
    /// is left, and parks or ends the socket when an event asks for it.
    fn decode(self: &Rc<Self>, conn: u64, sock: &mut Sock, buf: &mut [u8], arrived: Instant) {
        let mut out = self.out.borrow_mut();
        out.clear();
        let (used, stop) = self.events(sock, buf, arrived, &mut out);
        if used < buf.len() {
            sock.partial.extend_from_slice(&buf[used..]);
        } else if sock.partial.capacity() > KEEP {
            sock.partial = Vec::new();
        }
        let wrote = if out.is_empty() {
            Ok(())
        } else {
            self.write(conn, sock, &out)
        };
        drop(out);
        match (wrote, stop) {
            (Err(exit), _) | (Ok(()), Some(Stop::Exit(exit))) => self.end(conn, sock, exit),
            (Ok(()), Some(Stop::Park { count, arrived })) => self.park(conn, sock, count, arrived),
            (Ok(()), None) => {}
        }
    }

    /// The events in `buf`: returns the bytes used and why it stopped early.
    fn events(
        &self,
        sock: &mut Sock,
        buf: &mut [u8],
        arrived: Instant,
        out: &mut Vec<u8>,
    ) -> (usize, Option<Stop>) {
        let mut start = 0;
        while start < buf.len() {
            let base = start;
            let (ev, n) = match sock.decoder.decode(&mut buf[base..]) {
                Ok(x) => x,
                Err(e) => return (buf.len(), Some(Stop::Exit(Exit::Invalid(e)))),
            };
            start += n;
            match ev {
                None if n == 0 => break,
                None => {}
                Some(Event::Text) => {
                    // One clock read serves the rate limit and the latency histogram.
                    let now = Instant::now();
                    match self.admit(sock, now, out) {
                        Err(exit) => return (buf.len(), Some(Stop::Exit(exit))),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    let count = sock.session.increment();
                    if self.limits.sync {
                        return (start, Some(Stop::Park { count, arrived }));
                    }
                    self.ctx.store.enqueue(&sock.session);
                    self.counted(sock, count, arrived, now, out);
                }
                Some(Event::Binary) => {
                    // A control frame costs a message of the rate limit, so
                    // refreshes cannot be a way around it.
                    match self.admit(sock, Instant::now(), out) {
                        Err(exit) => return (buf.len(), Some(Stop::Exit(exit))),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    let Some(payload) = sock.decoder.payload_mut().take() else {
                        let e = WsError::Protocol("control frame too long");
                        return (buf.len(), Some(Stop::Exit(Exit::Invalid(e))));
                    };
                    match control::parse(&payload) {
                        Err(e) => {
                            tracing::info!(error = %e, "binary message is not a control frame");
                            let e = WsError::Binary;
                            return (buf.len(), Some(Stop::Exit(Exit::Invalid(e))));
                        }
                        Ok(Command::Refresh(token)) => match self.refresh(sock, &token) {
                            Ok(text) => codec::encode_text(out, text.as_bytes()),
                            Err(why) => {
                                return (buf.len(), Some(Stop::Exit(Exit::TokenRefused(why))))
                            }
                        },
                    }
                }
                Some(Event::Ping(r)) => {
                    codec::encode_pong(out, &buf[base + r.start..base + r.end]);
                }
                Some(Event::Pong) => {}
                Some(Event::Close(code)) => {
                    return (buf.len(), Some(Stop::Exit(Exit::PeerClose(code))))
                }
            }
        }
        (start, None)
    }

    /// The rate limit for one message: Ok(true) when it may go on, Ok(false)
    /// when it is refused (the error reply is in `out`), Err when the socket
    /// has been refused too often in a row.
    fn admit(&self, sock: &mut Sock, now: Instant, out: &mut Vec<u8>) -> Result<bool, Exit> {
        let l = &self.limits;
        if sock.bucket.take(now, l.rate, l.burst) {
            return Ok(true);
        }
        self.ctx.metrics().error(ErrorKind::RateLimited);
        if let Some(unlogged) = self.ctx.log_gate(ErrorKind::RateLimited) {
            tracing::info!(unlogged, "rate limited: message not counted");
        }
        if sock.bucket.strikes >= l.strikes {
            return Err(Exit::RateLimited);
        }
        codec::encode_text(out, protocol::error("rate_limited").as_bytes());
        Ok(false)
    }

    /// A refresh: the new token must verify, name the same subject and
    /// still allow the socket's room; then it replaces the old one and its
    /// `exp` is the socket's new deadline. Returns the reply, or why the
    /// socket must close (4001).
    fn refresh(&self, sock: &mut Sock, token: &str) -> Result<String, &'static str> {
        let (Some(secret), Some(grant)) = (&self.ctx.cfg().auth_secret, sock.grant.as_mut()) else {
            // Without auth there is nothing to refresh; the socket stays.
            return Ok(protocol::error("auth_off"));
        };
        let now_unix = auth::unix_now();
        let id = auth::verify(secret.as_bytes(), token, now_unix).map_err(|e| e.reason())?;
        if id.sub.as_deref() != grant.sub.as_deref() {
            return Err("the token names another subject");
        }
        if let Some(room) = &sock.room {
            if !id.rooms.allows(room) {
                return Err("the token does not name the socket's room");
            }
        }
        grant.expires = auth::deadline(id.exp, now_unix, Instant::now());
        tracing::debug!(sub = id.sub, exp = id.exp, "token refreshed");
        Ok(protocol::refreshed(id.exp))
    }

    /// Appends the reply to a counted message.
    fn counted(
        &self,
        sock: &mut Sock,
        count: u64,
        arrived: Instant,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let m = self.ctx.metrics();
        sock.messages += 1;
        m.messages_total.inc();
        // The reply is under 126 bytes: a two-byte header, no allocation.
        let at = out.len();
        out.extend_from_slice(&[0x81, 0]);
        protocol::count(out, count);
        out[at + 1] = (out.len() - at - 2) as u8;
        m.message_duration
            .observe_ns(now.saturating_duration_since(arrived).as_nanos() as u64);
    }

    /// Sync durability: reading stops until Redis has the count.
    fn park(self: &Rc<Self>, conn: u64, sock: &mut Sock, count: u64, arrived: Instant) {
        sock.waiting = true;
        let interest = sock.interest & !(libc::EPOLLIN as u32);
        if self.set_interest(conn, sock, interest).is_err() {
            self.end(conn, sock, Exit::Gone);
            return;
        }
        let plane = self.clone();
        let session = sock.session.clone();
        glommio::spawn_local(async move {
            // glommio polls a spawned task once, at once, inside this call,
            // while the caller still holds the socket table; a write that
            // fails without waiting (Redis down) would then resume into it.
            futures_lite::future::yield_now().await;
            let written = Box::pin(plane.ctx.store.persist(&session)).await;
            plane.resume(conn, count, arrived, written.is_ok());
        })
        .detach();
    }

    /// A sync write came back: answer the message, then go on decoding.
    fn resume(self: &Rc<Self>, conn: u64, count: u64, arrived: Instant, written: bool) {
        {
            let mut socks = self.socks.borrow_mut();
            let Some(sock) = socks.get_mut(&conn).filter(|s| !s.ended) else {
                return;
            };
            sock.waiting = false;
            let mut out = self.out.borrow_mut();
            out.clear();
            // If another socket counted since, the increment can no longer
            // be taken back: it stays, and is answered.
            if !written && sock.session.undo(count) {
                self.ctx.metrics().error(ErrorKind::RedisUnavailable);
                codec::encode_text(&mut out, protocol::error("redis_unavailable").as_bytes());
            } else {
                self.counted(sock, count, arrived, Instant::now(), &mut out);
            }
            let wrote = self.write(conn, sock, &out);
            drop(out);
            let interest = sock.interest | libc::EPOLLIN as u32;
            if let Err(exit) = wrote {
                self.end(conn, sock, exit);
            } else if self.set_interest(conn, sock, interest).is_err() {
                self.end(conn, sock, Exit::Gone);
            } else {
                self.pump(conn, sock, Some(arrived));
                // A drain waited for this write; what the client sent before
                // it has been answered now.
                if self.ctx.is_draining() && !sock.waiting {
                    self.end(conn, sock, Exit::Drain);
                }
            }
        }
        self.close_ended();
    }

    /// Sends `bytes` now, or queues them behind what the kernel has not
    /// taken yet. Err when the socket must end.
    fn write(&self, conn: u64, sock: &mut Sock, bytes: &[u8]) -> Result<(), Exit> {
        if !sock.backlog.is_empty() {
            if sock.backlog_frames >= self.limits.outbound_frames {
                return Err(Exit::SlowReader);
            }
            sock.backlog_frames += 1;
            sock.backlog.extend_from_slice(bytes);
            return Ok(());
        }
        let sent = send(&sock.fd, bytes).map_err(|_| Exit::Gone)?;
        if sent < bytes.len() {
            sock.backlog.extend_from_slice(&bytes[sent..]);
            sock.backlog_frames = 1;
            sock.stalled_since = Some(Instant::now());
            let interest = sock.interest | libc::EPOLLOUT as u32;
            self.set_interest(conn, sock, interest)
                .map_err(|_| Exit::Gone)?;
        }
        Ok(())
    }

    /// The kernel has room again: send what waits.
    fn flush_backlog(&self, conn: u64, sock: &mut Sock) -> Result<(), Exit> {
        if sock.backlog.is_empty() {
            return Ok(());
        }
        let sent = send(&sock.fd, &sock.backlog).map_err(|_| Exit::Gone)?;
        if sent > 0 {
            sock.backlog.drain(..sent);
            sock.stalled_since = Some(Instant::now());
        }
        if sock.backlog.is_empty() {
            sock.backlog_frames = 0;
            sock.stalled_since = None;
            if sock.backlog.capacity() > KEEP {
                sock.backlog = Vec::new();
            }
            let interest = sock.interest & !(libc::EPOLLOUT as u32);
            self.set_interest(conn, sock, interest)
                .map_err(|_| Exit::Gone)?;
        }
        Ok(())
    }

    /// Changes the events the socket is registered for.
    fn set_interest(&self, conn: u64, sock: &mut Sock, events: u32) -> io::Result<()> {
        if events == sock.interest {
            return Ok(());
        }
        self.epoll_ctl(libc::EPOLL_CTL_MOD, conn, sock, events)
    }

    fn epoll_ctl(&self, op: i32, conn: u64, sock: &mut Sock, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: conn };
        // SAFETY: both descriptors are open; `ev` lives across the call.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, sock.fd.as_raw_fd(), &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        sock.interest = events;
        Ok(())
    }

    /// Sends an encoded frame to every socket but those in `skip` (sorted);
    /// returns how many took it.
    pub fn fan_out(&self, frame: &[u8], skip: &[u64]) -> u64 {
        let mut n = 0;
        for (&conn, sock) in self.socks.borrow_mut().iter_mut() {
            if skip.is_empty() || skip.binary_search(&conn).is_err() {
                n += u64::from(self.send_frame(conn, sock, frame));
            }
        }
        self.close_ended();
        n
    }

    /// Sends an encoded frame to the sockets named; returns how many took it.
    pub fn send_to(&self, conns: &[u64], frame: &[u8]) -> u64 {
        let mut n = 0;
        {
            let mut socks = self.socks.borrow_mut();
            for &conn in conns {
                if let Some(sock) = socks.get_mut(&conn) {
                    n += u64::from(self.send_frame(conn, sock, frame));
                }
            }
        }
        self.close_ended();
        n
    }

    /// The heartbeat for one slice of the table: `frame` to each of its
    /// sockets, and each one's session queued for the next flush, so an open
    /// but silent socket keeps its session alive. Returns how many took it.
    pub fn heartbeat(&self, frame: &[u8], slice: Slice) -> u64 {
        let mut n = 0;
        {
            let mut socks = self.socks.borrow_mut();
            for (&conn, sock) in socks.iter_mut().filter(|(&c, _)| slice.holds(c)) {
                if self.send_frame(conn, sock, frame) {
                    n += 1;
                    self.ctx.store.enqueue(&sock.session);
                }
            }
        }
        self.close_ended();
        n
    }

    /// One frame to one socket; false when the socket has ended or ends now.
    fn send_frame(&self, conn: u64, sock: &mut Sock, frame: &[u8]) -> bool {
        if sock.ended {
            return false;
        }
        match self.write(conn, sock, frame) {
            Ok(()) => true,
            Err(exit) => {
                self.end(conn, sock, exit);
                false
            }
        }
    }

    /// The session was deleted: its sockets close with 1008.
    pub fn kick(&self, id: &Uuid) {
        for (&conn, sock) in self.socks.borrow_mut().iter_mut() {
            if sock.session.id == *id {
                self.end(conn, sock, Exit::Kick);
            }
        }
        self.close_ended();
    }

    /// The per-shard sweep over one slice of the table: a Ping after half
    /// of `idle` of silence, a close after all of it (when `idle` is not
    /// zero), the end of sockets whose unsent bytes stopped moving, and of
    /// those whose token expired (no clock read per message for it).
    pub fn sweep(&self, now: Instant, idle: Duration, slice: Slice) {
        let mut ping = Vec::new();
        codec::encode_ping(&mut ping, b"idle?");
        {
            let mut socks = self.socks.borrow_mut();
            // The slice is chosen by key before any socket is touched: the
            // keys sit together in the map, the sockets do not.
            for (&conn, sock) in socks.iter_mut().filter(|(&c, _)| slice.holds(c)) {
                if sock.ended {
                    continue;
                }
                if sock
                    .stalled_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= WRITE_STALL)
                {
                    self.end(conn, sock, Exit::SlowReader);
                    continue;
                }
                if sock
                    .grant
                    .as_ref()
                    .and_then(|g| g.expires)
                    .is_some_and(|t| now >= t)
                {
                    self.end(conn, sock, Exit::TokenExpired);
                    continue;
                }
                if idle.is_zero() {
                    continue;
                }
                let silent = now.saturating_duration_since(sock.heard);
                if silent >= idle {
                    self.end(conn, sock, Exit::Idle);
                } else if silent >= idle / 2 && !sock.pinged {
                    sock.pinged = true;
                    if let Err(exit) = self.write(conn, sock, &ping) {
                        self.end(conn, sock, exit);
                    }
                }
            }
        }
        self.close_ended();
    }

    /// The drain (the context is already draining): each socket answers
    /// what its client already sent (in the kernel or kept here), then says
    /// goodbye with 1001. A socket whose sync write is in flight goes when
    /// the write returns.
    pub fn drain(self: &Rc<Self>) {
        for (&conn, sock) in self.socks.borrow_mut().iter_mut() {
            // Bounded: a client that keeps sending cannot hold the drain.
            for _ in 0..16 {
                if sock.waiting || sock.ended || !self.read(conn, sock) {
                    break;
                }
            }
            if !sock.waiting {
                self.end(conn, sock, Exit::Drain);
            }
        }
        self.close_ended();
    }

    /// Marks the socket ended for `exit`, unless it already is: the first
    /// reason is the one its close reports.
    fn end(&self, conn: u64, sock: &mut Sock, exit: Exit) {
        if !sock.ended {
            sock.ended = true;
            self.ended.borrow_mut().push((conn, exit));
        }
    }

    /// Takes every socket that ended out of the table and starts its close.
    fn close_ended(&self) {
        loop {
            let Some((conn, exit)) = self.ended.borrow_mut().pop() else {
                return;
            };
            let Some(sock) = self.socks.borrow_mut().remove(&conn) else {
                continue;
            };
            // SAFETY: both descriptors are open; DEL ignores the event.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    sock.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                );
            }
            if let Some(room) = &sock.room {
                self.ctx.pubsub.leave(room, conn);
            }
            self.ctx.metrics().connections_active.dec();
            let Sock {
                fd,
                slot,
                session,
                backlog,
                opened,
                messages,
                ..
            } = *sock;
            let ended = Ended {
                conn,
                fd,
                slot,
                session,
                exit,
                unsent: backlog,
                opened,
                messages,
            };
            // The close keeps the socket's slot, so a drain waits for it.
            glommio::spawn_local(goodbye::close(ended)).detach();
        }
    }
}

/// One non-blocking send; a full socket buffer sends 0.
fn send(fd: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_part_the_ids_evenly_and_once() {
        let of = Slice::parts(10_000, 64, Duration::from_secs(30));
        assert_eq!(of, 156);
        let mut sizes = vec![0; of as usize];
        for conn in 1..=10_000u64 {
            let owners: Vec<u64> = (0..of)
                .filter(|&index| Slice { index, of }.holds(conn))
                .collect();
            assert_eq!(owners.len(), 1, "conn {conn} is in exactly one slice");
            sizes[owners[0] as usize] += 1;
        }
        assert!(sizes.iter().all(|&n| (64..=65).contains(&n)), "{sizes:?}");
    }

    #[test]
    fn small_tables_and_short_periods_take_one_part_or_few() {
        assert_eq!(Slice::parts(10, 64, Duration::from_secs(30)), 1);
        assert_eq!(Slice::parts(0, 64, Duration::from_millis(100)), 1);
        // 100 ms cannot be cut into ticks under 5 ms.
        assert_eq!(Slice::parts(100_000, 64, Duration::from_millis(100)), 20);
    }
}
