//! One scale worker process: the scale run's handler on the load engine
//! ([`crate::engine`], the same loop as every single-node run). Its sockets
//! follow the orchestrator's steps (connect, tour the nodes, closed-loop
//! traffic through a node's death, quiet, close), every answer is checked,
//! and broadcast texts are kept and tallied the moment they arrive. Each
//! socket has one thing it waits for at a time, so its one engine timer is
//! that wait's bound, or its next send. Stdin closing ends the process.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use super::check::{self, Resume};
use super::layout::Layout;
use super::node;
use super::proto::{Command, Event, Outcome, Recovery, Tally, WorkerPlan};
use super::tag::{self, Kind};
use crate::engine::{self, End, Handler, Io};
use crate::pool::emit;
use crate::reply::{Reply, Welcome, ID_LEN};
use crate::stats::{self, Fault, Faults};

const MS: u64 = 1_000_000;
/// How often the controller looks at the counters to see if a wait is over.
const POLL: u64 = 20 * MS;
const PROGRESS_EVERY: u64 = 500 * MS;
/// Faults described on stderr per worker; the rest are only counted.
const FAULT_LINES: u32 = 10;
/// Longest single reconnect attempt while a node's sockets flood the others.
const ATTEMPT: u64 = 10_000 * MS;
const BACKOFF_FIRST: u64 = 50 * MS;
const BACKOFF_MAX: u64 = 1_000 * MS;
/// What a socket sends: the contract counts frames, not their text.
const PAYLOAD: &[u8] = b"scale";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unreadable worker plan: {0}")]
    Plan(serde_json::Error),
    #[error("the worker plan holds no node")]
    NoNodes,
    #[error("unreadable command `{0}`: {1}")]
    Command(String, serde_json::Error),
    #[error("the event loop failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What every socket should be doing now. `gen` grows with every command
/// that changes it, so a socket can tell whether it already counted itself
/// as done for the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    gen: u64,
    kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Hold,
    Connect,
    Resume,
    Traffic { interval: u64, kill: Option<u32> },
    Quiet,
    Close,
}

/// What a socket is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// Holding its connection (reading, answering pings) or not yet started.
    Idle,
    /// Queued for a connect slot, then welcome, one message, count 1.
    Connect,
    /// Hopping over every node and home again.
    Tour,
    Traffic,
    /// A victim of the kill on its way to a survivor.
    Recover,
    Close,
    Dead,
}

/// Where its current connection is, as far as the contract goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    None,
    /// Connect, upgrade and welcome, since `at`.
    Opening {
        at: u64,
    },
    Open,
    /// Our Close is out; the goodbye's total once it came.
    Closing {
        bye: Option<u64>,
    },
}

