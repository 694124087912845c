//! The shard's WebSocket transport: every open socket of the shard is a
//! small struct in one table, and the kernel is reached one of two ways,
//! chosen at start ([`Io`]):
//!
//! - io_uring (`ws::uring`): a ring per plane that the shard awaits through
//!   glommio, a multishot receive per socket into buffers the plane's
//!   sockets share, and the sends of a loop turn queued per socket and
//!   submitted together with the next wait's `io_uring_enter`;
//! - epoll: one epoll descriptor awaited the same way, then a `recv` into
//!   the shard's one receive buffer and a `send` per ready socket.
//!
//! Either way frames are decoded in place and a socket's replies of a wake
//! go out as one send. Idle closes and stalled writers are found by sweeps
//! ([`Sweep`]), not by timers per socket, and the idle Ping goes in the
//! heartbeat's send ([`Idle`]).
//!
//! The plane knows frames, buffers, write queues and timers, nothing of what
//! a message means: a [`Handler`] does (`ws::counter`, the service's counter;
//! `ws::echo`, the conformance echo), with state of its own beside each
//! socket's. A socket leaves the table when it ends, and its handler takes
//! over what is left of it ([`Left`]), so the table only ever holds sockets
//! that are serving.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use crate::config::Io;
use crate::table::{Keyed, Rounds, Stamped, Table};
use crate::ws::codec::{self, Decoder, Event, Payload, TextFrame, WsError};
use crate::ws::deflate::Mode;
use crate::ws::goodbye::Exit;
use crate::ws::uring::{Done, Op, Ring, RingError};

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 512;
/// The unit of a socket's opening time: what a connection's logged
/// duration is rounded to.
const TICK: Duration = Duration::from_millis(10);
/// Ticks from `then` to `now`, or 0 when `then` is the later (a read the
/// sweep reaped after it took its clock).
fn ticks_between(then: u32, now: u32) -> u32 {
    match now.wrapping_sub(then) {
        d if d > u32::MAX / 2 => 0,
        d => d,
    }
}

/// A socket whose unsent bytes have not moved for this long is a slow reader.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// The idle Ping: opcode 0x9, FIN, five bytes of payload, `idle?`.
const IDLE_PING: &[u8] = b"\x89\x05idle?";

/// When a silent socket is pinged and closed (`idle_timeout`). Its Ping is
/// due at half the timeout, give or take half a heartbeat: a heartbeat that
/// finds the socket silent for the early edge carries the Ping in its own
/// send, and the sweep sends one alone only past the late edge (heartbeats
/// running late). A heartbeat falls in every window of one heartbeat
/// interval, so on time the Ping always rides one: one send per socket, not
/// two, and after the Pong the next ride is a whole idle half later whatever
/// the timers' jitter. The window is at most half the timeout wide, so the
/// peer always has a quarter of it to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// Silent this long: closed.
    pub close: Duration,
    /// Silent this long at a heartbeat: the Ping goes with it.
    pub ping_with_heartbeat: Duration,
    /// Silent this long at a sweep: the Ping goes alone.
    pub ping_alone: Duration,
}

impl Idle {
    /// None when `timeout` is zero: no Pings and no idle closes.
    pub fn new(timeout: Duration, heartbeat: Duration) -> Option<Self> {
        if timeout.is_zero() {
            return None;
        }
        let half = timeout / 2;
        let give = heartbeat.min(half) / 2;
        Some(Self {
            close: timeout,
            ping_with_heartbeat: half - give,
            ping_alone: half + give,
        })
    }
}

/// How the sweep passes over a shard's sockets. Every round reads the
/// sockets with unsent bytes (a stalled writer is found within a round of
/// its 10 s); only every `full`th round reads every socket, for the checks
/// whose time scale is the idle timeout. While any socket has a deadline of
/// its handler's (a token's `exp`), every round reads them all, so that an
/// expiry is found within a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    pub idle: Option<Idle>,
    /// How long one round takes.
    pub period: Duration,
    /// Rounds from one read of every socket to the next (at least 1).
    pub full: u32,
}

impl Sweep {
    /// A few rounds per idle timeout, between every 250 ms and every
    /// second; every socket read once per 24th of the timeout (a silent
    /// socket is closed at most 4% late), or every round for short ones.
    pub fn new(timeout: Duration, heartbeat: Duration) -> Self {
        let period = if timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            (timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(1))
        };
        let full = (timeout / 24).as_nanos() / period.as_nanos();
        Self {
            idle: Idle::new(timeout, heartbeat),
            period,
            full: full.clamp(1, u128::from(u32::MAX)) as u32,
        }
    }
}

/// What one heartbeat slice sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Sockets that took the frame.
    pub sent: u64,
    /// Of those, sockets whose idle Ping went with it.
    pub pinged: u64,
}

/// io_uring: the socket's multishot receive is armed.
const ARMED: u8 = 1;
/// io_uring: the kernel holds a send of the socket's (`Spill::inflight`).
const SENDING: u8 = 2;
/// io_uring: the socket has bytes queued and is on the plane's list to send.
const QUEUED: u8 = 4;
/// epoll: the events a socket may be registered for, in its one byte.
const IN: u8 = libc::EPOLLIN as u8;
const OUT: u8 = libc::EPOLLOUT as u8;
const _: () = assert!(IN as i32 == libc::EPOLLIN && OUT as i32 == libc::EPOLLOUT);

/// What a socket's messages mean. The plane calls it for every complete
/// text or binary message, asks it at each sweep whether a socket must end
/// for its own reasons, and hands it each socket that left the table.
pub trait Handler: Sized + 'static {
    /// What the handler keeps per socket, beside the transport's state.
    type State;
    /// Where the decoder puts a message's payload.
    type Payload: Payload;

    /// A new socket's payload sink.
    fn payload(&self) -> Self::Payload;

    /// A complete message: replies go into `out` (sent after the wake's
    /// other replies to this socket, in order). [`Flow::Park`] stops reading
    /// this socket until the handler calls [`Plane::resume`].
    fn message(&self, plane: &Rc<Plane<Self>>, msg: Message<'_, Self>, out: &mut Vec<u8>) -> Flow;

    /// Whether the sweep ends the socket for the handler's own reason.
    fn expired(&self, _state: &Self::State, _now: Instant) -> Option<Exit> {
        None
    }

    /// Whether the socket has a deadline that [`Handler::expired`] checks:
    /// while any has, every sweep round reads every socket ([`Sweep`]).
    fn timed(&self, _state: &Self::State) -> bool {
        false
    }

    /// The socket left the table (it is out of the epoll set): its close.
    fn ended(&self, left: Left<Self::State>);
}

/// A complete message, as the plane hands it to its handler.
pub struct Message<'a, H: Handler> {
    pub conn: u64,
    pub binary: bool,
    pub state: &'a mut H::State,
    /// The decoder's sink, holding what it kept of the message.
    pub payload: &'a mut H::Payload,
    /// When the read that completed it returned.
    pub arrived: Instant,
    /// What the socket agreed of permessage-deflate.
    pub deflate: Mode,
}

/// What a message leads to.
pub enum Flow {
    Go,
    /// Reading stops until [`Plane::resume`].
    Park,
    End(Exit),
}

/// A socket that left the table, handed to its handler.
pub struct Left<S> {
    pub conn: u64,
    pub fd: OwnedFd,
    pub state: S,
    pub exit: Exit,
    /// Bytes the kernel had not taken yet when the socket ended.
    pub unsent: Vec<u8>,
    pub opened: Instant,
}

/// One open socket: its descriptor and the few bytes of transport state
/// between reads, and its handler's state.
struct Sock<H: Handler> {
    /// Its connection id: the table finds it by this.
    id: u64,
    fd: OwnedFd,
    decoder: Decoder<H::Payload>,
    /// The bytes it holds between events, only while it holds some.
    spill: Option<Box<Spill>>,
    /// When the peer last sent anything, in the plane's coarse ticks.
    heard: u32,
    /// [`PINGED`], [`WAITING`], [`ENDED`], [`HOT`], [`TIMED`]: one byte for
    /// all, so that the heartbeat's stamp fits with them in the entry's 160
    /// bytes.
    flags: u8,
    /// epoll: the events this socket is registered for (`IN`, `OUT`);
    /// io_uring: which of its operations are in flight (`ARMED`, `SENDING`,
    /// `QUEUED`).
    interest: u8,
    /// The heartbeat round that last visited it ([`Rounds`]).
    beat: u8,
    /// When it opened, in the plane's coarse ticks ([`Plane::ticks`]): four
    /// bytes where an `Instant` takes sixteen.
    opened: u32,
    state: H::State,
}

