//! One worker process: its share of the sockets on one thread and one epoll
//! set, non-blocking, with no allocation per message. It checks every answer
//! against what the socket expects, prints a tick line every 250 ms and a
//! result line at the end on stdout, and takes `go` and `stop` from stdin.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use crate::epoll::{self, Epoll};
use crate::plan::{Load, OnGo, Plan};
use crate::reply::{self, Reply, ID_LEN};
use crate::stats::{self, Counters, Fault, Faults, WorkerResult};
use crate::sys::now_ns;
use crate::wire::{self, Frame};

const STDIN: u64 = u64::MAX;
const TICK_NS: u64 = 250_000_000;
/// Most open-loop sends in one pass, so replies keep being read when behind.
const BATCH: u32 = 1024;
/// Most connects started in one pass of the loop.
const CONNECT_BURST: u32 = 64;
/// Faults described on stderr per worker; the rest are only counted.
const FAULT_LINES: u32 = 10;

/// A line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Line {
    Tick {
        c: Counters,
        faults: u64,
        /// The slowest reply since the previous tick, in nanoseconds.
        #[serde(default)]
        rtt_max_ns: u64,
    },
    /// Every socket of the current phase is open (and primed) or has failed.
    Ready {
        at_ns: u64,
    },
    Done(Box<WorkerResult>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Not started, or waiting to reconnect at `due`.
    Waiting,
    Connecting,
    Upgrading,
    /// Upgraded, waiting for the welcome.
    Welcoming,
    Open,
    /// A Close is out (ours or our echo of the server's); waiting for the end.
    Closing,
    Done,
}

struct Conn {
    sock: Option<Socket>,
    st: St,
    mask: [u8; 4],
    /// Input not yet parsed: an unfinished upgrade answer or frame.
    inbuf: Vec<u8>,
    /// Output the socket has not taken yet.
    pending: Vec<u8>,
    session: Option<[u8; ID_LEN]>,
    resuming: bool,
    welcomed: bool,
    acked: u64,
    /// Send stamps (scheduled ones in open loop) of messages not yet answered.
    inflight: VecDeque<u64>,
    /// When the current state began.
    since: u64,
    /// Next mix send or reconnect.
    due: u64,
    chatter: bool,
    bye: Option<(bool, Option<u64>)>,
    echoed: bool,
    close_when_idle: bool,
    settled: bool,
    /// A resume is proven once its first message after the welcome is answered.
    verifying: bool,
    /// When the server's drain Close arrived, until the socket is back.
    drained_at: u64,
    /// Closing by choice (mix churn), to come back with its session id.
    churning: bool,
}

impl Conn {
    fn new(mask: [u8; 4], chatter: bool) -> Conn {
        Conn {
            sock: None,
            st: St::Waiting,
            mask,
            inbuf: Vec::new(),
            pending: Vec::new(),
            session: None,
            resuming: false,
            welcomed: false,
            acked: 0,
            inflight: VecDeque::new(),
            since: 0,
            due: u64::MAX,
            chatter,
            bye: None,
            echoed: false,
            close_when_idle: false,
            settled: false,
            verifying: false,
            drained_at: 0,
            churning: false,
        }
    }
}

struct OpenLoop {
    t0: u64,
    interval_ns: f64,
    k: u64,
}

impl OpenLoop {
    fn due(&self) -> u64 {
        self.t0 + (self.k as f64 * self.interval_ns) as u64
    }
}

pub struct Worker {
    plan: Plan,
    ep: Epoll,
    conns: Vec<Conn>,
    rng: SmallRng,
    payload: Vec<u8>,
    accept: String,
    out: Vec<u8>,
    scratch: Vec<u8>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    now: u64,
    next_tick: u64,
    ramp: Option<OpenLoop>,
    open: Option<OpenLoop>,
    unsettled: u32,
    c: Counters,
    faults: Faults,
    fault_lines: u32,
    rtt: hdrhistogram::Histogram<u64>,
    /// The slowest reply since the last tick, so a stall shows in time.
    rtt_max_ns: u64,
    connect: hdrhistogram::Histogram<u64>,
    reconnect: hdrhistogram::Histogram<u64>,
    window: Option<(u64, u64)>,
    window_result: (u64, u64),
    first_connect_ns: u64,
    last_open_ns: u64,
    last_resume_ns: u64,
    last_close_ns: u64,
    loading: bool,
    stopping: bool,
    stop_deadline: u64,
    done: u32,
    stdin_buf: Vec<u8>,
}