/// Why a socket stopped: the fault to count and a word for stderr.
#[derive(Debug, Clone, Copy)]
struct Fail(Fault, &'static str);

/// A broadcast offset, `ms-seq`, as numbers, so the newest is told apart.
type Offset = (u64, u64);

fn parse_offset(s: &str) -> Option<Offset> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

struct Sock {
    /// The node the layout gives it, whatever it is connected to now.
    node: u32,
    room: u32,
    session: Option<[u8; ID_LEN]>,
    /// The last count the server acknowledged.
    acked: u64,
    /// When the unanswered message went out.
    inflight: Option<u64>,
    task: Task,
    conn: Conn,
    /// The step generation its task belongs to, and the one it last counted
    /// itself done for.
    working: u64,
    counted: u64,
    /// Holds a session and counts in `live`.
    alive: bool,
    /// Holds one of the connect slots.
    gated: bool,
    /// A victim that resumed on a survivor.
    moved: bool,
    /// The next tour stop, an index into the layout's hops.
    hop: u32,
    /// When traffic sends next (the send schedule keeps its phase).
    next_send: u64,
    /// Set while a victim of the kill is away.
    recovery: Option<Away>,
    /// One bit per fanout broadcast.
    fanout: Vec<u64>,
    room_seen: bool,
    barrier_seen: bool,
    /// The stream broadcast this socket must get next.
    stream_next: u32,
    /// The newest broadcast offset it has: its `since` after a node dies.
    offset: Option<Offset>,
}

/// A victim's way back: where to, since when, and its backoff.
#[derive(Debug, Clone, Copy)]
struct Away {
    target: u32,
    dropped: u64,
    give_up: u64,
    backoff: u64,
    unacked: bool,
    last: Fail,
}

/// The counters of one worker.
struct State {
    faults: Faults,
    fault_lines: u32,
    /// Sockets holding an open session, by the node the layout gives them.
    live: u64,
    live_by_node: Vec<u64>,
    /// Sockets that finished the current step (or died in it).
    done: u64,
    connected: u64,
    last_open_ns: u64,
    connect: Histogram<u64>,
    fanout_got: Vec<u64>,
    /// Sockets that got each stream broadcast (in order, or past a gap).
    stream_got: Vec<u64>,
    fanout_last: Vec<u64>,
    room_last: u64,
    barrier_last: u64,
    tally: Tally,
    fanout_latency: Histogram<u64>,
    room_latency: Histogram<u64>,
    moved: u64,
    hops: u64,
    resume_mismatches: u64,
    resume_last: u64,
    /// The node to be killed while traffic runs.
    kill: Option<u32>,
    recovery: Recovery,
    drop_ns: Vec<u64>,
    /// Victims back or given up: the kill wait ends when this is `victims`.
    kill_settled: u64,
    reconnect: Histogram<u64>,
    closed: u64,
    bye_mismatches: u64,
}

impl State {
    fn new(plan: &WorkerPlan) -> State {
        let b = plan.broadcasts as usize;
        State {
            faults: Faults::default(),
            fault_lines: 0,
            live: 0,
            live_by_node: vec![0; plan.nodes.len()],
            done: 0,
            connected: 0,
            last_open_ns: 0,
            connect: stats::histogram(),
            fanout_got: vec![0; b],
            stream_got: Vec::new(),
            fanout_last: vec![0; b],
            room_last: 0,
            barrier_last: 0,
            tally: Tally::default(),
            fanout_latency: stats::histogram(),
            room_latency: stats::histogram(),
            moved: 0,
            hops: 0,
            resume_mismatches: 0,
            resume_last: 0,
            kill: None,
            recovery: Recovery::default(),
            drop_ns: Vec::new(),
            kill_settled: 0,
            reconnect: stats::histogram(),
            closed: 0,
            bye_mismatches: 0,
        }
    }

    /// Counts a fault and describes the first few on stderr.
    fn fault(&mut self, f: Fault, socket: u32, what: &str) {
        self.faults.bump(f);
        if self.fault_lines < FAULT_LINES {
            self.fault_lines += 1;
            eprintln!("socket {socket}: {}: {what}", f.name());
        }
    }
}

/// What the controller is waiting for before it answers.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Connect,
    Deliver { kind: Kind, seq: u32 },
    Resume,
    Killed { at_ns: u64 },
    Quiet,
    Close,
}

struct Pending {
    wait: Wait,
    target: u64,
    deadline: u64,
}

struct Worker {
    plan: WorkerPlan,
    layout: Layout,
    timeout: u64,
    socks: Vec<Sock>,
    st: State,
    step: Step,
    /// Sockets waiting for a connect slot, and the slots taken.
    queue: VecDeque<u32>,
    gated: u32,
    pending: Option<Pending>,
    next_poll: u64,
    last_progress: u64,
    path: String,
    /// Stdin closed, or a command could not be read.
    end: Option<Result<(), WorkerError>>,
}

/// The `scale-worker` entry: runs until stdin closes.
pub fn main(plan_json: &str) -> Result<(), WorkerError> {
    let plan: WorkerPlan = serde_json::from_str(plan_json).map_err(WorkerError::Plan)?;
    if plan.nodes.is_empty() {
        return Err(WorkerError::NoNodes);
    }
    crate::sys::raise_fd_limit();
    let layout = Layout {
        nodes: plan.nodes.len() as u32,
        rooms: plan.rooms.max(1),
    };
    let socks = (plan.first..plan.first + plan.count)
        .map(|i| Sock {
            node: layout.node_of(i),
            room: layout.room_of(i),
            session: None,
            acked: 0,
            inflight: None,
            task: Task::Idle,
            conn: Conn::None,
            working: 0,
            counted: 0,
            alive: false,
            gated: false,
            moved: false,
            hop: 0,
            next_send: 0,
            recovery: None,
            fanout: vec![0; (plan.broadcasts as usize).div_ceil(64)],
            room_seen: false,
            barrier_seen: false,
            stream_next: 0,
            offset: None,
        })
        .collect::<Vec<_>>();
    let masks = (0..socks.len() as u64).map(|i| {
        let x = splitmix(plan.seed ^ (i << 32) ^ u64::from(plan.worker));
        (x as u32).to_le_bytes()
    });
    let mut io = Io::new(masks)?;
    let mut w = Worker {
        layout,
        timeout: plan.timeout_ms * MS,
        st: State::new(&plan),
        socks,
        step: Step {
            gen: 0,
            kind: StepKind::Hold,
        },
        queue: VecDeque::new(),
        gated: 0,
        pending: None,
        next_poll: 0,
        last_progress: 0,
        path: String::with_capacity(128),
        end: None,
        plan,
    };
    engine::run(&mut io, &mut w)?;
    w.end.unwrap_or(Ok(()))
}