/// What a socket holds only while it has some: boxed apart, so an idle
/// socket pays one pointer for it (its table entry stays in a smaller
/// allocation class), and given back once empty.
#[derive(Default)]
struct Spill {
    /// An incomplete frame head (or, while the socket is parked, the bytes
    /// after the message that waits): decoded before the next read.
    partial: Vec<u8>,
    /// Bytes the kernel would not take yet, in order (io_uring: the bytes
    /// queued behind `inflight`, or for the loop turn's send).
    backlog: Vec<u8>,
    /// io_uring: the bytes of the send in flight, which the kernel reads
    /// until its completion: never touched meanwhile.
    inflight: Vec<u8>,
    /// io_uring: the plane's reap count when that send was submitted.
    sent_turn: u32,
    /// Frames appended to a non-empty backlog, against `outbound_frames`.
    backlog_frames: u32,
    /// When the backlog last stopped moving.
    stalled_since: Option<Instant>,
}

impl Spill {
    fn holds_nothing(&self) -> bool {
        self.partial.is_empty() && self.backlog.is_empty() && self.inflight.is_empty()
    }

    /// How many bytes its buffers keep allocated.
    fn capacity(&self) -> usize {
        self.partial.capacity() + self.backlog.capacity() + self.inflight.capacity()
    }

    /// io_uring: the kernel took `res` bytes of the send in flight (none
    /// for an error); returns how many left it.
    fn took(&mut self, res: i32) -> usize {
        let took = usize::try_from(res).unwrap_or(0).min(self.inflight.len());
        self.inflight.drain(..took);
        took
    }
}

impl<H: Handler> Keyed for Sock<H> {
    type Key = u64;
    fn key(&self) -> &u64 {
        &self.id
    }
}

impl<H: Handler> Stamped for Sock<H> {
    fn stamp(&mut self) -> &mut u8 {
        &mut self.beat
    }
}

/// Emptied spills a plane keeps for reuse, and the most buffer capacity a
/// kept one may hold: under load nearly every reply takes a spill and gives
/// it back a loop turn later (io_uring: the bytes wait for the turn's
/// submission, then for the send's completion), and a kept one spares two
/// allocations and two frees per reply. A few KiB per shard at most.
const SPARES: usize = 32;
const SPARE_BYTES: usize = 1024;

/// A Ping went out since the peer last sent anything.
const PINGED: u8 = 1;
/// Parked by its handler: reading waits for [`Plane::resume`].
const WAITING: u8 = 2;
/// The socket has ended and waits in `Plane::ended` to leave the table.
const ENDED: u8 = 4;
/// On `Plane::hot`: it had bytes the kernel had not taken.
const HOT: u8 = 8;
/// Its handler gave it a deadline: counted in `Plane::timed`.
const TIMED: u8 = 16;

impl<H: Handler> Sock<H> {
    fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    fn partial(&self) -> &[u8] {
        self.spill.as_ref().map_or(&[], |s| &s.partial)
    }

    fn has_backlog(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| !s.backlog.is_empty())
    }

    fn stalled_since(&self) -> Option<Instant> {
        self.spill.as_ref().and_then(|s| s.stalled_since)
    }
}

/// One of `of` parts of the socket table, by position in its slots.
/// Periodic walks (heartbeats, the sweep) visit one part per tick: a walk
/// over 10,000 sockets at once held the shard for milliseconds, and every
/// message waiting behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    index: u64,
    of: u64,
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

    /// Part `index` of `of` (at least 1).
    pub fn new(index: u64, of: u64) -> Self {
        Self {
            index,
            of: of.max(1),
        }
    }

    pub fn index(self) -> u64 {
        self.index
    }

    pub fn of(self) -> u64 {
        self.of
    }
}

/// The transport's limits, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest message, in bytes (1009 past it).
    pub max_message: usize,
    /// Frames a socket may have queued behind what the kernel would not
    /// take; past it the socket is a slow reader.
    pub outbound_frames: u32,
    /// The shard's one receive buffer.
    pub read_buffer: usize,
    /// With permessage-deflate, text frames under this many bytes go
    /// uncompressed.
    pub deflate_min: usize,
    /// How the plane reaches the kernel.
    pub io: Io,
}

impl Limits {
    /// The service's transport limits, whatever the handler.
    pub fn of(cfg: &crate::config::Config) -> Self {
        Self {
            max_message: cfg.max_message_bytes,
            outbound_frames: cfg.outbound_queue as u32,
            read_buffer: cfg.read_buffer_bytes,
            deflate_min: cfg.deflate_min_bytes,
            io: cfg.io,
        }
    }
}

/// How a plane waits and moves bytes.
enum Kernel {
    Epoll(OwnedFd),
    // Boxed: the ring is 320 bytes and the enum is matched on every call.
    Uring(Box<RefCell<Ring>>),
}

/// A socket that left the table under io_uring while the kernel still held
/// an operation of its: handed over once the last one completed, so its
/// bytes are not read by anyone else and its unsent bytes are known.
struct Closing<H: Handler> {
    sock: Box<Sock<H>>,
    exit: Exit,
}

/// A shard's sockets of one handler, and how it reaches the kernel.
pub struct Plane<H: Handler> {
    handler: H,
    kernel: Kernel,
    socks: RefCell<Table<Box<Sock<H>>>>,
    /// The heartbeat's rounds over `socks`.
    beats: Rounds,
    /// Sockets that had bytes the kernel had not taken since the sweep last
    /// looked (flag [`HOT`]): each sweep tick checks these for a stall, so
    /// the other sockets are read only at the sweep's full rounds.
    hot: RefCell<Vec<u64>>,
    /// Sockets with flag [`TIMED`].
    timed: Cell<usize>,
    /// Emptied spills, for the next socket that needs one ([`SPARES`]).
    /// The boxes themselves are what is kept: a socket holds its spill
    /// boxed, and a `Vec<Spill>` would cost an allocation at each reuse.
    #[allow(clippy::vec_box)]
    spares: RefCell<Vec<Box<Spill>>>,
    /// The sweep's rounds so far.
    sweeps: Cell<u32>,
    /// io_uring: sockets out of the table waiting for their operations.
    closing: RefCell<HashMap<u64, Closing<H>>>,
    /// io_uring: sockets with bytes queued this loop turn.
    queued: RefCell<Vec<u64>>,
    /// io_uring: how many times completions were reaped. A send still in
    /// flight after a reap that followed its submission is one the kernel
    /// would not take at once: only frames queued behind such a send count
    /// against `outbound_frames`, as frames behind a short `send` do on
    /// epoll (a burst behind a send that simply has not been reaped yet is
    /// not a slow reader).
    turn: Cell<u32>,
    /// io_uring: when the current reap began; the time its receives
    /// arrived (one clock read per wake, not one per completion).
    reaped: Cell<Instant>,
    rx: RefCell<Box<[u8]>>,
    /// Replies of the socket being handled.
    out: RefCell<Vec<u8>>,
    /// Sockets that ended while the table was borrowed.
    ended: RefCell<Vec<(u64, Exit)>>,
    /// Set by [`Plane::drain`]: a socket adopted or resumed after it ends.
    draining: Cell<bool>,
    limits: Limits,
    /// Where sockets' coarse ticks count from.
    epoch: Instant,
}