impl Worker {
    pub fn new(plan: Plan) -> io::Result<Worker> {
        let mut rng = SmallRng::seed_from_u64(plan.seed);
        let share = match plan.load {
            Load::Mix { chatter_share, .. } => chatter_share,
            _ => 1.0,
        };
        let conns = (0..plan.sockets)
            .map(|_| Conn::new(rng.random(), rng.random_bool(share.clamp(0.0, 1.0))))
            .collect();
        let payload = (0..plan.payload).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Worker {
            ep: Epoll::new()?,
            conns,
            rng,
            payload,
            accept: wire::expected_accept(),
            out: Vec::with_capacity(64 << 10),
            scratch: vec![0; 64 << 10],
            heap: BinaryHeap::new(),
            now: now_ns(),
            next_tick: 0,
            ramp: None,
            open: None,
            unsettled: plan.sockets,
            c: Counters::default(),
            faults: Faults::default(),
            fault_lines: 0,
            rtt: stats::histogram(),
            rtt_max_ns: 0,
            connect: stats::histogram(),
            reconnect: stats::histogram(),
            window: None,
            window_result: (0, 0),
            first_connect_ns: 0,
            last_open_ns: 0,
            last_resume_ns: 0,
            last_close_ns: 0,
            loading: true,
            stopping: false,
            stop_deadline: u64::MAX,
            done: 0,
            stdin_buf: Vec::new(),
            plan,
        })
    }

    /// Runs until `stop` (or stdin closing) and every socket is finished.
    pub fn run(mut self) -> io::Result<WorkerResult> {
        set_nonblocking(0)?;
        self.ep.add_input(0, STDIN)?;
        self.now = now_ns();
        self.next_tick = self.now + TICK_NS;
        // "All at once" still goes in bursts with the event loop between
        // them: a connect() on loopback runs the whole TCP handshake inside
        // the syscall, and 10,000 of them in one go would hold back every
        // upgrade request until the last one, timing the generator.
        self.ramp = Some(OpenLoop {
            t0: self.now,
            interval_ns: if self.plan.connect_rate > 0.0 {
                1e9 / self.plan.connect_rate
            } else {
                0.0
            },
            k: 0,
        });
        let mut events = Vec::with_capacity(1024);
        loop {
            self.now = now_ns();
            self.run_schedules();
            if self.now >= self.next_tick {
                self.tick();
            }
            if self.stopping
                && (self.done as usize == self.conns.len() || self.now >= self.stop_deadline)
            {
                break;
            }
            let timeout = self.next_deadline().saturating_sub(self.now);
            self.ep.wait(&mut events, Some(timeout))?;
            self.now = now_ns();
            for ev in events.iter() {
                let (token, bits) = (ev.u64, ev.events);
                if token == STDIN {
                    self.read_commands();
                } else {
                    self.on_event(token as usize, bits);
                }
            }
        }
        for i in 0..self.conns.len() {
            if self.conns[i].st != St::Done {
                self.finish(i, Some((Fault::CloseTimeout, "still open at the end")));
            }
        }
        Ok(self.result())
    }

    fn result(&self) -> WorkerResult {
        WorkerResult {
            counters: self.c,
            faults: self.faults.clone(),
            window_replies: self.window_result.0,
            window_sent: self.window_result.1,
            rtt: stats::to_pairs(&self.rtt),
            connect: stats::to_pairs(&self.connect),
            reconnect: stats::to_pairs(&self.reconnect),
            first_connect_ns: self.first_connect_ns,
            last_open_ns: self.last_open_ns,
            last_resume_ns: self.last_resume_ns,
            last_close_ns: self.last_close_ns,
        }
    }

    fn next_deadline(&self) -> u64 {
        let mut t = self.next_tick;
        if let Some(Reverse((due, _))) = self.heap.peek() {
            t = t.min(*due);
        }
        if let Some(o) = &self.open {
            t = t.min(o.due());
        }
        if let Some(r) = &self.ramp {
            t = t.min(r.due());
        }
        t
    }

    fn run_schedules(&mut self) {
        if let Some(mut r) = self.ramp.take() {
            let mut burst = 0;
            while r.k < self.conns.len() as u64 && r.due() <= self.now && burst < CONNECT_BURST {
                self.start_connect(r.k as usize);
                r.k += 1;
                burst += 1;
            }
            if r.k < self.conns.len() as u64 {
                self.ramp = Some(r);
            }
        }
        if let Some(mut o) = self.open.take() {
            let n = self.conns.len() as u64;
            let mut sent = 0;
            while sent < BATCH && o.due() <= self.now {
                let i = (o.k % n) as usize;
                if self.conns[i].st == St::Open {
                    let at = o.due();
                    self.send(i, 1, at);
                } else {
                    self.c.skipped += 1;
                }
                o.k += 1;
                sent += 1;
            }
            self.open = Some(o);
        }
        while let Some(&Reverse((due, i))) = self.heap.peek() {
            if due > self.now {
                break;
            }
            self.heap.pop();
            let i = i as usize;
            if self.conns[i].due != due {
                continue;
            }
            self.conns[i].due = u64::MAX;
            match self.conns[i].st {
                St::Waiting if !self.stopping => self.start_connect(i),
                St::Open if self.loading && !self.stopping => {
                    self.send(i, 1, self.now);
                    let churn = match self.plan.load {
                        Load::Mix { churn, .. } => churn,
                        _ => 0.0,
                    };
                    if churn > 0.0 && self.rng.random_bool(churn.min(1.0)) {
                        // Closes once this send is answered; on_eof brings it back.
                        let c = &mut self.conns[i];
                        c.close_when_idle = true;
                        c.churning = true;
                    } else {
                        self.schedule_mix(i, false);
                    }
                }
                _ => {}
            }
        }
    }

    /// Schedules a mix socket's next send: chatters every 2-10 s, lurkers
    /// every 30-120 s. The first send lands anywhere in the socket's interval,
    /// so a ramp does not turn into synchronized waves.
    fn schedule_mix(&mut self, i: usize, first: bool) {
        let (lo, hi) = if self.conns[i].chatter {
            (2_000, 10_000)
        } else {
            (30_000, 120_000)
        };
        let lo = if first { 0 } else { lo };
        let ms: u64 = self.rng.random_range(lo..=hi);
        self.schedule(i, self.now + ms * 1_000_000);
    }

    fn schedule(&mut self, i: usize, at: u64) {
        self.conns[i].due = at;
        self.heap.push(Reverse((at, i as u32)));
    }

    fn tick(&mut self) {
        self.next_tick = self.now + TICK_NS;
        let timeout = self.plan.timeout_ms * 1_000_000;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            let late = |t: u64| self.now.saturating_sub(t) > timeout;
            let fault = match c.st {
                St::Connecting | St::Upgrading | St::Welcoming if late(c.since) => {
                    Some((Fault::ConnectTimeout, "no welcome in time"))
                }
                St::Open if c.inflight.front().is_some_and(|&t| late(t)) => {
                    Some((Fault::ReplyTimeout, "no reply in time"))
                }
                St::Closing if late(c.since) => {
                    Some((Fault::CloseTimeout, "close not finished in time"))
                }
                _ => None,
            };
            if let Some(f) = fault {
                self.finish(i, Some(f));
            }
        }
        emit(&Line::Tick {
            c: self.c,
            faults: self.faults.total(),
            rtt_max_ns: std::mem::take(&mut self.rtt_max_ns),
        });
    }

    fn read_commands(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match io::stdin().lock().read(&mut buf) {
                Ok(0) => {
                    self.stop();
                    return;
                }
                Ok(n) => self.stdin_buf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stop();
                    return;
                }
            }
        }
        while let Some(pos) = self.stdin_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdin_buf.drain(..=pos).collect();
            match line.trim_ascii() {
                b"go" => self.go(),
                b"stop" => self.stop(),
                _ => {}
            }
        }
    }

    fn go(&mut self) {
        self.window = Some((self.c.replies, self.c.sent));
        match self.plan.on_go {
            OnGo::Measure => {
                if let Load::Open { rate } = self.plan.load {
                    if rate > 0.0 && !self.conns.is_empty() {
                        self.open = Some(OpenLoop {
                            t0: self.now,
                            interval_ns: 1e9 / rate,
                            k: 0,
                        });
                    }
                }
            }
            OnGo::DropAndResume => self.drop_all(),
            OnGo::ExpectDrain => {}
        }
    }

    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        if let Some((r, s)) = self.window.take() {
            self.window_result = (self.c.replies - r, self.c.sent - s);
        }
        self.stopping = true;
        self.loading = false;
        self.open = None;
        self.ramp = None;
        self.stop_deadline = self.now + self.plan.timeout_ms * 1_000_000 + 1_000_000_000;
        for i in 0..self.conns.len() {
            match self.conns[i].st {
                St::Open if self.conns[i].inflight.is_empty() => self.begin_close(i),
                St::Open => self.conns[i].close_when_idle = true,
                St::Closing | St::Done => {}
                // A socket still on its way in when the run ends is not the
                // server's fault: ramps and reconnects are cut short.
                _ => self.finish(i, None),
            }
        }
    }

    /// Storm: every socket goes at once, without a Close, as a network blip
    /// would take them. RST rather than FIN leaves no TIME_WAIT behind.
    fn drop_all(&mut self) {
        self.unsettled = 0;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.st != St::Open {
                continue;
            }
            if let Some(s) = c.sock.take() {
                let _ = s.set_linger(Some(std::time::Duration::ZERO));
            }
            c.st = St::Waiting;
            c.welcomed = false;
            c.resuming = true;
            c.settled = false;
            c.inflight.clear();
            c.inbuf.clear();
            c.pending.clear();
            self.c.live -= 1;
            self.unsettled += 1;
        }
        for i in 0..self.conns.len() {
            if self.conns[i].st == St::Waiting && self.conns[i].resuming {
                self.start_connect(i);
            }
        }
        if self.unsettled == 0 {
            emit(&Line::Ready { at_ns: self.now });
        }
    }

    fn settle(&mut self, i: usize) {
        if !self.conns[i].settled {
            self.conns[i].settled = true;
            self.unsettled -= 1;
            if self.unsettled == 0 {
                emit(&Line::Ready { at_ns: self.now });
            }
        }
    }

    fn start_connect(&mut self, i: usize) {
        if self.first_connect_ns == 0 {
            self.first_connect_ns = self.now;
        }
        match self.open_socket(i) {
            Ok(sock) => {
                if let Err(e) = self.ep.add(sock.as_raw_fd(), i as u64) {
                    self.conns[i].st = St::Connecting;
                    self.finish(i, Some((Fault::Connect, leak_msg(&e))));
                    return;
                }
                let c = &mut self.conns[i];
                c.sock = Some(sock);
                c.st = St::Connecting;
                c.since = self.now;
                c.bye = None;
                c.echoed = false;
            }
            Err(e) => {
                self.conns[i].st = St::Connecting;
                self.finish(i, Some((Fault::Connect, leak_msg(&e))));
            }
        }
    }

    fn open_socket(&self, i: usize) -> io::Result<Socket> {
        let addr = self.plan.addr;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
        sock.set_nodelay(true)?;
        if let Some(src) = self.plan.source(i as u32) {
            // Ports are then picked at connect() per 4-tuple, not at bind()
            // per address, so each source gets the whole ephemeral range.
            let one: libc::c_int = 1;
            // SAFETY: a valid fd and a c_int option value.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(&SocketAddr::new(src.into(), 0).into())?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(sock)
    }

    fn on_event(&mut self, i: usize, bits: u32) {
        if i >= self.conns.len() {
            return;
        }
        if self.conns[i].st == St::Connecting && bits & (epoll::OUT | epoll::ERR | epoll::HUP) != 0
        {
            let err = self.conns[i].sock.as_ref().map(|s| s.take_error());
            match err {
                Some(Ok(None)) => {
                    self.out.clear();
                    let session = self.conns[i]
                        .session
                        .filter(|_| self.conns[i].resuming)
                        .map(|s| String::from_utf8_lossy(&s).into_owned());
                    wire::upgrade_request(
                        &mut self.out,
                        &self.plan.host,
                        &self.plan.path,
                        session.as_deref(),
                    );
                    self.conns[i].st = St::Upgrading;
                    let out = std::mem::take(&mut self.out);
                    self.write(i, &out);
                    self.out = out;
                }
                Some(Ok(Some(e))) | Some(Err(e)) => {
                    self.finish(i, Some((Fault::Connect, leak_msg(&e))));
                    return;
                }
                None => return,
            }
        }
        if bits & epoll::OUT != 0 && !self.conns[i].pending.is_empty() {
            self.flush(i);
        }
        if bits & (epoll::IN | epoll::HUP | epoll::ERR) != 0 {
            self.on_readable(i, bits & epoll::HUP != 0);
        }
    }

    fn on_readable(&mut self, i: usize, peer_closed: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let st = self.conns[i].st;
            if matches!(st, St::Done | St::Waiting | St::Connecting) {
                break;
            }
            let Some(sock) = self.conns[i].sock.as_ref() else {
                break;
            };
            // SAFETY: u8 has no invalid bit patterns; recv only writes into it.
            let buf =
                unsafe { &mut *(scratch.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match sock.recv(buf) {
                Ok(0) => {
                    self.on_eof(i);
                    break;
                }
                Ok(n) => {
                    if self.conns[i].inbuf.is_empty() {
                        let used = self.on_bytes(i, &scratch[..n]);
                        if used < n && self.conns[i].st != St::Done {
                            self.conns[i].inbuf.extend_from_slice(&scratch[used..n]);
                        }
                    } else {
                        let mut inbuf = std::mem::take(&mut self.conns[i].inbuf);
                        inbuf.extend_from_slice(&scratch[..n]);
                        let used = self.on_bytes(i, &inbuf);
                        inbuf.drain(..used);
                        if self.conns[i].st != St::Done {
                            self.conns[i].inbuf = inbuf;
                        }
                    }
                    if n < scratch.len() && !peer_closed {
                        // A short read drained the socket, and with edge
                        // triggers the next event says when there is more. A
                        // FIN that came before this event has no event of its
                        // own, so then reading goes on until it shows.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.on_eof(i);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Parses what arrived; returns the bytes used (the rest is incomplete).
    fn on_bytes(&mut self, i: usize, data: &[u8]) -> usize {
        let mut used = 0;
        if self.conns[i].st == St::Upgrading {
            match wire::parse_upgrade(data, &self.accept) {
                Ok(None) => return 0,
                Ok(Some(n)) => {
                    used = n;
                    self.conns[i].st = St::Welcoming;
                }
                Err(wire::WireError::Status(code)) => {
                    let why = if code == 503 {
                        "upgrade answered 503"
                    } else {
                        "upgrade answered non-101"
                    };
                    self.finish(i, Some((Fault::Refused, why)));
                    return data.len();
                }
                Err(_) => {
                    self.finish(i, Some((Fault::Handshake, "bad upgrade answer")));
                    return data.len();
                }
            }
        }
        while self.conns[i].st != St::Done {
            match wire::next_frame(&data[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.on_frame(i, frame);
                }
                Ok(None) => break,
                Err(_) => {
                    self.finish(i, Some((Fault::BadFrame, "frame breaks RFC 6455")));
                    return data.len();
                }
            }
        }
        used
    }

    fn on_frame(&mut self, i: usize, frame: Frame<'_>) {
        match frame {
            Frame::Text(text) => self.on_text(i, reply::parse(text)),
            Frame::Binary => {
                self.finish(i, Some((Fault::BadFrame, "binary frame from the server")))
            }
            Frame::Ping(p) => {
                self.out.clear();
                wire::pong_frame(&mut self.out, p, self.conns[i].mask);
                let out = std::mem::take(&mut self.out);
                self.write(i, &out);
                self.out = out;
            }
            Frame::Pong => {}
            Frame::Close(code) => self.on_close(i, code),
        }
    }

    fn on_text(&mut self, i: usize, r: Reply) {
        let st = self.conns[i].st;
        match r {
            Reply::Welcome {
                session,
                count,
                resumed,
                ..
            } if st == St::Welcoming => {
                let c = &mut self.conns[i];
                let want = if c.resuming { c.acked } else { 0 };
                let ok = count == want && resumed == c.resuming;
                c.session = Some(session);
                c.acked = count;
                c.st = St::Open;
                c.welcomed = true;
                let took = self.now - c.since;
                let resuming = c.resuming;
                self.c.opened += 1;
                self.c.live += 1;
                if !ok {
                    self.finish(
                        i,
                        Some((
                            Fault::WelcomeMismatch,
                            "welcome count or resumed flag wrong",
                        )),
                    );
                    return;
                }
                if resuming {
                    let drained_at = std::mem::take(&mut self.conns[i].drained_at);
                    if drained_at > 0 {
                        self.reconnect
                            .saturating_record(self.now.saturating_sub(drained_at).max(1));
                    }
                    self.conns[i].verifying = true;
                    self.send(i, 1, self.now);
                    return;
                }
                self.connect.saturating_record(took.max(1));
                self.last_open_ns = self.now;
                self.on_open(i);
            }
            Reply::Welcome { .. } => self.finish(i, Some((Fault::BadFrame, "a second welcome"))),
            _ if st == St::Welcoming => {
                self.finish(i, Some((Fault::BadFrame, "first frame is not a welcome")))
            }
            Reply::Count(n) => self.on_count(i, n),
            Reply::Heartbeat => self.c.heartbeats += 1,
            Reply::Broadcast { .. } => {}
            Reply::Bye {
                total,
                retry_after_ms,
                shutdown,
            } => {
                let c = &mut self.conns[i];
                c.bye = Some((shutdown, retry_after_ms));
                if total != c.acked {
                    self.finish(
                        i,
                        Some((Fault::ByeMismatch, "goodbye total is not the last count")),
                    );
                }
            }
            Reply::RateLimited => self.finish(i, Some((Fault::RateLimited, "rate limited"))),
            Reply::Unknown => self.finish(
                i,
                Some((Fault::BadFrame, "text that is no reply of the contract")),
            ),
        }
    }

    /// A socket welcomed for the first time starts its load.
    fn on_open(&mut self, i: usize) {
        if self.plan.prime > 0 {
            self.send(i, self.plan.prime, self.now);
            return;
        }
        self.settle(i);
        if self.stopping {
            self.begin_close(i);
            return;
        }
        match self.plan.load {
            Load::Closed { window } => self.send(i, window, self.now),
            Load::Mix { .. } => self.schedule_mix(i, true),
            Load::Idle | Load::Open { .. } => {}
        }
    }

    fn on_count(&mut self, i: usize, n: u64) {
        let c = &mut self.conns[i];
        let Some(sent_at) = c.inflight.pop_front() else {
            self.finish(i, Some((Fault::CountMismatch, "a count nobody asked for")));
            return;
        };
        if n != c.acked + 1 {
            self.finish(
                i,
                Some((Fault::CountMismatch, "count is not the previous plus one")),
            );
            return;
        }
        c.acked = n;
        self.c.replies += 1;
        let rtt = self.now.saturating_sub(sent_at).max(1);
        self.rtt.saturating_record(rtt);
        self.rtt_max_ns = self.rtt_max_ns.max(rtt);
        let c = &mut self.conns[i];
        if c.verifying {
            c.verifying = false;
            self.c.resumed += 1;
            self.last_resume_ns = self.now;
            self.settle(i);
            self.resume_load(i);
            return;
        }
        if self.plan.prime > 0 && !c.settled && c.inflight.is_empty() {
            self.settle(i);
            return;
        }
        if c.close_when_idle || self.stopping {
            if c.inflight.is_empty() {
                self.begin_close(i);
            }
            return;
        }
        if let Load::Closed { .. } = self.plan.load {
            if self.loading {
                self.send(i, 1, self.now);
            }
        }
    }

    /// After a verified resume, the socket goes back to its load.
    fn resume_load(&mut self, i: usize) {
        if self.stopping {
            self.begin_close(i);
            return;
        }
        match self.plan.load {
            Load::Closed { window } if self.loading => self.send(i, window, self.now),
            Load::Mix { .. } if self.loading => self.schedule_mix(i, false),
            _ => {}
        }
    }

    fn on_close(&mut self, i: usize, code: Option<u16>) {
        let c = &mut self.conns[i];
        if c.st == St::Closing {
            // The echo of our Close, or a late one after our echo.
            if !c.echoed && self.plan.expect_bye && c.bye.is_none() {
                c.echoed = true;
                self.finish(
                    i,
                    Some((Fault::ByeMismatch, "no goodbye before the Close echo")),
                );
                return;
            }
            c.echoed = true;
            return;
        }
        let drain_ok = code == Some(1001) && matches!(c.bye, Some((true, _)));
        if drain_ok && (matches!(self.plan.on_go, OnGo::ExpectDrain) || self.plan.reconnect) {
            self.c.goodbyes += 1;
            self.conns[i].drained_at = self.now;
            self.out.clear();
            wire::close_frame(&mut self.out, 1001, self.conns[i].mask);
            let out = std::mem::take(&mut self.out);
            self.write(i, &out);
            self.out = out;
            let c = &mut self.conns[i];
            c.st = St::Closing;
            c.echoed = true;
            c.since = self.now;
            return;
        }
        let why = if code == Some(1001) {
            (Fault::BadDrain, "Close 1001 without the shutdown goodbye")
        } else {
            (Fault::UnexpectedClose, "the server sent Close")
        };
        self.finish(i, Some(why));
    }

    fn on_eof(&mut self, i: usize) {
        let c = &self.conns[i];
        if c.st == St::Closing && c.echoed {
            let retry = match c.bye {
                Some((true, retry)) if self.plan.reconnect && !self.stopping => {
                    Some(retry.unwrap_or(0))
                }
                Some((false, _)) if c.churning && !self.stopping => {
                    Some(self.rng.random_range(500..=2_000))
                }
                _ => None,
            };
            self.conns[i].churning = false;
            self.finish(i, None);
            if let Some(ms) = retry {
                let c = &mut self.conns[i];
                c.st = St::Waiting;
                c.resuming = true;
                self.done -= 1;
                self.schedule(i, self.now + ms * 1_000_000);
            }
            return;
        }
        self.finish(
            i,
            Some((Fault::UnexpectedClose, "connection ended without a Close")),
        );
    }

    fn begin_close(&mut self, i: usize) {
        self.out.clear();
        wire::close_frame(&mut self.out, 1000, self.conns[i].mask);
        let out = std::mem::take(&mut self.out);
        let c = &mut self.conns[i];
        c.st = St::Closing;
        c.since = self.now;
        c.close_when_idle = false;
        self.write(i, &out);
        self.out = out;
    }

    /// Sends `k` messages in one write; `at` is the stamp their RTT counts from.
    fn send(&mut self, i: usize, k: u32, at: u64) {
        self.out.clear();
        let c = &mut self.conns[i];
        for _ in 0..k {
            wire::text_frame(&mut self.out, &self.payload, c.mask);
            c.inflight.push_back(at);
        }
        self.c.sent += u64::from(k);
        let out = std::mem::take(&mut self.out);
        self.write(i, &out);
        self.out = out;
    }

    fn write(&mut self, i: usize, bytes: &[u8]) {
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_ref() else { return };
        if !c.pending.is_empty() {
            c.pending.extend_from_slice(bytes);
            return;
        }
        let mut off = 0;
        while off < bytes.len() {
            match sock.send(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.pending.extend_from_slice(&bytes[off..]);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.on_write_error(i);
                    return;
                }
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let pending = std::mem::take(&mut self.conns[i].pending);
        self.write(i, &pending);
    }

    fn on_write_error(&mut self, i: usize) {
        if self.conns[i].st == St::Closing {
            self.finish(i, None);
        } else {
            self.finish(
                i,
                Some((Fault::UnexpectedClose, "write failed: connection reset")),
            );
        }
    }

    /// Ends a socket for good (or until a scheduled reconnect).
    fn finish(&mut self, i: usize, fault: Option<(Fault, &'static str)>) {
        let c = &mut self.conns[i];
        if c.st == St::Done {
            return;
        }
        c.sock = None;
        c.st = St::Done;
        c.inflight.clear();
        c.inbuf = Vec::new();
        c.pending = Vec::new();
        if c.welcomed {
            c.welcomed = false;
            self.c.live -= 1;
        }
        self.done += 1;
        self.last_close_ns = self.now;
        if let Some((f, why)) = fault {
            self.faults.bump(f);
            self.c.faults += 1;
            if self.fault_lines < FAULT_LINES {
                self.fault_lines += 1;
                eprintln!(
                    "{}",
                    serde_json::json!({"fault": f.name(), "socket": i, "detail": why, "acked": self.conns[i].acked})
                );
            }
        }
        self.settle(i);
    }
}

/// Prints one line for the coordinator. A failed write means the coordinator
/// is gone; the worker then ends at its next stdin read.
pub fn emit(line: &Line) {
    let mut out = io::stdout().lock();
    if serde_json::to_writer(&mut out, line).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on an fd we were given; flags are read then extended.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Fault details are static strings; an OS error picks the closest one.
fn leak_msg(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused",
        Some(libc::EADDRNOTAVAIL) => "no free source port (add --sources)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors (add --procs)",
        Some(libc::ECONNRESET) => "connection reset",
        Some(libc::ETIMEDOUT) => "connect timed out",
        _ => "connect failed",
    }
}