impl Worker {
    fn global(&self, i: usize) -> u32 {
        self.plan.first + i as u32
    }

    /// Moves the sockets to a new step: idle ones start on it at once, busy
    /// ones when their task ends.
    fn set_step(&mut self, io: &mut Io, kind: StepKind) {
        self.st.done = 0;
        self.step = Step {
            gen: self.step.gen + 1,
            kind,
        };
        for i in 0..self.socks.len() {
            let s = &self.socks[i];
            match s.task {
                Task::Idle => self.adopt(io, i),
                // Traffic ends at any step change once nothing is in flight.
                Task::Traffic if s.inflight.is_none() => self.idle(io, i),
                Task::Recover => {
                    let last = s.recovery.map_or(
                        Fail(Fault::ConnectTimeout, "still away when traffic stopped"),
                        |a| a.last,
                    );
                    self.die(io, i, last);
                }
                _ => {}
            }
        }
    }

    /// An idle socket takes on the current step.
    fn adopt(&mut self, io: &mut Io, i: usize) {
        let s = &mut self.socks[i];
        s.working = self.step.gen;
        let open = s.alive && s.conn == Conn::Open;
        match self.step.kind {
            StepKind::Connect if !s.alive => {
                s.task = Task::Connect;
                self.queue.push_back(i as u32);
                io.schedule(i, io.now + self.timeout);
            }
            StepKind::Resume if s.node == 0 && open => {
                s.task = Task::Tour;
                s.hop = 0;
                self.begin_close(io, i);
            }
            StepKind::Traffic { interval, .. } if open => {
                s.task = Task::Traffic;
                s.next_send = io.now + offset(self.plan.seed, self.plan.first + i as u32, interval);
                io.schedule(i, s.next_send);
            }
            StepKind::Close if open => {
                s.task = Task::Close;
                self.begin_close(io, i);
            }
            _ => self.idle(io, i),
        }
    }

    /// The task is over: the socket counts itself done for its step, or, if
    /// a newer step came meanwhile, takes that on.
    fn idle(&mut self, io: &mut Io, i: usize) {
        let s = &mut self.socks[i];
        s.task = Task::Idle;
        io.unschedule(i);
        if s.working == self.step.gen {
            self.count_done(i);
        } else {
            self.adopt(io, i);
        }
    }

    fn count_done(&mut self, i: usize) {
        let s = &mut self.socks[i];
        let participates = match self.step.kind {
            StepKind::Connect | StepKind::Quiet | StepKind::Close => true,
            StepKind::Resume => s.node == 0,
            StepKind::Hold | StepKind::Traffic { .. } => false,
        };
        if participates && s.counted != self.step.gen {
            s.counted = self.step.gen;
            self.st.done += 1;
        }
    }

    /// Opens queued connects while slots are free.
    fn next_gate(&mut self, io: &mut Io) {
        while self.gated < self.plan.connect_concurrency.max(1) {
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            let i = i as usize;
            if self.socks[i].task == Task::Connect && self.socks[i].conn == Conn::None {
                self.socks[i].gated = true;
                self.gated += 1;
                let (node, room) = (self.socks[i].node, self.socks[i].room);
                self.open(io, i, node, false, room, None);
            }
        }
    }

    /// Frees the socket's connect slot; [`Handler::poll`] hands it on.
    fn ungate(&mut self, i: usize) {
        if std::mem::take(&mut self.socks[i].gated) {
            self.gated -= 1;
        }
    }

    /// Connects to `node`, asking for its session when `resume`; the welcome
    /// comes to [`Worker::on_welcome`].
    fn open(
        &mut self,
        io: &mut Io,
        i: usize,
        node: u32,
        resume: bool,
        room: u32,
        since: Option<Offset>,
    ) {
        let n = &self.plan.nodes[node as usize];
        node::ws_path(&mut self.path, room, since);
        let s = &mut self.socks[i];
        let session = s.session.as_ref().filter(|_| resume);
        let session = session.and_then(|id| std::str::from_utf8(id).ok());
        let r = io.connect(i, n.addr, None, &n.authority, &self.path, session);
        s.conn = Conn::Opening { at: io.now };
        let bound = match s.recovery {
            Some(a) if s.task == Task::Recover => (io.now + ATTEMPT).min(a.give_up),
            _ => io.now + self.timeout,
        };
        io.schedule(i, bound);
        if let Err(why) = r {
            self.open_failed(io, i, Fail(Fault::Connect, why));
        }
    }