/// Why the plane could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error("epoll_create1: {0}")]
    Epoll(#[from] io::Error),
    #[error(transparent)]
    Uring(#[from] RingError),
}

impl Kernel {
    /// What `io` comes to on this kernel: io_uring when a ring with every
    /// operation the plane uses can be made (the kernel's version and
    /// `kernel.io_uring_disabled` both decide), else, for `auto`, epoll and
    /// why io_uring was not taken.
    fn open(io: Io) -> Result<(Kernel, Option<RingError>), PlaneError> {
        if io == Io::Epoll {
            return Ok((Kernel::Epoll(epoll()?), None));
        }
        match Ring::new() {
            Ok(ring) => Ok((Kernel::Uring(Box::new(RefCell::new(ring))), None)),
            Err(e) if io == Io::Auto => Ok((Kernel::Epoll(epoll()?), Some(e))),
            Err(e) => Err(e.into()),
        }
    }

    fn io(&self) -> Io {
        match self {
            Kernel::Epoll(_) => Io::Epoll,
            Kernel::Uring(_) => Io::Uring,
        }
    }
}

/// What `io` comes to on this kernel, decided once at start so that every
/// shard runs, and reports, the same plane; for `auto`, why io_uring was
/// not taken.
pub fn resolve(io: Io) -> Result<(Io, Option<RingError>), PlaneError> {
    Kernel::open(io).map(|(kernel, why)| (kernel.io(), why))
}

/// What the bytes of one socket led to.
enum Stop {
    Park,
    Exit(Exit),
}

impl<H: Handler> Plane<H> {
    pub fn new(handler: H, limits: Limits) -> Result<Rc<Self>, PlaneError> {
        let (kernel, _) = Kernel::open(limits.io)?;
        Ok(Rc::new(Self {
            handler,
            kernel,
            socks: RefCell::new(Table::default()),
            beats: Rounds::default(),
            hot: RefCell::new(Vec::new()),
            timed: Cell::new(0),
            spares: RefCell::new(Vec::new()),
            sweeps: Cell::new(0),
            closing: RefCell::new(HashMap::new()),
            queued: RefCell::new(Vec::new()),
            turn: Cell::new(0),
            reaped: Cell::new(Instant::now()),
            // A read takes at most this much from one socket; level-triggered
            // epoll reports the socket again while more waits.
            rx: RefCell::new(vec![0u8; limits.read_buffer].into_boxed_slice()),
            out: RefCell::new(Vec::with_capacity(4096)),
            ended: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            limits,
            epoch: Instant::now(),
        }))
    }

    /// `t` in ticks of `TICK` since the plane began, wrapping at `u32`
    /// (every 497 days): a difference of two is right for any span shorter.
    fn ticks(&self, t: Instant) -> u32 {
        let d = t.saturating_duration_since(self.epoch);
        // u64 arithmetic: this runs at every read.
        let ms = d.as_secs().wrapping_mul(1000) + u64::from(d.subsec_millis());
        (ms / TICK.as_millis() as u64) as u32
    }

    /// When a socket opened at `opened` ticks did, as an `Instant`.
    fn opened_at(&self, opened: u32) -> Instant {
        let now = Instant::now();
        let ago = ticks_between(opened, self.ticks(now));
        now.checked_sub(TICK * ago).unwrap_or(self.epoch)
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The way this plane reaches the kernel: `Io::Uring` or `Io::Epoll`.
    pub fn io(&self) -> Io {
        self.kernel.io()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open sockets in the table, and those that left it but wait for the
    /// kernel to let go of them.
    pub fn len(&self) -> usize {
        self.socks.borrow().len() + self.closing.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes an upgraded socket into the table and sends `first` (the 101
    /// and what follows it) as its first bytes; `rest` is what the client
    /// sent after its request head; `deflate` what it agreed of
    /// permessage-deflate. From here on every frame sent to the table
    /// reaches it, in order after `first`.
    pub fn adopt(
        self: &Rc<Self>,
        conn: u64,
        fd: OwnedFd,
        rest: Vec<u8>,
        first: &[u8],
        deflate: Mode,
        state: H::State,
    ) {
        let now = Instant::now();
        let mut decoder = Decoder::with(self.limits.max_message, self.handler.payload());
        decoder.set_deflate(deflate);
        let mut sock = Box::new(Sock {
            id: conn,
            fd,
            decoder,
            spill: (!rest.is_empty()).then(|| {
                Box::new(Spill {
                    partial: rest,
                    ..Spill::default()
                })
            }),
            heard: self.ticks(now),
            flags: 0,
            interest: 0,
            beat: self.beats.fresh(),
            opened: self.ticks(now),
            state,
        });
        self.time(&mut sock);
        if let Err(e) = self.watch(conn, &mut sock) {
            tracing::warn!(error = %e, "epoll_ctl add failed");
            self.end(conn, &mut sock, Exit::Gone);
        } else if let Err(exit) = self.write(conn, &mut sock, first) {
            self.end(conn, &mut sock, exit);
        } else if self.draining.get() {
            // A drain that began while this upgrade waited on Redis.
            self.end(conn, &mut sock, Exit::Drain);
        } else if !sock.partial().is_empty() {
            self.pump(conn, &mut sock, None);
        }
        self.socks.borrow_mut().insert(sock);
        self.close_ended();
    }
    /// Starts watching a new socket: registered with epoll, or its
    /// multishot receive queued.
    fn watch(&self, conn: u64, sock: &mut Sock<H>) -> io::Result<()> {
        match &self.kernel {
            Kernel::Epoll(_) => self.epoll_ctl(libc::EPOLL_CTL_ADD, conn, sock, IN),
            Kernel::Uring(ring) => {
                ring.borrow_mut().recv(conn, sock.fd.as_raw_fd());
                sock.interest |= ARMED;
                Ok(())
            }
        }
    }

    /// The shard's socket loop: waits for the kernel, then handles every
    /// socket it reports. Runs for the life of the shard.
    pub async fn run(self: Rc<Self>) {
        match &self.kernel {
            Kernel::Epoll(fd) => {
                let fd = fd.as_raw_fd();
                self.run_epoll(fd).await
            }
            Kernel::Uring(ring) => {
                let fd = ring.borrow().fd();
                self.run_uring(fd).await
            }
        }
    }

    /// io_uring: handles every completion, submits what that queued (and
    /// reaps what completed in that same call), then waits on the ring.
    async fn run_uring(self: Rc<Self>, fd: RawFd) {
        let mut done = Vec::with_capacity(EVENTS);
        loop {
            loop {
                done.clear();
                self.reap(&mut done);
                if done.is_empty() {
                    break;
                }
                if done.len() == EVENTS {
                    // A full batch: let timers and Redis run before the next one.
                    glommio::executor().yield_if_needed().await;
                }
            }
            if let Err(e) = glommio::net::readable(fd).await {
                tracing::error!(error = %e, "waiting on the socket ring failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// io_uring: handles up to `EVENTS` completions waiting in the ring,
    /// then submits what they queued.
    fn reap(self: &Rc<Self>, done: &mut Vec<Done>) {
        let Kernel::Uring(ring) = &self.kernel else {
            return;
        };
        self.turn.set(self.turn.get().wrapping_add(1));
        self.reaped.set(Instant::now());
        ring.borrow_mut().completions(done, EVENTS);
        for d in done.iter() {
            match d.op {
                Op::Recv => self.received(d),
                Op::Send => self.sent(d),
                Op::Cancel => {}
            }
        }
        self.close_ended();
    }

    /// io_uring: reaps until the ring is empty, outside the loop (a sweep,
    /// the drain); bounded, so a flood of completions cannot hold them.
    fn reap_all(self: &Rc<Self>) {
        let mut done = Vec::with_capacity(EVENTS);
        for _ in 0..64 {
            done.clear();
            self.reap(&mut done);
            if done.is_empty() {
                break;
            }
        }
    }

    /// The epoll loop: waits for the epoll descriptor, then handles every
    /// ready socket.
    async fn run_epoll(self: Rc<Self>, epoll: RawFd) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            if let Err(e) = glommio::net::readable(epoll).await {
                tracing::error!(error = %e, "waiting on the socket table failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            loop {
                // SAFETY: `events` outlives the call and its length is passed.
                let n =
                    unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 0) };
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

    /// io_uring: a receive completed. Its bytes are decoded in the buffer
    /// the kernel filled (kept instead while the socket is parked, or added
    /// to an incomplete frame head); a receive that stopped is armed again
    /// unless the socket is parked or done.
    fn received(self: &Rc<Self>, d: &Done) {
        let Kernel::Uring(ring) = &self.kernel else {
            return;
        };
        let bid = d.buffer();
        let mut socks = self.socks.borrow_mut();
        if let Some(sock) = socks.get_mut(&d.conn) {
            if !d.more() {
                sock.interest &= !ARMED;
            }
            match d.res {
                n if n > 0 && !sock.is(ENDED) => {
                    let bytes = match bid {
                        // SAFETY: the completion took the buffer out of the
                        // ring; it goes back below, after this use.
                        Some(b) => unsafe { ring.borrow().buffer(b, n as usize) },
                        None => &mut [],
                    };
                    let now = self.reaped.get();
                    sock.heard = self.ticks(now);
                    sock.set(PINGED, false);
                    if sock.is(WAITING) {
                        self.spill(sock).partial.extend_from_slice(bytes);
                    } else if !sock.partial().is_empty() {
                        self.spill(sock).partial.extend_from_slice(bytes);
                        self.pump(d.conn, sock, Some(now));
                    } else {
                        self.decode(d.conn, sock, bytes, now);
                    }
                }
                0 => self.end(d.conn, sock, Exit::Gone),
                n if n == -libc::ENOBUFS || n == -libc::ECANCELED => {}
                n if n < 0 => self.end(d.conn, sock, Exit::Gone),
                _ => {}
            }
            if sock.interest & ARMED == 0 && !sock.is(ENDED) && !sock.is(WAITING) {
                ring.borrow_mut().recv(d.conn, sock.fd.as_raw_fd());
                sock.interest |= ARMED;
            }
        } else {
            drop(socks);
            if !d.more() {
                self.let_go(d.conn, ARMED, 0);
            }
        }
        if let Some(b) = bid {
            ring.borrow_mut().give_back(b);
        }
    }

    /// io_uring: a send completed, wholly or in part: the rest goes on, or
    /// what was queued behind it.
    fn sent(&self, d: &Done) {
        let Kernel::Uring(ring) = &self.kernel else {
            return;
        };
        let mut socks = self.socks.borrow_mut();
        let Some(sock) = socks.get_mut(&d.conn) else {
            drop(socks);
            self.let_go(d.conn, SENDING, d.res);
            return;
        };
        sock.interest &= !SENDING;
        if d.res < 0 {
            // What it held stays unsent, for the socket's end.
            self.end(d.conn, sock, Exit::Gone);
            return;
        }
        let spill = self.spill(sock);
        if d.res == 0 && !spill.inflight.is_empty() {
            // Nothing taken and no error: the peer is gone for writes.
            self.end(d.conn, sock, Exit::Gone);
            return;
        }
        if spill.took(d.res) > 0 {
            // Moved: the stall clock stops; a sweep starts it again if the
            // next send waits.
            spill.stalled_since = None;
        }
        self.send_next(d.conn, sock, &mut ring.borrow_mut());
    }

    /// io_uring: starts the socket's next send (what is left of the last
    /// one, else what was queued), unless one is in flight.
    fn send_next(&self, conn: u64, sock: &mut Sock<H>, ring: &mut Ring) {
        if sock.is(ENDED) || sock.interest & SENDING != 0 {
            return;
        }
        let Some(spill) = sock.spill.as_mut() else {
            return;
        };
        if spill.inflight.is_empty() {
            if spill.backlog.is_empty() {
                spill.stalled_since = None;
                spill.backlog_frames = 0;
                self.tidy(sock);
                return;
            }
            std::mem::swap(&mut spill.inflight, &mut spill.backlog);
            spill.backlog_frames = 0;
        }
        spill.sent_turn = self.turn.get();
        // SAFETY: `inflight` is not touched while SENDING is set, and a
        // socket that ends meanwhile waits in `closing` for the completion.
        unsafe {
            ring.send(
                conn,
                sock.fd.as_raw_fd(),
                spill.inflight.as_ptr(),
                spill.inflight.len(),
            )
        };
        sock.interest |= SENDING;
        self.heat(conn, sock);
    }

    /// The socket's spill, made (or taken from the spares) if it had none.
    fn spill<'a>(&self, sock: &'a mut Sock<H>) -> &'a mut Spill {
        sock.spill
            .get_or_insert_with(|| self.spares.borrow_mut().pop().unwrap_or_default())
    }

    /// Takes the socket's spill away once it holds nothing, and keeps it
    /// for another if there is room among the spares.
    fn tidy(&self, sock: &mut Sock<H>) {
        if !sock.spill.as_ref().is_some_and(|s| s.holds_nothing()) {
            return;
        }
        let Some(mut spill) = sock.spill.take() else {
            return;
        };
        let mut spares = self.spares.borrow_mut();
        if spares.len() < SPARES && spill.capacity() <= SPARE_BYTES {
            spill.sent_turn = 0;
            spill.backlog_frames = 0;
            spill.stalled_since = None;
            spares.push(spill);
        }
    }

    /// Puts the socket on the sweep's list of those to check for a stall
    /// at every tick, until its bytes are gone.
    fn heat(&self, conn: u64, sock: &mut Sock<H>) {
        if !sock.is(HOT) {
            sock.set(HOT, true);
            self.hot.borrow_mut().push(conn);
        }
    }

    /// Counts the socket among those with a deadline, if its handler gave
    /// it one. A deadline taken away later leaves it counted: the sweep
    /// only reads more than it needs until the socket ends.
    fn time(&self, sock: &mut Sock<H>) {
        if self.handler.timed(&sock.state) {
            sock.set(TIMED, true);
            self.timed.set(self.timed.get() + 1);
        }
    }

    /// io_uring: an operation of a socket out of the table completed (`op`,
    /// with `res` for a send); the socket is handed over after its last.
    fn let_go(&self, conn: u64, op: u8, res: i32) {
        let mut closing = self.closing.borrow_mut();
        let Some(c) = closing.get_mut(&conn) else {
            return;
        };
        c.sock.interest &= !op;
        if op == SENDING {
            if let Some(spill) = c.sock.spill.as_mut() {
                spill.took(res);
            }
        }
        if c.sock.interest & (ARMED | SENDING) == 0 {
            let Some(c) = closing.remove(&conn) else {
                return;
            };
            drop(closing);
            self.hand_over(conn, *c.sock, c.exit);
        }
    }

    fn on_event(self: &Rc<Self>, conn: u64, events: u32) {
        let mut socks = self.socks.borrow_mut();
        let Some(sock) = socks.get_mut(&conn).filter(|s| !s.is(ENDED)) else {
            return;
        };
        if events & libc::EPOLLOUT as u32 != 0 {
            if let Err(exit) = self.flush_backlog(conn, sock) {
                self.end(conn, sock, exit);
                return;
            }
        }
        let hangup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if sock.is(WAITING) {
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
    fn read(self: &Rc<Self>, conn: u64, sock: &mut Sock<H>) -> bool {
        let mut rx = self.rx.borrow_mut();
        let kept = sock.partial().len();
        if kept >= rx.len() {
            // Kept bytes are a frame head or a control frame, far smaller.
            let e = WsError::Protocol("frame does not fit the buffer");
            self.end(conn, sock, Exit::Invalid(e));
            return false;
        }
        rx[..kept].copy_from_slice(sock.partial());
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
        if let Some(spill) = sock.spill.as_mut() {
            spill.partial.clear();
        }
        let now = Instant::now();
        sock.heard = self.ticks(now);
        sock.set(PINGED, false);
        let end = kept + n as usize;
        self.decode(conn, sock, &mut rx[..end], now);
        true
    }

    /// Decodes the socket's kept bytes alone (after a sync write, or the
    /// frames that came with the upgrade), without a read.
    fn pump(self: &Rc<Self>, conn: u64, sock: &mut Sock<H>, arrived: Option<Instant>) {
        let arrived = arrived.unwrap_or_else(Instant::now);
        let mut rx = self.rx.borrow_mut();
        // Kept bytes fit the buffer but for an upgrade whose first frames
        // came with a large head: take them a buffer at a time.
        while !sock.partial().is_empty() && !sock.is(WAITING) && !sock.is(ENDED) {
            let spill = self.spill(sock);
            let take = spill.partial.len().min(rx.len());
            let tail = spill.partial.split_off(take);
            rx[..take].copy_from_slice(&spill.partial);
            spill.partial.clear();
            self.decode(conn, sock, &mut rx[..take], arrived);
            let stuck = sock.partial().len() == take;
            if !tail.is_empty() {
                self.spill(sock).partial.extend_from_slice(&tail);
            }
            if stuck || tail.is_empty() {
                break;
            }
        }
        self.tidy(sock);
    }

    /// Handles every complete event in `buf`, writes the replies, keeps what
    /// is left, and parks or ends the socket when an event asks for it.
    fn decode(self: &Rc<Self>, conn: u64, sock: &mut Sock<H>, buf: &mut [u8], arrived: Instant) {
        let mut out = self.out.borrow_mut();
        out.clear();
        let (used, stop) = self.events(conn, sock, buf, arrived, &mut out);
        if used < buf.len() {
            self.spill(sock).partial.extend_from_slice(&buf[used..]);
        } else {
            self.tidy(sock);
        }
        let wrote = if out.is_empty() {
            Ok(())
        } else {
            self.write(conn, sock, &out)
        };
        drop(out);
        match (wrote, stop) {
            (Err(exit), _) | (Ok(()), Some(Stop::Exit(exit))) => self.end(conn, sock, exit),
            (Ok(()), Some(Stop::Park)) => self.park(conn, sock),
            (Ok(()), None) => {}
        }
    }

    /// The events in `buf`: returns the bytes used and why it stopped early.
    fn events(
        self: &Rc<Self>,
        conn: u64,
        sock: &mut Sock<H>,
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
            let binary = match ev {
                None if n == 0 => break,
                None => continue,
                Some(Event::Text) => false,
                Some(Event::Binary) => true,
                Some(Event::Ping(r)) => {
                    codec::encode_pong(out, &buf[base + r.start..base + r.end]);
                    continue;
                }
                Some(Event::Pong) => continue,
                Some(Event::Close(code)) => {
                    return (buf.len(), Some(Stop::Exit(Exit::PeerClose(code))))
                }
            };
            let deflate = sock.decoder.deflate();
            let msg = Message {
                conn,
                binary,
                state: &mut sock.state,
                payload: sock.decoder.payload_mut(),
                arrived,
                deflate,
            };
            let flow = self.handler.message(self, msg, out);
            if !sock.is(TIMED) {
                // A refresh may have given it a deadline.
                self.time(sock);
            }
            match flow {
                Flow::Go => {}
                Flow::Park => return (start, Some(Stop::Park)),
                Flow::End(exit) => return (buf.len(), Some(Stop::Exit(exit))),
            }
        }
        (start, None)
    }

    /// The handler parked the socket: reading stops until it resumes it
    /// (io_uring: its receive is cancelled; what completes before the
    /// cancel is kept for the resume).
    fn park(&self, conn: u64, sock: &mut Sock<H>) {
        sock.set(WAITING, true);
        match &self.kernel {
            Kernel::Epoll(_) => {
                let interest = sock.interest & !IN;
                if self.set_interest(conn, sock, interest).is_err() {
                    self.end(conn, sock, Exit::Gone);
                }
            }
            Kernel::Uring(ring) => {
                if sock.interest & ARMED != 0 {
                    ring.borrow_mut().cancel(conn, Op::Recv);
                }
            }
        }
    }

    /// Reading goes on after a park.
    fn unpark(&self, conn: u64, sock: &mut Sock<H>) -> io::Result<()> {
        match &self.kernel {
            Kernel::Epoll(_) => {
                let interest = sock.interest | IN;
                self.set_interest(conn, sock, interest)
            }
            Kernel::Uring(ring) => {
                // An armed receive is the cancelled one: its last completion
                // arms it again.
                if sock.interest & ARMED == 0 {
                    ring.borrow_mut().recv(conn, sock.fd.as_raw_fd());
                    sock.interest |= ARMED;
                }
                Ok(())
            }
        }
    }

    /// The handler's wait for a parked socket is over: `answer` writes what
    /// it owes the socket (into the buffer it is given), then reading goes
    /// on, starting with what the client sent meanwhile. `arrived` is when
    /// those kept bytes were read. Nothing happens for a socket that ended.
    pub fn resume(
        self: &Rc<Self>,
        conn: u64,
        arrived: Instant,
        answer: impl FnOnce(&mut H::State, &mut Vec<u8>),
    ) {
        {
            let mut socks = self.socks.borrow_mut();
            let Some(sock) = socks.get_mut(&conn).filter(|s| !s.is(ENDED)) else {
                return;
            };
            sock.set(WAITING, false);
            let mut out = self.out.borrow_mut();
            out.clear();
            answer(&mut sock.state, &mut out);
            let wrote = self.write(conn, sock, &out);
            drop(out);
            if let Err(exit) = wrote {
                self.end(conn, sock, exit);
            } else if self.unpark(conn, sock).is_err() {
                self.end(conn, sock, Exit::Gone);
            } else {
                self.pump(conn, sock, Some(arrived));
                // A drain waited for this socket; what the client sent
                // before it has been answered now.
                if self.draining.get() && !sock.is(WAITING) {
                    self.end(conn, sock, Exit::Drain);
                }
            }
        }
        self.close_ended();
    }

    /// Sends `bytes` now, or queues them behind what the kernel has not
    /// taken yet (io_uring: queues them for the loop turn's submission, one
    /// send per socket). Err when the socket must end.
    fn write(&self, conn: u64, sock: &mut Sock<H>, bytes: &[u8]) -> Result<(), Exit> {
        if let Kernel::Uring(_) = self.kernel {
            let busy = sock.interest;
            let turn = self.turn.get();
            let spill = self.spill(sock);
            if busy & SENDING != 0 && spill.sent_turn != turn {
                if spill.backlog_frames >= self.limits.outbound_frames {
                    return Err(Exit::SlowReader);
                }
                spill.backlog_frames += 1;
            }
            spill.backlog.extend_from_slice(bytes);
            if busy & (SENDING | QUEUED) == 0 {
                sock.interest |= QUEUED;
                self.queued.borrow_mut().push(conn);
            }
            return Ok(());
        }
        if sock.has_backlog() {
            let spill = self.spill(sock);
            if spill.backlog_frames >= self.limits.outbound_frames {
                return Err(Exit::SlowReader);
            }
            spill.backlog_frames += 1;
            spill.backlog.extend_from_slice(bytes);
            return Ok(());
        }
        let sent = send(sock.fd.as_raw_fd(), bytes).map_err(|_| Exit::Gone)?;
        if sent < bytes.len() {
            let spill = self.spill(sock);
            spill.backlog.extend_from_slice(&bytes[sent..]);
            spill.backlog_frames = 1;
            spill.stalled_since = Some(Instant::now());
            self.heat(conn, sock);
            let interest = sock.interest | OUT;
            self.set_interest(conn, sock, interest)
                .map_err(|_| Exit::Gone)?;
        }
        Ok(())
    }

    /// The kernel has room again: send what waits.
    fn flush_backlog(&self, conn: u64, sock: &mut Sock<H>) -> Result<(), Exit> {
        if !sock.has_backlog() {
            return Ok(());
        }
        let fd = sock.fd.as_raw_fd();
        let spill = self.spill(sock);
        let sent = send(fd, &spill.backlog).map_err(|_| Exit::Gone)?;
        if sent > 0 {
            spill.backlog.drain(..sent);
            spill.stalled_since = Some(Instant::now());
        }
        if spill.backlog.is_empty() {
            spill.backlog = Vec::new();
            spill.backlog_frames = 0;
            spill.stalled_since = None;
            self.tidy(sock);
            let interest = sock.interest & !OUT;
            self.set_interest(conn, sock, interest)
                .map_err(|_| Exit::Gone)?;
        }
        Ok(())
    }

    /// Changes the events the socket is registered for.
    fn set_interest(&self, conn: u64, sock: &mut Sock<H>, events: u8) -> io::Result<()> {
        if events == sock.interest {
            return Ok(());
        }
        self.epoll_ctl(libc::EPOLL_CTL_MOD, conn, sock, events)
    }

    fn epoll_ctl(&self, op: i32, conn: u64, sock: &mut Sock<H>, events: u8) -> io::Result<()> {
        let Kernel::Epoll(epoll) = &self.kernel else {
            return Ok(());
        };
        let mut ev = libc::epoll_event {
            events: u32::from(events),
            u64: conn,
        };
        // SAFETY: both descriptors are open; `ev` lives across the call.
        let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, sock.fd.as_raw_fd(), &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        sock.interest = events;
        Ok(())
    }

    /// Sends an encoded frame to every socket but those in `skip` (sorted);
    /// returns how many took it.
    pub fn fan_out(&self, frame: &[u8], skip: &[u64]) -> u64 {
        self.fan_out_by(skip, |_| frame)
    }

    /// A text frame to every socket but those in `skip` (sorted), each
    /// socket's frame picked by `frame` from its state (a broadcast whose
    /// frame says something of each reader's other channels is encoded once
    /// per kind of reader, not once per socket) and sent compressed to the
    /// sockets that agreed to permessage-deflate (compressed once for all).
    pub fn fan_out_with<'f>(
        &self,
        skip: &[u64],
        frame: impl Fn(&H::State) -> &'f TextFrame,
    ) -> u64 {
        self.fan_out_by(skip, |sock| {
            frame(&sock.state).for_mode(sock.decoder.deflate())
        })
    }

    /// Every socket but those in `skip` (sorted) gets the bytes `frame`
    /// picks for it; returns how many took them.
    fn fan_out_by<'f>(&self, skip: &[u64], frame: impl Fn(&Sock<H>) -> &'f [u8]) -> u64 {
        let mut n = 0;
        for sock in self.socks.borrow_mut().iter_mut() {
            let conn = sock.id;
            if skip.is_empty() || skip.binary_search(&conn).is_err() {
                let f = frame(sock);
                n += u64::from(self.send_frame(conn, sock, f));
            }
        }
        self.close_ended();
        n
    }

    /// A text frame to the sockets named, as [`Plane::fan_out_with`] picks
    /// and compresses it; returns how many took it.
    pub fn send_to_with<'f>(
        &self,
        conns: &[u64],
        frame: impl Fn(&H::State) -> &'f TextFrame,
    ) -> u64 {
        let mut n = 0;
        {
            let mut socks = self.socks.borrow_mut();
            for &conn in conns {
                if let Some(sock) = socks.get_mut(&conn) {
                    let f = frame(&sock.state).for_mode(sock.decoder.deflate());
                    n += u64::from(self.send_frame(conn, sock, f));
                }
            }
        }
        self.close_ended();
        n
    }

    /// `frame` to each socket of one slice of the table (the heartbeat),
    /// with the idle Ping behind it in the same send for a socket `idle`
    /// says is due one, and `took` for each that took it (the counter keeps
    /// those sockets' sessions alive).
    pub fn send_slice(
        &self,
        frame: &[u8],
        slice: Slice,
        idle: Option<Idle>,
        mut took: impl FnMut(u64, &H::State),
    ) -> Beat {
        let mut beat = Beat::default();
        let with_ping = [frame, IDLE_PING].concat();
        let now = self.ticks(Instant::now());
        {
            // By position, exact: each socket once per round of slices,
            // where picking a slice by id read every socket at every tick.
            let mut socks = self.socks.borrow_mut();
            let (index, of) = (slice.index(), slice.of());
            socks.for_part_once(&self.beats, index, of, |sock| {
                let conn = sock.id;
                let ping = idle.is_some_and(|i| {
                    !sock.is(PINGED)
                        && TICK * ticks_between(sock.heard, now) >= i.ping_with_heartbeat
                });
                let bytes = if ping { &with_ping[..] } else { frame };
                if self.send_frame(conn, sock, bytes) {
                    if ping {
                        sock.set(PINGED, true);
                    }
                    beat.sent += 1;
                    beat.pinged += u64::from(ping);
                    took(conn, &sock.state);
                }
            });
        }
        self.close_ended();
        beat
    }

    /// One frame to one socket; false when the socket has ended or ends now.
    fn send_frame(&self, conn: u64, sock: &mut Sock<H>, frame: &[u8]) -> bool {
        if sock.is(ENDED) {
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

    /// Ends every socket whose state `which` picks, for `exit`.
    pub fn end_where(&self, mut which: impl FnMut(&H::State) -> bool, exit: Exit) {
        for sock in self.socks.borrow_mut().iter_mut() {
            let conn = sock.id;
            if which(&sock.state) {
                self.end(conn, sock, exit.clone());
            }
        }
        self.close_ended();
    }

    /// The per-shard sweep, one tick of a round ([`Sweep`]): the sockets
    /// with unsent bytes, checked for a stall; then, at a full round, one
    /// slice of the table: the idle Ping to a socket no heartbeat carried
    /// one to, the idle close ([`Idle`]), stalled writers, and the sockets
    /// the handler says are done (a token that expired: no clock read per
    /// message for it). Returns how many Pings it sent.
    pub fn sweep(self: &Rc<Self>, now: Instant, sweep: &Sweep, slice: Slice) -> u64 {
        if let Kernel::Uring(_) = self.kernel {
            // Completions first, so that a send found in flight below is
            // one the kernel holds, not one whose completion waits to be
            // read. Each reap moves the turn on, even with nothing to reap,
            // so in a plane that is otherwise quiet, frames behind a send
            // the kernel holds count too.
            self.reap_all();
        }
        if slice.index() == 0 {
            self.sweeps.set(self.sweeps.get().wrapping_add(1));
        }
        self.sweep_hot(now);
        let full = self.timed.get() > 0 || self.sweeps.get() % sweep.full.max(1) == 0;
        let pings = if full {
            self.sweep_all(now, sweep.idle, slice)
        } else {
            0
        };
        self.close_ended();
        pings
    }

    /// Checks every socket on the hot list for a stall, and takes off it
    /// those whose bytes are gone. It holds the sockets written since the
    /// last tick (io_uring: every send; epoll: a send the kernel cut short),
    /// so in a quiet shard a tick reads a handful of sockets, not a slice.
    fn sweep_hot(&self, now: Instant) {
        let mut hot = std::mem::take(&mut *self.hot.borrow_mut());
        {
            let mut socks = self.socks.borrow_mut();
            hot.retain(|&conn| {
                let Some(sock) = socks.get_mut(&conn) else {
                    return false;
                };
                if sock.is(ENDED) {
                    return false;
                }
                if self.stalled(sock, now) {
                    self.end(conn, sock, Exit::SlowReader);
                    return false;
                }
                let holds = sock.interest & SENDING != 0 || sock.has_backlog();
                sock.set(HOT, holds);
                holds
            });
        }
        // Nothing above heats a socket, so the list is still empty; a
        // connect storm's list is not kept at its peak.
        if hot.capacity() > 1024 && hot.len() < hot.capacity() / 4 {
            hot.shrink_to(hot.len() * 2);
        }
        *self.hot.borrow_mut() = hot;
    }

    /// Whether the socket's unsent bytes have not moved for `WRITE_STALL`.
    fn stalled(&self, sock: &mut Sock<H>, now: Instant) -> bool {
        if self.send_waits(sock) {
            // io_uring: a send still in flight after a reap that followed
            // it is one the kernel would not take; its stall is timed from
            // the first sweep that finds it so (timing it from the
            // submission would count the time the process was not running,
            // or the CQE not reaped).
            self.spill(sock).stalled_since.get_or_insert(now);
        }
        sock.stalled_since()
            .is_some_and(|t| now.saturating_duration_since(t) >= WRITE_STALL)
    }

    /// A full round's tick: every check, on one slice of the table.
    fn sweep_all(self: &Rc<Self>, now: Instant, idle: Option<Idle>, slice: Slice) -> u64 {
        let mut pings = 0;
        let tick_now = self.ticks(now);
        // By position in the table, not by id: a tick reads its share of
        // the slots, where picking by id read every socket at every tick
        // (19 times a second, a seventh of both CPUs with a million sockets
        // held). A socket the table moves while it grows is visited twice
        // or missed for one period: a Ping, a close or a stall found one
        // sweep late (the heartbeat, which must be exact, makes up for such
        // moves: `Table::for_part_once`).
        let mut socks = self.socks.borrow_mut();
        socks.for_part(slice.index(), slice.of(), |sock| {
            let conn = sock.id;
            if sock.is(ENDED) {
                return;
            }
            if self.stalled(sock, now) {
                self.end(conn, sock, Exit::SlowReader);
                return;
            }
            if let Some(exit) = self.handler.expired(&sock.state, now) {
                self.end(conn, sock, exit);
                return;
            }
            let Some(idle) = idle else {
                return;
            };
            let silent = TICK * ticks_between(sock.heard, tick_now);
            if silent >= idle.close {
                self.end(conn, sock, Exit::Idle);
            } else if silent >= idle.ping_alone && !sock.is(PINGED) {
                sock.set(PINGED, true);
                pings += 1;
                if let Err(exit) = self.write(conn, sock, IDLE_PING) {
                    self.end(conn, sock, exit);
                }
            }
        });
        pings
    }

    /// io_uring: whether the socket's send is still in flight after a reap
    /// that followed its submission.
    fn send_waits(&self, sock: &Sock<H>) -> bool {
        matches!(self.kernel, Kernel::Uring(_))
            && sock.interest & SENDING != 0
            && sock
                .spill
                .as_ref()
                .is_some_and(|s| s.sent_turn != self.turn.get())
    }

    /// The drain: each socket answers what its client already sent (in the
    /// kernel or kept here), then ends for [`Exit::Drain`]. A parked socket
    /// goes when it is resumed; one adopted later goes at once.
    pub fn drain(self: &Rc<Self>) {
        self.draining.set(true);
        let reads = if let Kernel::Uring(_) = self.kernel {
            // What the kernel received and has not reported yet is handled
            // now (a reap runs the kernel's pending completion work).
            self.reap_all();
            0
        } else {
            // Bounded: a client that keeps sending cannot hold the drain.
            16
        };
        for sock in self.socks.borrow_mut().iter_mut() {
            let conn = sock.id;
            for _ in 0..reads {
                if sock.is(WAITING) || sock.is(ENDED) || !self.read(conn, sock) {
                    break;
                }
            }
            if !sock.is(WAITING) {
                self.end(conn, sock, Exit::Drain);
            }
        }
        self.close_ended();
    }

    /// Marks the socket ended for `exit`, unless it already is: the first
    /// reason is the one its close reports.
    fn end(&self, conn: u64, sock: &mut Sock<H>, exit: Exit) {
        if !sock.is(ENDED) {
            sock.set(ENDED, true);
            self.ended.borrow_mut().push((conn, exit));
        }
    }

    /// Takes every socket that ended out of the table and starts its close
    /// (io_uring: once the kernel let go of it), then submits what the loop
    /// turn queued: every public entry ends here.
    fn close_ended(&self) {
        loop {
            let Some((conn, exit)) = self.ended.borrow_mut().pop() else {
                break;
            };
            let Some(sock) = self.socks.borrow_mut().remove(&conn) else {
                continue;
            };
            if sock.is(TIMED) {
                self.timed.set(self.timed.get() - 1);
            }
            match &self.kernel {
                Kernel::Epoll(epoll) => {
                    // SAFETY: both descriptors are open; DEL ignores the event.
                    unsafe {
                        libc::epoll_ctl(
                            epoll.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            sock.fd.as_raw_fd(),
                            std::ptr::null_mut(),
                        );
                    }
                }
                Kernel::Uring(ring) => {
                    let busy = sock.interest & (ARMED | SENDING);
                    if busy != 0 {
                        let mut ring = ring.borrow_mut();
                        if busy & ARMED != 0 {
                            ring.cancel(conn, Op::Recv);
                        }
                        if busy & SENDING != 0 {
                            ring.cancel(conn, Op::Send);
                        }
                        self.closing
                            .borrow_mut()
                            .insert(conn, Closing { sock, exit });
                        continue;
                    }
                }
            }
            self.hand_over(conn, *sock, exit);
        }
        self.submit();
    }

    /// The socket's handler takes over what is left of it: what the kernel
    /// did not take (the rest of a send in flight, then what was queued).
    fn hand_over(&self, conn: u64, sock: Sock<H>, exit: Exit) {
        let Sock {
            fd,
            state,
            spill,
            opened,
            ..
        } = sock;
        let unsent = spill
            .map(|s| {
                let Spill {
                    mut inflight,
                    backlog,
                    ..
                } = *s;
                if inflight.is_empty() {
                    backlog
                } else {
                    inflight.extend_from_slice(&backlog);
                    inflight
                }
            })
            .unwrap_or_default();
        self.handler.ended(Left {
            conn,
            fd,
            state,
            exit,
            unsent,
            opened: self.opened_at(opened),
        });
    }

    /// io_uring: the queued sockets' sends, and every operation queued, go
    /// to the kernel in one `io_uring_enter`.
    fn submit(&self) {
        let Kernel::Uring(ring) = &self.kernel else {
            return;
        };
        let mut ring = ring.borrow_mut();
        {
            let mut socks = self.socks.borrow_mut();
            for conn in self.queued.borrow_mut().drain(..) {
                if let Some(sock) = socks.get_mut(&conn) {
                    sock.interest &= !QUEUED;
                    self.send_next(conn, sock, &mut ring);
                }
            }
        }
        ring.submit();
    }
}

/// A new epoll descriptor.
fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// One non-blocking send; a full socket buffer sends 0.
fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
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

/// The size of a socket's table entry, for the handler's size test.
#[cfg(test)]
pub fn sock_size<H: Handler>() -> usize {
    std::mem::size_of::<Sock<H>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use shardcast_kit::wire::{self, RawFrame};

    use crate::ws::echo::Keep;

    #[test]
    fn the_idle_ping_is_the_codecs_ping() {
        let mut ping = Vec::new();
        codec::encode_ping(&mut ping, b"idle?");
        assert_eq!(IDLE_PING, &ping[..]);
    }

    #[test]
    fn the_idle_ping_window_is_half_a_heartbeat_around_the_half() {
        let s = Duration::from_secs;
        assert_eq!(Idle::new(Duration::ZERO, s(30)), None);
        let i = Idle::new(s(120), s(30)).unwrap();
        assert_eq!(
            (i.ping_with_heartbeat, i.ping_alone, i.close),
            (s(45), s(75), s(120))
        );
        // Heartbeats slower than half the timeout: the window is half of
        // that, and the peer still has a quarter of the timeout to answer.
        let i = Idle::new(s(4), s(30)).unwrap();
        assert_eq!((i.ping_with_heartbeat, i.ping_alone), (s(1), s(3)));
        assert!(i.close - i.ping_alone >= s(4) / 4);
    }

    /// A handler for the transport's own tests: answers `got:<message>`,
    /// parks on `park` (resumed 50 ms later with `resumed`), ends the socket
    /// on `end`, and records every socket that leaves with its exit.
    #[derive(Default)]
    struct Probe {
        left: RefCell<Vec<String>>,
    }

    impl Handler for Probe {
        type State = ();
        type Payload = Keep;

        fn payload(&self) -> Keep {
            Keep::default()
        }

        fn message(
            &self,
            plane: &Rc<Plane<Self>>,
            msg: Message<'_, Self>,
            out: &mut Vec<u8>,
        ) -> Flow {
            let (_, text) = msg.payload.take_done().expect("a complete message");
            match &text[..] {
                b"park" => {
                    let (plane, conn, arrived) = (plane.clone(), msg.conn, msg.arrived);
                    glommio::spawn_local(async move {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                        plane.resume(conn, arrived, |_, out| codec::encode_text(out, b"resumed"));
                    })
                    .detach();
                    Flow::Park
                }
                b"end" => Flow::End(Exit::Kick),
                _ => {
                    codec::encode_text(out, &[b"got:", &text[..]].concat());
                    Flow::Go
                }
            }
        }

        fn ended(&self, left: Left<()>) {
            self.left.borrow_mut().push(format!("{:?}", left.exit));
        }
    }

    /// One executor at a time: each locks memory for its rings, and a user's
    /// memlock limit is 8 MiB.
    static EXECUTOR: Mutex<()> = Mutex::new(());

    /// Runs a plane of `Probe` with one socket, whose peer `client` drives
    /// from a thread of its own (blocking reads there cannot stall the
    /// plane); `during` runs on the plane's executor while the client works.
    /// Returns what the client returned and the exits `Probe` recorded.
    fn with_plane<T: Send + 'static>(
        io: Io,
        outbound_frames: u32,
        client: impl FnOnce(UnixStream) -> T + Send + 'static,
        during: impl Fn(&Rc<Plane<Probe>>) + 'static,
    ) -> (T, Vec<String>) {
        let _turn = EXECUTOR.lock().unwrap_or_else(|e| e.into_inner());
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        ours.set_nonblocking(true).unwrap();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(64)
            .make()
            .unwrap()
            .run(async move {
                let limits = Limits {
                    max_message: 1 << 20,
                    outbound_frames,
                    read_buffer: 16 << 10,
                    deflate_min: 128,
                    io,
                };
                let plane = Plane::new(Probe::default(), limits).unwrap();
                assert_eq!(plane.io(), io, "the plane runs what it was asked");
                glommio::spawn_local(plane.clone().run()).detach();
                plane.adopt(7, OwnedFd::from(ours), Vec::new(), b"", Mode::Off, ());
                let peer = std::thread::spawn(move || client(theirs));
                while !peer.is_finished() {
                    during(&plane);
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                let got = peer.join().unwrap();
                // The client hung up: the plane sees it at its next wake.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !plane.is_empty() {
                    assert!(Instant::now() < deadline, "the socket never left the table");
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                let left = plane.handler().left.borrow().clone();
                (got, left)
            })
    }

    /// Reads until `n` whole frames came, each as (opcode, payload).
    fn frames(s: &mut UnixStream, n: usize) -> Vec<(u8, Vec<u8>)> {
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        while got.len() < n {
            if let Some((RawFrame { first, payload }, used)) = wire::raw_frame(&buf).unwrap() {
                got.push((first & 0x0F, payload.to_vec()));
                buf.drain(..used);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).expect("the plane answered in time");
            assert!(k > 0, "the plane hung up after {got:?}");
            buf.extend_from_slice(&chunk[..k]);
        }
        got
    }

    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// A text frame of `len` bytes of `x`.
    fn text_of(len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        codec::encode_text(&mut f, &vec![b'x'; len]);
        f
    }

    /// A client that never reads: it holds the socket until `gone` is set
    /// (by the plane's side, once the plane let go of it), at most 10 s.
    fn never_reads(gone: Arc<AtomicBool>) -> impl FnOnce(UnixStream) + Send + 'static {
        move |s| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gone.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the plane never let go of it");
                std::thread::sleep(Duration::from_millis(2));
            }
            drop(s);
        }
    }

    /// Every test of the transport runs on both ways to the kernel.
    const PLANES: [Io; 2] = [Io::Uring, Io::Epoll];

    #[test]
    fn a_message_cut_anywhere_is_one_message_and_replies_keep_order() {
        for io in PLANES {
            let (got, left) = with_plane(
                io,
                64,
                |mut s| {
                    let mut bytes = Vec::new();
                    wire::text_frame(&mut bytes, b"hello", MASK);
                    wire::masked(&mut bytes, 0x89, b"are you there", MASK);
                    wire::text_frame(&mut bytes, b"world", MASK);
                    // Cut inside the head, inside the payload, between frames.
                    for piece in [&bytes[..1], &bytes[1..4], &bytes[4..9], &bytes[9..]] {
                        s.write_all(piece).unwrap();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    frames(&mut s, 3)
                },
                |_| {},
            );
            assert_eq!(
                got,
                vec![
                    (0x1, b"got:hello".to_vec()),
                    (0xA, b"are you there".to_vec()),
                    (0x1, b"got:world".to_vec()),
                ]
            );
            assert_eq!(left, vec!["Gone"], "the client hung up");
        }
    }

    #[test]
    fn a_parked_socket_reads_nothing_until_its_handler_resumes_it() {
        for io in PLANES {
            let (got, _) = with_plane(
                io,
                64,
                |mut s| {
                    let mut bytes = Vec::new();
                    wire::text_frame(&mut bytes, b"park", MASK);
                    wire::text_frame(&mut bytes, b"after", MASK);
                    s.write_all(&bytes).unwrap();
                    frames(&mut s, 2)
                },
                |_| {},
            );
            assert_eq!(
                got,
                vec![(0x1, b"resumed".to_vec()), (0x1, b"got:after".to_vec())],
                "what came after the parked message waited for the resume"
            );
        }
    }

    #[test]
    fn a_close_or_the_handler_ends_the_socket_with_its_reason() {
        for io in PLANES {
            let (_, left) = with_plane(
                io,
                64,
                |mut s| {
                    let mut bytes = Vec::new();
                    wire::close_frame(&mut bytes, 1000, MASK);
                    s.write_all(&bytes).unwrap();
                    // The plane ends the socket and hands it over: nothing more
                    // comes, and the peer sees the end once the probe drops it.
                    let mut b = [0u8; 16];
                    s.read(&mut b).unwrap()
                },
                |_| {},
            );
            assert_eq!(left, vec!["PeerClose(Some(1000))"]);
            let (_, left) = with_plane(
                io,
                64,
                |mut s| {
                    let mut bytes = Vec::new();
                    wire::text_frame(&mut bytes, b"end", MASK);
                    s.write_all(&bytes).unwrap();
                    let mut b = [0u8; 16];
                    s.read(&mut b).unwrap()
                },
                |_| {},
            );
            assert_eq!(left, vec!["Kick"]);
        }
    }

    #[test]
    fn a_peer_that_stops_reading_is_ended_as_a_slow_reader() {
        for io in PLANES {
            let frame = text_of(64 << 10);
            // The client never reads; it waits until the plane gave up on it.
            let gone = Arc::new(AtomicBool::new(false));
            let (_, left) = with_plane(io, 4, never_reads(gone.clone()), move |plane| {
                if plane.is_empty() {
                    gone.store(true, Ordering::SeqCst);
                } else {
                    plane.fan_out(&frame, &[]);
                    // As the shard's walk does: on io_uring, frames
                    // count once a reap found the send still held.
                    let sweep = Sweep {
                        idle: None,
                        period: Duration::from_secs(1),
                        full: u32::MAX,
                    };
                    plane.sweep(Instant::now(), &sweep, Slice::new(0, 1));
                }
            });
            assert_eq!(left, vec!["SlowReader"]);
        }
    }

    #[test]
    fn a_send_that_stops_moving_is_found_without_a_full_round() {
        for io in PLANES {
            // One frame, more than the socket's buffers take; the client
            // never reads it.
            let frame = text_of(4 << 20);
            let gone = Arc::new(AtomicBool::new(false));
            let sweeps = Cell::new(0u32);
            let (_, left) = with_plane(io, 1000, never_reads(gone.clone()), move |plane| {
                if plane.is_empty() {
                    gone.store(true, Ordering::SeqCst);
                    return;
                }
                let n = sweeps.get();
                sweeps.set(n + 1);
                if n == 0 {
                    plane.fan_out(&frame, &[]);
                    return;
                }
                // No full round ever: only the hot list can find it. The
                // first sweeps start its stall clock; a later one comes
                // as if the stall had lasted past its limit.
                let sweep = Sweep {
                    idle: None,
                    period: Duration::from_secs(1),
                    full: u32::MAX,
                };
                let later = if n < 3 { Duration::ZERO } else { WRITE_STALL };
                plane.sweep(Instant::now() + later, &sweep, Slice::new(0, 1));
            });
            assert_eq!(left, vec!["SlowReader"], "{io:?}");
        }
    }

    #[test]
    fn an_emptied_spill_is_kept_clean_for_the_next_and_a_large_one_is_not() {
        for io in PLANES {
            let done = Arc::new(AtomicBool::new(false));
            with_plane(io, 4, never_reads(done.clone()), move |plane| {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                plane.spares.borrow_mut().clear();
                let mut socks = plane.socks.borrow_mut();
                let sock = socks.get_mut(&7).expect("the socket");
                let spill = plane.spill(sock);
                spill.backlog.extend_from_slice(b"unsent");
                (spill.backlog_frames, spill.sent_turn) = (3, 9);
                spill.stalled_since = Some(Instant::now());
                plane.tidy(sock);
                assert!(sock.spill.is_some(), "a spill with bytes stays");
                plane.spill(sock).backlog.clear();
                plane.tidy(sock);
                assert!(sock.spill.is_none());
                assert_eq!(plane.spares.borrow().len(), 1, "kept");
                let again = plane.spill(sock);
                assert!(again.backlog.capacity() > 0, "the kept one, reused");
                assert_eq!(
                    (again.backlog_frames, again.sent_turn, again.stalled_since),
                    (0, 0, None),
                    "nothing of its last socket's state"
                );
                again.inflight.reserve(SPARE_BYTES + 1);
                plane.tidy(sock);
                assert!(plane.spares.borrow().is_empty(), "too large to keep");
                done.store(true, Ordering::SeqCst);
            });
        }
    }

    #[test]
    fn a_silent_socket_is_closed_at_the_first_full_round() {
        for io in PLANES {
            let (rounds, started) = (Rc::new(Cell::new(0u32)), Cell::new(None::<Instant>));
            let seen = rounds.clone();
            let (eof, left) = with_plane(
                io,
                4,
                |mut s| {
                    let mut b = [0u8; 16];
                    s.read(&mut b).unwrap()
                },
                move |plane| {
                    // Silent for longer than the timeout before the first round.
                    let t = started.get().unwrap_or_else(Instant::now);
                    started.set(Some(t));
                    if t.elapsed() < Duration::from_millis(40) || seen.get() == 3 {
                        return;
                    }
                    let idle = Idle {
                        close: Duration::from_millis(10),
                        ping_with_heartbeat: Duration::from_secs(60),
                        ping_alone: Duration::from_secs(60),
                    };
                    let sweep = Sweep {
                        idle: Some(idle),
                        period: Duration::from_secs(1),
                        full: 3,
                    };
                    plane.sweep(Instant::now(), &sweep, Slice::new(0, 1));
                    seen.set(seen.get() + 1);
                    assert_eq!(
                        plane.socks.borrow().len(),
                        usize::from(seen.get() < 3),
                        "round {}: closed only at the full one",
                        seen.get()
                    );
                },
            );
            assert_eq!((eof, left), (0, vec!["Idle".to_string()]));
        }
    }

    #[test]
    fn a_sweep_reads_every_socket_a_few_times_per_idle_timeout() {
        let s = Duration::from_secs;
        let sweep = Sweep::new(s(120), s(30));
        assert_eq!((sweep.period, sweep.full), (s(1), 5));
        assert_eq!(sweep.idle, Idle::new(s(120), s(30)));
        // Short timeouts: every round is full, as often as four a timeout.
        let sweep = Sweep::new(s(2), s(30));
        assert_eq!((sweep.period, sweep.full), (Duration::from_millis(500), 1));
        assert_eq!(Sweep::new(Duration::ZERO, s(30)).full, 1);
        assert_eq!(Sweep::new(s(60), s(30)).full, 2);
    }

    #[test]
    fn silence_in_ticks_is_never_negative_and_survives_the_wrap() {
        assert_eq!(ticks_between(100, 350), 250);
        // Heard after the sweep took its clock: no silence, not 497 days.
        assert_eq!(ticks_between(351, 350), 0);
        // The counter wrapped between the read and the sweep.
        assert_eq!(ticks_between(u32::MAX - 4, 5), 10);
    }

    #[test]
    fn small_tables_and_short_periods_take_one_part_or_few() {
        assert_eq!(Slice::parts(10, 64, Duration::from_secs(30)), 1);
        assert_eq!(Slice::parts(0, 64, Duration::from_millis(100)), 1);
        // 100 ms cannot be cut into ticks under 5 ms.
        assert_eq!(Slice::parts(100_000, 64, Duration::from_millis(100)), 20);
    }
}
