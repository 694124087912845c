//! The single-node runs' handler on the [`crate::engine`]: this worker's
//! share of the sockets and of the load (closed loop, open loop, mix, idle,
//! storm, drain), every answer checked against what the socket expects. It
//! prints a tick line every 250 ms and a result line at the end on stdout,
//! and takes `go` and `stop` from stdin.

use std::collections::VecDeque;
use std::io;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::{self, End, Handler, Io};
use crate::plan::{Load, OnGo, Plan};
use crate::pool::emit;
use crate::reply::{Reply, Welcome, ID_LEN};
use crate::stats::{self, Counters, Fault, Faults, WorkerResult};

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
    /// Not started, or waiting to reconnect at its timer.
    Waiting,
    /// Connecting, upgrading, or upgraded and waiting for the welcome.
    Welcoming,
    Open,
    /// A Close is out (ours or our echo of the server's); waiting for the end.
    Closing,
    Done,
}

struct Conn {
    st: St,
    session: Option<[u8; ID_LEN]>,
    resuming: bool,
    welcomed: bool,
    acked: u64,
    /// Send stamps (scheduled ones in open loop) of messages not yet answered.
    inflight: VecDeque<u64>,
    /// When the current state began.
    since: u64,
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
    fn new(chatter: bool) -> Conn {
        Conn {
            st: St::Waiting,
            session: None,
            resuming: false,
            welcomed: false,
            acked: 0,
            inflight: VecDeque::new(),
            since: 0,
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
    conns: Vec<Conn>,
    masks: Vec<[u8; 4]>,
    rng: SmallRng,
    payload: Vec<u8>,
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
}

impl Worker {
    pub fn new(plan: Plan) -> io::Result<Worker> {
        let mut rng = SmallRng::seed_from_u64(plan.seed);
        let share = match plan.load {
            Load::Mix { chatter_share, .. } => chatter_share,
            _ => 1.0,
        };
        let (masks, conns) = (0..plan.sockets)
            .map(|_| {
                let mask: [u8; 4] = rng.random();
                (mask, Conn::new(rng.random_bool(share.clamp(0.0, 1.0))))
            })
            .unzip();
        let payload = (0..plan.payload).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Worker {
            conns,
            masks,
            rng,
            payload,
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
            plan,
        })
    }

    /// Runs until `stop` (or stdin closing) and every socket is finished.
    pub fn run(mut self) -> io::Result<WorkerResult> {
        let mut io = Io::new(std::mem::take(&mut self.masks).into_iter())?;
        self.next_tick = io.now + TICK_NS;
        // "All at once" still goes in bursts with the event loop between
        // them: a connect() on loopback runs the whole TCP handshake inside
        // the syscall, and 10,000 of them in one go would hold back every
        // upgrade request until the last one, timing the generator.
        self.ramp = Some(OpenLoop {
            t0: io.now,
            interval_ns: if self.plan.connect_rate > 0.0 {
                1e9 / self.plan.connect_rate
            } else {
                0.0
            },
            k: 0,
        });
        engine::run(&mut io, &mut self)?;
        for i in 0..self.conns.len() {
            if self.conns[i].st != St::Done {
                self.finish(
                    &mut io,
                    i,
                    Some((Fault::CloseTimeout, "still open at the end")),
                );
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

    /// The connect ramp and the open-loop schedule; returns the earliest of
    /// their next dues and the tick.
    fn run_schedules(&mut self, io: &mut Io) -> u64 {
        let now = io.now;
        if let Some(mut r) = self.ramp.take() {
            let mut burst = 0;
            while r.k < self.conns.len() as u64 && r.due() <= now && burst < CONNECT_BURST {
                self.start_connect(io, r.k as usize);
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
            while sent < BATCH && o.due() <= now {
                let i = (o.k % n) as usize;
                if self.conns[i].st == St::Open {
                    let at = o.due();
                    self.send(io, i, 1, at);
                } else {
                    self.c.skipped += 1;
                }
                o.k += 1;
                sent += 1;
            }
            self.open = Some(o);
        }
        let mut t = self.next_tick;
        for s in [&self.open, &self.ramp].into_iter().flatten() {
            t = t.min(s.due());
        }
        t
    }

    /// Schedules a mix socket's next send: chatters every 2-10 s, lurkers
    /// every 30-120 s. The first send lands anywhere in the socket's interval,
    /// so a ramp does not turn into synchronized waves.
    fn schedule_mix(&mut self, io: &mut Io, i: usize, first: bool) {
        let (lo, hi) = if self.conns[i].chatter {
            (2_000, 10_000)
        } else {
            (30_000, 120_000)
        };
        let lo = if first { 0 } else { lo };
        let ms: u64 = self.rng.random_range(lo..=hi);
        io.schedule(i, io.now + ms * 1_000_000);
    }

    fn tick(&mut self, io: &mut Io) {
        let now = io.now;
        self.next_tick = now + TICK_NS;
        let timeout = self.plan.timeout_ms * 1_000_000;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            let late = |t: u64| now.saturating_sub(t) > timeout;
            let fault = match c.st {
                St::Welcoming if late(c.since) => {
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
                self.finish(io, i, Some(f));
            }
        }
        emit(&Line::Tick {
            c: self.c,
            faults: self.faults.total(),
            rtt_max_ns: std::mem::take(&mut self.rtt_max_ns),
        });
    }

    fn go(&mut self, io: &mut Io) {
        self.window = Some((self.c.replies, self.c.sent));
        match self.plan.on_go {
            OnGo::Measure => {
                if let Load::Open { rate } = self.plan.load {
                    if rate > 0.0 && !self.conns.is_empty() {
                        self.open = Some(OpenLoop {
                            t0: io.now,
                            interval_ns: 1e9 / rate,
                            k: 0,
                        });
                    }
                }
            }
            OnGo::DropAndResume => self.drop_all(io),
            OnGo::ExpectDrain => {}
        }
    }

    fn stop(&mut self, io: &mut Io) {
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
        self.stop_deadline = io.now + self.plan.timeout_ms * 1_000_000 + 1_000_000_000;
        for i in 0..self.conns.len() {
            match self.conns[i].st {
                St::Open if self.conns[i].inflight.is_empty() => self.begin_close(io, i),
                St::Open => self.conns[i].close_when_idle = true,
                St::Closing | St::Done => {}
                // A socket still on its way in when the run ends is not the
                // server's fault: ramps and reconnects are cut short.
                _ => self.finish(io, i, None),
            }
        }
    }

    /// Storm: every socket goes at once, without a Close, as a network blip
    /// would take them.
    fn drop_all(&mut self, io: &mut Io) {
        self.unsettled = 0;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.st != St::Open {
                continue;
            }
            io.reset(i);
            c.st = St::Waiting;
            c.welcomed = false;
            c.resuming = true;
            c.settled = false;
            c.inflight.clear();
            self.c.live -= 1;
            self.unsettled += 1;
        }
        for i in 0..self.conns.len() {
            if self.conns[i].st == St::Waiting && self.conns[i].resuming {
                self.start_connect(io, i);
            }
        }
        if self.unsettled == 0 {
            emit(&Line::Ready { at_ns: io.now });
        }
    }

    fn settle(&mut self, now: u64, i: usize) {
        if !self.conns[i].settled {
            self.conns[i].settled = true;
            self.unsettled -= 1;
            if self.unsettled == 0 {
                emit(&Line::Ready { at_ns: now });
            }
        }
    }

    fn start_connect(&mut self, io: &mut Io, i: usize) {
        if self.first_connect_ns == 0 {
            self.first_connect_ns = io.now;
        }
        let c = &self.conns[i];
        let session = c.session.as_ref().filter(|_| c.resuming);
        let session = session.and_then(|s| std::str::from_utf8(s).ok());
        let p = &self.plan;
        let r = io.connect(i, p.addr, p.source(i as u32), &p.host, &p.path, session);
        let c = &mut self.conns[i];
        c.st = St::Welcoming;
        c.since = io.now;
        c.bye = None;
        c.echoed = false;
        if let Err(why) = r {
            self.finish(io, i, Some((Fault::Connect, why)));
        }
    }

    /// A socket welcomed for the first time starts its load.
    fn on_open(&mut self, io: &mut Io, i: usize) {
        if self.plan.prime > 0 {
            self.send(io, i, self.plan.prime, io.now);
            return;
        }
        self.settle(io.now, i);
        if self.stopping {
            self.begin_close(io, i);
            return;
        }
        match self.plan.load {
            Load::Closed { window } => self.send(io, i, window, io.now),
            Load::Mix { .. } => self.schedule_mix(io, i, true),
            Load::Idle | Load::Open { .. } => {}
        }
    }

    fn on_welcome(&mut self, io: &mut Io, i: usize, w: Welcome) {
        let now = io.now;
        let c = &mut self.conns[i];
        let want = if c.resuming { c.acked } else { 0 };
        let ok = w.count == want && w.resumed == c.resuming;
        c.session = Some(w.session);
        c.acked = w.count;
        c.st = St::Open;
        c.welcomed = true;
        let took = now - c.since;
        let resuming = c.resuming;
        self.c.opened += 1;
        self.c.live += 1;
        if !ok {
            let f = (
                Fault::WelcomeMismatch,
                "welcome count or resumed flag wrong",
            );
            return self.finish(io, i, Some(f));
        }
        if resuming {
            let drained_at = std::mem::take(&mut self.conns[i].drained_at);
            if drained_at > 0 {
                self.reconnect
                    .saturating_record(now.saturating_sub(drained_at).max(1));
            }
            self.conns[i].verifying = true;
            return self.send(io, i, 1, now);
        }
        self.connect.saturating_record(took.max(1));
        self.last_open_ns = now;
        self.on_open(io, i);
    }

    fn on_count(&mut self, io: &mut Io, i: usize, n: u64) {
        let now = io.now;
        let c = &mut self.conns[i];
        let Some(sent_at) = c.inflight.pop_front() else {
            return self.finish(
                io,
                i,
                Some((Fault::CountMismatch, "a count nobody asked for")),
            );
        };
        if n != c.acked + 1 {
            let f = (Fault::CountMismatch, "count is not the previous plus one");
            return self.finish(io, i, Some(f));
        }
        c.acked = n;
        self.c.replies += 1;
        let rtt = now.saturating_sub(sent_at).max(1);
        self.rtt.saturating_record(rtt);
        self.rtt_max_ns = self.rtt_max_ns.max(rtt);
        let c = &mut self.conns[i];
        if c.verifying {
            c.verifying = false;
            self.c.resumed += 1;
            self.last_resume_ns = now;
            self.settle(now, i);
            return self.resume_load(io, i);
        }
        if self.plan.prime > 0 && !c.settled && c.inflight.is_empty() {
            return self.settle(now, i);
        }
        if c.close_when_idle || self.stopping {
            if c.inflight.is_empty() {
                self.begin_close(io, i);
            }
            return;
        }
        if let Load::Closed { .. } = self.plan.load {
            if self.loading {
                self.send(io, i, 1, now);
            }
        }
    }

    /// After a verified resume, the socket goes back to its load.
    fn resume_load(&mut self, io: &mut Io, i: usize) {
        if self.stopping {
            return self.begin_close(io, i);
        }
        match self.plan.load {
            Load::Closed { window } if self.loading => self.send(io, i, window, io.now),
            Load::Mix { .. } if self.loading => self.schedule_mix(io, i, false),
            _ => {}
        }
    }

    /// The connection ended after our Close was echoed: the socket is done,
    /// or comes back with its session after a drain or a churn.
    fn on_closed(&mut self, io: &mut Io, i: usize) {
        let c = &self.conns[i];
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
        self.finish(io, i, None);
        if let Some(ms) = retry {
            let c = &mut self.conns[i];
            c.st = St::Waiting;
            c.resuming = true;
            self.done -= 1;
            io.schedule(i, io.now + ms * 1_000_000);
        }
    }

    fn begin_close(&mut self, io: &mut Io, i: usize) {
        let c = &mut self.conns[i];
        c.st = St::Closing;
        c.since = io.now;
        c.close_when_idle = false;
        io.send_close(i, 1000);
    }

    /// Sends `k` messages in one write; `at` is the stamp their RTT counts from.
    fn send(&mut self, io: &mut Io, i: usize, k: u32, at: u64) {
        let c = &mut self.conns[i];
        c.inflight.extend(std::iter::repeat_n(at, k as usize));
        self.c.sent += u64::from(k);
        io.send_text(i, &self.payload, k);
    }

    /// Ends a socket for good (or until a scheduled reconnect).
    fn finish(&mut self, io: &mut Io, i: usize, fault: Option<(Fault, &'static str)>) {
        let c = &mut self.conns[i];
        if c.st == St::Done {
            return;
        }
        io.close(i);
        io.unschedule(i);
        c.st = St::Done;
        c.inflight.clear();
        if c.welcomed {
            c.welcomed = false;
            self.c.live -= 1;
        }
        self.done += 1;
        self.last_close_ns = io.now;
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
        self.settle(io.now, i);
    }
}

impl Handler for Worker {
    fn on_text(&mut self, io: &mut Io, i: usize, r: Reply<'_>) {
        let st = self.conns[i].st;
        match r {
            Reply::Welcome(w) if st == St::Welcoming => self.on_welcome(io, i, w),
            Reply::Welcome(_) => self.finish(io, i, Some((Fault::BadFrame, "a second welcome"))),
            _ if st == St::Welcoming => {
                let f = (Fault::BadFrame, "first frame is not a welcome");
                self.finish(io, i, Some(f))
            }
            Reply::Count(n) => self.on_count(io, i, n),
            Reply::Heartbeat => self.c.heartbeats += 1,
            Reply::Broadcast { .. } => {
                self.c.broadcasts += 1;
                self.c.last_broadcast_ns = crate::sys::now_ns();
            }
            Reply::Bye {
                total,
                retry_after_ms,
                shutdown,
            } => {
                let c = &mut self.conns[i];
                c.bye = Some((shutdown, retry_after_ms));
                if total != c.acked {
                    let f = (Fault::ByeMismatch, "goodbye total is not the last count");
                    self.finish(io, i, Some(f));
                }
            }
            Reply::RateLimited => self.finish(io, i, Some((Fault::RateLimited, "rate limited"))),
            Reply::Unknown => {
                let f = (Fault::BadFrame, "text that is no reply of the contract");
                self.finish(io, i, Some(f))
            }
        }
    }

    fn on_close(&mut self, io: &mut Io, i: usize, code: Option<u16>) {
        let c = &mut self.conns[i];
        if c.st == St::Closing {
            // The echo of our Close, or a late one after our echo.
            if !c.echoed && self.plan.expect_bye && c.bye.is_none() {
                c.echoed = true;
                let f = (Fault::ByeMismatch, "no goodbye before the Close echo");
                return self.finish(io, i, Some(f));
            }
            c.echoed = true;
            return;
        }
        let drain_ok = code == Some(1001) && matches!(c.bye, Some((true, _)));
        if drain_ok && (matches!(self.plan.on_go, OnGo::ExpectDrain) || self.plan.reconnect) {
            self.c.goodbyes += 1;
            c.drained_at = io.now;
            c.st = St::Closing;
            c.echoed = true;
            c.since = io.now;
            return io.send_close(i, 1001);
        }
        let why = if code == Some(1001) {
            (Fault::BadDrain, "Close 1001 without the shutdown goodbye")
        } else {
            let said = match code {
                Some(1000) => "the server sent Close 1000",
                Some(1008) => "the server sent Close 1008",
                Some(1011) => "the server sent Close 1011",
                Some(4001) => "the server sent Close 4001",
                Some(_) => "the server sent Close",
                None => "the server sent Close without a code",
            };
            (Fault::UnexpectedClose, said)
        };
        self.finish(io, i, Some(why));
    }

    fn on_end(&mut self, io: &mut Io, i: usize, end: End) {
        let c = &self.conns[i];
        match end {
            End::Eof | End::Reset(_) if c.st == St::Closing && c.echoed => self.on_closed(io, i),
            End::Reset(_) if c.st == St::Closing => self.finish(io, i, None),
            _ => self.finish(io, i, Some(end.fault())),
        }
    }

    fn on_due(&mut self, io: &mut Io, i: usize) {
        match self.conns[i].st {
            St::Waiting if !self.stopping => self.start_connect(io, i),
            St::Open if self.loading && !self.stopping => {
                self.send(io, i, 1, io.now);
                let churn = match self.plan.load {
                    Load::Mix { churn, .. } => churn,
                    _ => 0.0,
                };
                if churn > 0.0 && self.rng.random_bool(churn.min(1.0)) {
                    // Closes once this send is answered; on_closed brings it back.
                    let c = &mut self.conns[i];
                    c.close_when_idle = true;
                    c.churning = true;
                } else {
                    self.schedule_mix(io, i, false);
                }
            }
            _ => {}
        }
    }

    fn on_line(&mut self, io: &mut Io, line: Option<&[u8]>) {
        match line {
            Some(b"go") => self.go(io),
            Some(b"stop") | None => self.stop(io),
            Some(_) => {}
        }
    }

    fn poll(&mut self, io: &mut Io) -> Option<u64> {
        let next = self.run_schedules(io);
        if io.now >= self.next_tick {
            self.tick(io);
        }
        if self.stopping && (self.done as usize == self.conns.len() || io.now >= self.stop_deadline)
        {
            return None;
        }
        Some(next.min(self.next_tick))
    }
}