    /// An open that did not reach its welcome: a victim tries again after
    /// its backoff; anyone else is done.
    fn open_failed(&mut self, io: &mut Io, i: usize, f: Fail) {
        io.close(i);
        let s = &mut self.socks[i];
        s.conn = Conn::None;
        match s.recovery.as_mut() {
            Some(a) if s.task == Task::Recover => {
                // Refusals and timeouts are expected under the storm; only
                // the last one counts, and only if the socket never gets in.
                a.last = f;
                let at = (io.now + a.backoff).min(a.give_up);
                a.backoff = (a.backoff * 2).min(BACKOFF_MAX);
                io.schedule(i, at);
            }
            _ => self.die(io, i, f),
        }
    }

    fn send(&mut self, io: &mut Io, i: usize) {
        self.socks[i].inflight = Some(io.now);
        io.send_text(i, PAYLOAD, 1);
        io.schedule(i, io.now + self.timeout);
    }

    /// Close 1000; then the goodbye (its total must be the last count) and
    /// the server's Close echo.
    fn begin_close(&mut self, io: &mut Io, i: usize) {
        self.socks[i].conn = Conn::Closing { bye: None };
        io.send_close(i, 1000);
        io.schedule(i, io.now + self.timeout);
    }

    fn leave(&mut self, io: &mut Io, i: usize) {
        let s = &mut self.socks[i];
        if s.alive {
            self.st.live -= 1;
            self.st.live_by_node[s.node as usize] -= 1;
        }
        s.alive = false;
        s.conn = Conn::None;
        io.close(i);
        io.unschedule(i);
    }

    /// Counts the fault and retires the socket. It reports in for the current
    /// step: the controller counted it in that step's target while it lived.
    fn die(&mut self, io: &mut Io, i: usize, f: Fail) {
        let g = self.global(i);
        self.st.fault(f.0, g, f.1);
        let s = &self.socks[i];
        let mismatch = matches!(
            f.0,
            Fault::WelcomeMismatch | Fault::CountMismatch | Fault::ByeMismatch
        );
        match s.task {
            Task::Tour if mismatch => self.st.resume_mismatches += 1,
            Task::Close if f.0 == Fault::ByeMismatch => self.st.bye_mismatches += 1,
            _ => {}
        }
        let traffic = matches!(self.step.kind, StepKind::Traffic { .. } | StepKind::Quiet);
        if traffic && s.alive && self.st.kill == Some(s.node) && !s.moved {
            self.st.kill_settled += 1;
        }
        self.leave(io, i);
        self.socks[i].task = Task::Dead;
        self.ungate(i);
        self.count_done(i);
    }

    /// The connection ended while open. A socket of the killed node resumes
    /// on a survivor; anyone else losing theirs is a fault.
    fn ended(&mut self, io: &mut Io, i: usize, f: Fail) {
        io.close(i);
        let s = &mut self.socks[i];
        s.conn = Conn::None;
        let kill = match self.step.kind {
            StepKind::Traffic { kill, .. } => kill,
            _ => None,
        };
        match kill {
            Some(k) if s.task == Task::Traffic && s.node == k && !s.moved => {
                let away = Away {
                    target: self.layout.survivor(self.plan.first + i as u32, k),
                    dropped: io.now,
                    give_up: io.now + self.timeout,
                    backoff: BACKOFF_FIRST,
                    unacked: s.inflight.take().is_some(),
                    last: Fail(Fault::ConnectTimeout, "still away when traffic stopped"),
                };
                s.recovery = Some(away);
                s.task = Task::Recover;
                self.st.recovery.dropped += 1;
                self.st.drop_ns.push(io.now);
                let since = s.offset;
                let (target, room) = (away.target, s.room);
                self.open(io, i, target, true, room, since);
            }
            _ => {
                if f.0 == Fault::UnexpectedClose && s.task == Task::Traffic {
                    self.st.recovery.survivors_disconnected += 1;
                }
                self.die(io, i, f);
            }
        }
    }

    fn on_welcome(&mut self, io: &mut Io, i: usize, w: Welcome) {
        let now = io.now;
        let Conn::Opening { at } = self.socks[i].conn else {
            return;
        };
        self.socks[i].conn = Conn::Open;
        self.saw(i, w.offset.and_then(parse_offset));
        let s = &mut self.socks[i];
        match s.task {
            Task::Connect => {
                if w.resumed || w.count != 0 {
                    let f = "a new session's welcome is not resumed:false, count 0";
                    return self.die(io, i, Fail(Fault::WelcomeMismatch, f));
                }
                s.session = Some(w.session);
                s.alive = true;
                self.st.live += 1;
                self.st.live_by_node[s.node as usize] += 1;
                self.st
                    .connect
                    .saturating_record(now.saturating_sub(at).max(1));
                self.send(io, i);
            }
            Task::Tour => {
                if !w.resumed || w.count != s.acked {
                    let f = "a resumed welcome does not carry the goodbye's total";
                    return self.die(io, i, Fail(Fault::WelcomeMismatch, f));
                }
                self.send(io, i);
            }
            Task::Recover => self.recovered(io, i, w),
            _ => {}
        }
    }

    /// A victim's welcome on its survivor: its count must be the last one
    /// acknowledged, plus at most the message in flight when its node died.
    fn recovered(&mut self, io: &mut Io, i: usize, w: Welcome) {
        let g = self.global(i);
        let (s, st) = (&mut self.socks[i], &mut self.st);
        let Some(a) = s.recovery.take() else { return };
        if s.offset.is_some() && w.recovered != Some(true) {
            st.tally.not_recovered += 1;
            let f = "a reconnect with since was not told recovered:true";
            st.fault(Fault::WelcomeMismatch, g, f);
        }
        if !w.resumed {
            st.fault(Fault::WelcomeMismatch, g, "resumed:false on the survivor");
            s.session = Some(w.session);
        }
        st.recovery.in_flight += u64::from(a.unacked);
        match check::resume(s.acked, u64::from(a.unacked), w.count) {
            Resume::Continues { applied } => {
                st.recovery.acked += applied;
                st.recovery.in_flight_counted += applied;
            }
            Resume::Lost { .. } => {
                st.recovery.lost += 1;
                let f = "resumed below the last acknowledged count";
                st.fault(Fault::WelcomeMismatch, g, f);
            }
            Resume::Ahead { .. } => {
                st.recovery.ahead += 1;
                st.fault(
                    Fault::WelcomeMismatch,
                    g,
                    "resumed above every message sent",
                );
            }
        }
        // Counting goes on from what the server holds, so one fault does
        // not turn every later reply into another.
        s.acked = w.count;
        s.moved = true;
        s.task = Task::Traffic;
        s.next_send = io.now;
        st.recovery.recovered += 1;
        st.kill_settled += 1;
        st.reconnect
            .saturating_record(io.now.saturating_sub(a.dropped).max(1));
        st.recovery.last_ns = st.recovery.last_ns.max(io.now);
        if s.working == self.step.gen {
            io.schedule(i, io.now);
        } else {
            self.idle(io, i);
        }
    }

    fn on_count(&mut self, io: &mut Io, i: usize, n: u64) {
        let now = io.now;
        let s = &mut self.socks[i];
        if s.inflight.is_none() {
            return self.die(io, i, Fail(Fault::BadFrame, "a reply to nothing"));
        }
        if n != s.acked + 1 {
            let f = "a count that is not the last one plus one";
            return self.die(io, i, Fail(Fault::CountMismatch, f));
        }
        s.acked = n;
        s.inflight = None;
        match s.task {
            Task::Connect => {
                self.st.connected += 1;
                self.st.last_open_ns = self.st.last_open_ns.max(now);
                self.ungate(i);
                self.idle(io, i);
            }
            Task::Tour => {
                self.st.hops += 1;
                s.hop += 1;
                if s.hop < self.layout.nodes {
                    self.begin_close(io, i);
                } else {
                    self.st.moved += 1;
                    self.st.resume_last = self.st.resume_last.max(now);
                    self.idle(io, i);
                }
            }
            Task::Traffic => {
                self.st.recovery.acked += 1;
                if s.working == self.step.gen {
                    io.schedule(i, s.next_send);
                } else {
                    self.idle(io, i);
                }
            }
            _ => {}
        }
    }

    /// Our Close was echoed: the goodbye must have carried the last count.
    fn on_echo(&mut self, io: &mut Io, i: usize, bye: Option<u64>) {
        // The handshake is complete; the TCP end is the server's business.
        io.close(i);
        let s = &mut self.socks[i];
        s.conn = Conn::None;
        match bye {
            None => {
                let f = Fail(Fault::ByeMismatch, "no goodbye before the Close echo");
                return self.die(io, i, f);
            }
            Some(t) if t != s.acked => {
                let f = "the goodbye's total is not the last count";
                return self.die(io, i, Fail(Fault::ByeMismatch, f));
            }
            Some(_) => {}
        }
        match s.task {
            Task::Tour => {
                let hop = self.layout.hops().nth(s.hop as usize).unwrap_or(0);
                let room = s.room;
                self.open(io, i, hop, true, room, None);
            }
            Task::Close => {
                self.st.closed += 1;
                self.leave(io, i);
                self.idle(io, i);
                self.socks[i].task = Task::Dead;
            }
            _ => {}
        }
    }

    fn saw(&mut self, i: usize, offset: Option<Offset>) {
        let s = &mut self.socks[i];
        if offset > s.offset {
            s.offset = offset;
        }
    }

    /// Tallies one broadcast receipt against what this socket has seen.
    fn note(&mut self, now: u64, i: usize, text: &str, offset: Option<&str>) {
        self.saw(i, offset.and_then(parse_offset));
        let g = self.global(i);
        let (m, st) = (&mut self.socks[i], &mut self.st);
        let Some(tag) = tag::parse(text) else {
            return st.fault(Fault::BadFrame, g, "a broadcast this run did not send");
        };
        let latency = now.saturating_sub(tag.t_ns).max(1);
        match tag.kind {
            Kind::Fanout => {
                let j = tag.seq as usize;
                if j >= st.fanout_got.len() {
                    return st.fault(Fault::BadFrame, g, "a fanout number out of range");
                }
                let (word, bit) = (j / 64, 1u64 << (j % 64));
                if m.fanout[word] & bit != 0 {
                    st.tally.fanout_dups += 1;
                    return;
                }
                m.fanout[word] |= bit;
                st.fanout_got[j] += 1;
                st.fanout_last[j] = st.fanout_last[j].max(now);
                st.tally.fanout += 1;
                st.fanout_latency.saturating_record(latency);
            }
            Kind::Room if tag.seq != m.room => st.tally.room_strays += 1,
            Kind::Room if m.room_seen => st.tally.room_dups += 1,
            Kind::Room => {
                m.room_seen = true;
                st.tally.room += 1;
                st.room_last = st.room_last.max(now);
                st.room_latency.saturating_record(latency);
            }
            Kind::Stream => {
                let j = tag.seq;
                if j < m.stream_next {
                    st.tally.stream_dups += 1;
                    return;
                }
                if j > m.stream_next {
                    // Counted once; the order is checked on from here.
                    st.tally.stream_gaps += 1;
                }
                m.stream_next = j + 1;
                let k = j as usize;
                if st.stream_got.len() <= k {
                    st.stream_got.resize(k + 1, 0);
                }
                st.stream_got[k] += 1;
                st.tally.stream += 1;
            }
            Kind::Barrier if m.barrier_seen => st.tally.barrier_dups += 1,
            Kind::Barrier => {
                m.barrier_seen = true;
                st.tally.barrier += 1;
                st.barrier_last = st.barrier_last.max(now);
                // Published after the room broadcast, so a member must have it.
                if tag.seq == m.room && !m.room_seen {
                    st.tally.room_late += 1;
                }
            }
        }
    }

    fn command(&mut self, io: &mut Io, cmd: Command) {
        let deadline = io.now + self.timeout;
        let mut wait = |wait, target| {
            self.pending = Some(Pending {
                wait,
                target,
                deadline,
            })
        };
        match cmd {
            Command::Connect => {
                wait(Wait::Connect, u64::from(self.plan.count));
                self.set_step(io, StepKind::Connect);
            }
            Command::Await { kind, seq } => wait(Wait::Deliver { kind, seq }, 0),
            Command::Tally => self.answer(false, Outcome::Tally(self.tally())),
            Command::Resume => {
                wait(Wait::Resume, self.st.live_by_node[0]);
                self.set_step(io, StepKind::Resume);
            }
            Command::Traffic {
                interval_ms,
                kill_node,
            } => {
                let st = &mut self.st;
                st.kill = kill_node;
                st.recovery = Recovery {
                    victims: kill_node
                        .and_then(|k| st.live_by_node.get(k as usize).copied())
                        .unwrap_or(0),
                    ..Recovery::default()
                };
                st.kill_settled = 0;
                st.drop_ns.clear();
                let interval = interval_ms.max(1) * MS;
                let kind = StepKind::Traffic {
                    interval,
                    kill: kill_node,
                };
                self.set_step(io, kind);
                self.answer(false, Outcome::TrafficOn);
            }
            Command::Killed { at_ns } => {
                wait(Wait::Killed { at_ns }, self.st.recovery.victims);
            }
            Command::Quiet => {
                wait(Wait::Quiet, self.st.live);
                self.set_step(io, StepKind::Quiet);
            }
            Command::Close => {
                wait(Wait::Close, self.st.live);
                self.set_step(io, StepKind::Close);
            }
        }
    }

    fn answer(&self, timed_out: bool, out: Outcome) {
        emit(&Event::Done {
            faults: self.st.faults.clone(),
            timed_out,
            out,
        });
    }

    /// (done, out of) for the wait in progress.
    fn progress(&self, p: &Pending) -> (u64, u64) {
        let st = &self.st;
        match p.wait {
            Wait::Deliver { kind, seq } => (got(st, kind, seq), st.live),
            Wait::Killed { .. } => (st.kill_settled, p.target),
            Wait::Connect | Wait::Resume | Wait::Quiet | Wait::Close => (st.done, p.target),
        }
    }

    fn tally(&self) -> Tally {
        Tally {
            fanout_latency: stats::to_pairs(&self.st.fanout_latency),
            room_latency: stats::to_pairs(&self.st.room_latency),
            ..self.st.tally.clone()
        }
    }

    fn outcome(&self, p: &Pending) -> Outcome {
        let st = &self.st;
        match p.wait {
            Wait::Connect => Outcome::Connected {
                ok: st.connected,
                failed: p.target - st.connected.min(p.target),
                last_ns: st.last_open_ns,
                connect: stats::to_pairs(&st.connect),
            },
            Wait::Deliver { kind, seq } => Outcome::Delivered {
                got: got(st, kind, seq),
                last_ns: match kind {
                    Kind::Fanout => st.fanout_last.get(seq as usize).copied().unwrap_or(0),
                    Kind::Room => st.room_last,
                    Kind::Barrier => st.barrier_last,
                    // Its figure is the order check, not the timing.
                    Kind::Stream => 0,
                },
            },
            Wait::Resume => Outcome::Resumed {
                moved: st.moved,
                hops: st.hops,
                mismatches: st.resume_mismatches,
                last_ns: st.resume_last,
            },
            Wait::Killed { at_ns } => Outcome::Recovered(Recovery {
                early: st.drop_ns.iter().filter(|&&t| t < at_ns).count() as u64,
                reconnect: stats::to_pairs(&st.reconnect),
                ..st.recovery.clone()
            }),
            Wait::Quiet => Outcome::Quieted {
                acked: st.recovery.acked,
                survivors_lost: st.recovery.survivors_disconnected,
            },
            Wait::Close => Outcome::Closed {
                closed: st.closed,
                bad_byes: st.bye_mismatches,
            },
        }
    }
}

fn got(st: &State, kind: Kind, seq: u32) -> u64 {
    match kind {
        Kind::Fanout => st.fanout_got.get(seq as usize).copied().unwrap_or(0),
        Kind::Stream => st.stream_got.get(seq as usize).copied().unwrap_or(0),
        Kind::Room => st.tally.room,
        Kind::Barrier => st.tally.barrier,
    }
}

impl Handler for Worker {
    fn on_text(&mut self, io: &mut Io, i: usize, r: Reply<'_>) {
        let conn = self.socks[i].conn;
        match r {
            Reply::Heartbeat => {}
            Reply::Welcome(w) if matches!(conn, Conn::Opening { .. }) => self.on_welcome(io, i, w),
            _ if matches!(conn, Conn::Opening { .. }) => {
                let f = Fail(Fault::BadFrame, "the first frame is not a welcome");
                self.open_failed(io, i, f);
            }
            Reply::Broadcast { text, offset } => self.note(io.now, i, &text, offset),
            Reply::Bye { total, .. } if matches!(conn, Conn::Closing { .. }) => {
                self.socks[i].conn = Conn::Closing { bye: Some(total) };
            }
            Reply::Count(n) if conn == Conn::Open => self.on_count(io, i, n),
            _ if matches!(conn, Conn::Closing { .. }) => {
                self.die(
                    io,
                    i,
                    Fail(Fault::BadFrame, "unexpected text while closing"),
                );
            }
            Reply::Count(_) | Reply::Bye { .. } => {
                self.die(io, i, Fail(Fault::BadFrame, "a reply to nothing"));
            }
            Reply::Welcome(_) => {
                self.die(io, i, Fail(Fault::BadFrame, "a welcome on an open socket"));
            }
            Reply::RateLimited => self.die(io, i, Fail(Fault::BadFrame, "rate limited")),
            Reply::Unknown => {
                let f = Fail(Fault::BadFrame, "text the contract does not name");
                self.die(io, i, f);
            }
        }
    }

    fn on_close(&mut self, io: &mut Io, i: usize, _code: Option<u16>) {
        match self.socks[i].conn {
            Conn::Closing { bye } => self.on_echo(io, i, bye),
            Conn::Opening { .. } => {
                let f = Fail(Fault::UnexpectedClose, "closed before the welcome");
                self.open_failed(io, i, f);
            }
            Conn::Open => self.ended(io, i, Fail(Fault::UnexpectedClose, "the server sent Close")),
            Conn::None => {}
        }
    }

    fn on_end(&mut self, io: &mut Io, i: usize, end: End) {
        let (fault, why) = end.fault();
        match self.socks[i].conn {
            Conn::Opening { .. } => self.open_failed(io, i, Fail(fault, why)),
            Conn::Open => self.ended(io, i, Fail(Fault::UnexpectedClose, why)),
            Conn::Closing { .. } => {
                let f = Fail(Fault::UnexpectedClose, "ended without a Close echo");
                self.die(io, i, f);
            }
            Conn::None => {}
        }
    }

    fn on_due(&mut self, io: &mut Io, i: usize) {
        let s = &self.socks[i];
        match (s.task, s.conn) {
            (Task::Connect, Conn::None) => {
                let f = Fail(Fault::ConnectTimeout, "no connect slot in time");
                self.die(io, i, f);
            }
            (Task::Recover, Conn::None) => match s.recovery {
                Some(a) if io.now < a.give_up => {
                    let (target, room, since) = (a.target, s.room, s.offset);
                    self.open(io, i, target, true, room, since);
                }
                Some(a) => self.die(io, i, a.last),
                None => {}
            },
            (_, Conn::Opening { .. }) => {
                let f = Fail(Fault::ConnectTimeout, "no welcome in time");
                self.open_failed(io, i, f);
            }
            (_, Conn::Closing { .. }) => {
                self.die(io, i, Fail(Fault::CloseTimeout, "no Close echo"));
            }
            (_, Conn::Open) if s.inflight.is_some() => {
                let f = Fail(Fault::ReplyTimeout, "no count within --timeout");
                self.die(io, i, f);
            }
            (Task::Traffic, Conn::Open) => {
                let StepKind::Traffic { interval, .. } = self.step.kind else {
                    return;
                };
                let s = &mut self.socks[i];
                s.next_send += interval;
                if s.next_send < io.now {
                    s.next_send = io.now + interval;
                }
                self.send(io, i);
            }
            _ => {}
        }
    }

    fn on_line(&mut self, io: &mut Io, line: Option<&[u8]>) {
        let Some(line) = line else {
            // The orchestrator is done or gone: nothing left to do.
            self.end.get_or_insert(Ok(()));
            return;
        };
        if line.is_empty() {
            return;
        }
        match serde_json::from_slice::<Command>(line) {
            Ok(cmd) => self.command(io, cmd),
            Err(e) => {
                let text = String::from_utf8_lossy(line).into_owned();
                self.end = Some(Err(WorkerError::Command(text, e)));
            }
        }
    }

    fn poll(&mut self, io: &mut Io) -> Option<u64> {
        if self.end.is_some() {
            return None;
        }
        self.next_gate(io);
        if io.now >= self.next_poll {
            self.next_poll = io.now + POLL;
            if let Some(p) = self.pending.take() {
                let (done, of) = self.progress(&p);
                if done >= of || io.now >= p.deadline {
                    self.answer(done < of, self.outcome(&p));
                } else {
                    if io.now - self.last_progress >= PROGRESS_EVERY {
                        self.last_progress = io.now;
                        let faults = self.st.faults.total();
                        emit(&Event::Progress { done, of, faults });
                    }
                    self.pending = Some(p);
                }
            }
        }
        Some(self.next_poll)
    }
}

/// Where in the first interval a socket starts sending, so a node's sockets
/// do not all fire in the same millisecond.
fn offset(seed: u64, i: u32, interval: u64) -> u64 {
    splitmix(seed ^ u64::from(i)) % interval.max(1)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_inside_the_interval_and_spread() {
        let iv = 2_000 * MS;
        let offs: Vec<u64> = (0..1000).map(|i| offset(1, i, iv)).collect();
        assert!(offs.iter().all(|o| *o < iv));
        let early = offs.iter().filter(|o| **o < iv / 2).count();
        assert!((400..600).contains(&early), "{early}");
        assert_eq!(offset(1, 7, iv), offset(1, 7, iv));
        assert_eq!(offset(1, 7, 0), 0);
    }

    #[test]
    fn offsets_are_read_as_numbers() {
        assert_eq!(
            parse_offset("1700000000000-3"),
            Some((1_700_000_000_000, 3))
        );
        assert!(parse_offset("9-10") > parse_offset("9-9"));
        assert_eq!(parse_offset("nope"), None);
    }
}
