//! One scale worker process: its share of the sockets as one task each on a
//! single-threaded tokio runtime, a controller that turns the orchestrator's
//! commands into steps for the sockets, and the counters they fill in.
//! Stdin closing ends the process, so a worker never outlives its parent.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::layout::Layout;
use super::proto::{self, Command, Event, Outcome, Recovery, Tally, WorkerPlan};
use super::socket;
use super::tag::Kind;
use crate::stats::{self, Fault, Faults};

/// How often the controller looks at the counters to see if a wait is over.
const POLL: Duration = Duration::from_millis(20);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Faults described on stderr per worker; the rest are only counted.
const FAULT_LINES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unreadable worker plan: {0}")]
    Plan(serde_json::Error),
    #[error("the worker plan holds no node")]
    NoNodes,
    #[error("could not build the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("unreadable command `{0}`: {1}")]
    Command(String, serde_json::Error),
    #[error("reading commands: {0}")]
    Stdin(std::io::Error),
}

/// What every socket should be doing now. `gen` grows with every command
/// that changes it, so a socket can tell whether it already counted itself
/// as done for the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub gen: u64,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Hold,
    Connect,
    Resume,
    Traffic {
        interval: Duration,
        kill: Option<u32>,
    },
    Quiet,
    Close,
}

/// Everything the socket tasks share; single-threaded, so a RefCell, never
/// borrowed across an await.
pub struct Wk {
    pub plan: WorkerPlan,
    pub layout: Layout,
    pub config: WebSocketConfig,
    pub timeout: Duration,
    /// Connects in flight at once.
    pub gate: Semaphore,
    pub steps: watch::Sender<Step>,
    pub st: RefCell<State>,
}

/// The counters of one worker.
pub struct State {
    pub faults: Faults,
    fault_lines: u32,
    /// Sockets holding an open session, by the node the layout gives them.
    pub live: u64,
    pub live_by_node: Vec<u64>,
    /// Sockets that finished the current step (or died in it).
    pub done: u64,
    pub connected: u64,
    pub last_open_ns: u64,
    pub connect: Histogram<u64>,
    pub fanout_got: Vec<u64>,
    /// Sockets that got each stream broadcast (in order, or past a gap).
    pub stream_got: Vec<u64>,
    pub fanout_last: Vec<u64>,
    pub room_last: u64,
    pub barrier_last: u64,
    pub tally: Tally,
    pub fanout_latency: Histogram<u64>,
    pub room_latency: Histogram<u64>,
    pub moved: u64,
    pub hops: u64,
    pub resume_mismatches: u64,
    pub resume_last: u64,
    /// The node to be killed while traffic runs.
    pub kill: Option<u32>,
    pub recovery: Recovery,
    pub drop_ns: Vec<u64>,
    /// Victims back or given up: the kill wait ends when this is `victims`.
    pub kill_settled: u64,
    pub reconnect: Histogram<u64>,
    pub closed: u64,
    pub bye_mismatches: u64,
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
    pub fn fault(&mut self, f: Fault, socket: u32, what: &str) {
        self.faults.bump(f);
        if self.fault_lines < FAULT_LINES {
            self.fault_lines += 1;
            eprintln!("socket {socket}: {}: {what}", f.name());
        }
    }
}

impl Wk {
    pub fn step(&self) -> Step {
        *self.steps.borrow()
    }
}

/// The `scale-worker` entry: runs until stdin closes.
pub fn main(plan_json: &str) -> Result<(), WorkerError> {
    let plan: WorkerPlan = serde_json::from_str(plan_json).map_err(WorkerError::Plan)?;
    if plan.nodes.is_empty() {
        return Err(WorkerError::NoNodes);
    }
    crate::sys::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, control(plan))
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
    deadline: Instant,
}

async fn control(plan: WorkerPlan) -> Result<(), WorkerError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (steps, _) = watch::channel(Step {
        gen: 0,
        kind: StepKind::Hold,
    });
    let wk = Rc::new(Wk {
        layout: Layout {
            nodes: plan.nodes.len() as u32,
            rooms: plan.rooms.max(1),
        },
        config,
        timeout: Duration::from_millis(plan.timeout_ms),
        gate: Semaphore::new(plan.connect_concurrency.max(1) as usize),
        steps,
        st: RefCell::new(State::new(&plan)),
        plan,
    });
    for i in wk.plan.first..wk.plan.first + wk.plan.count {
        tokio::task::spawn_local(socket::run(wk.clone(), i));
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<Pending> = None;
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    // The orchestrator is done or gone: nothing left to do.
                    Ok(None) => std::process::exit(0),
                    Err(e) => return Err(WorkerError::Stdin(e)),
                };
                if line.trim().is_empty() {
                    continue;
                }
                let cmd: Command = serde_json::from_str(&line)
                    .map_err(|e| WorkerError::Command(line.clone(), e))?;
                pending = start(&wk, cmd);
            }
            _ = poll.tick() => {
                let Some(p) = &pending else { continue };
                let now = Instant::now();
                let (done, of) = progress(&wk, p);
                if done >= of || now >= p.deadline {
                    let timed_out = done < of;
                    answer(&wk, timed_out, outcome(&wk, p));
                    pending = None;
                } else if now - last_progress >= PROGRESS_EVERY {
                    last_progress = now;
                    let faults = wk.st.borrow().faults.total();
                    proto::emit(&Event::Progress { done, of, faults });
                }
            }
        }
    }
}

fn answer(wk: &Wk, timed_out: bool, out: Outcome) {
    let faults = wk.st.borrow().faults.clone();
    proto::emit(&Event::Done {
        faults,
        timed_out,
        out,
    });
}

/// Moves the sockets to a new step. They run only once the controller
/// yields, so the target it counts next cannot race them.
fn set_step(wk: &Wk, kind: StepKind) {
    wk.st.borrow_mut().done = 0;
    let gen = wk.step().gen + 1;
    wk.steps.send_replace(Step { gen, kind });
}

fn start(wk: &Wk, cmd: Command) -> Option<Pending> {
    let deadline = Instant::now() + wk.timeout;
    let pending = |wait, target| {
        Some(Pending {
            wait,
            target,
            deadline,
        })
    };
    match cmd {
        Command::Connect => {
            set_step(wk, StepKind::Connect);
            pending(Wait::Connect, u64::from(wk.plan.count))
        }
        Command::Await { kind, seq } => pending(Wait::Deliver { kind, seq }, 0),
        Command::Tally => {
            answer(wk, false, Outcome::Tally(tally(wk)));
            None
        }
        Command::Resume => {
            let movers = wk.st.borrow().live_by_node[0];
            set_step(wk, StepKind::Resume);
            pending(Wait::Resume, movers)
        }
        Command::Traffic {
            interval_ms,
            kill_node,
        } => {
            {
                let mut st = wk.st.borrow_mut();
                st.kill = kill_node;
                st.recovery = Recovery {
                    victims: kill_node
                        .and_then(|k| st.live_by_node.get(k as usize).copied())
                        .unwrap_or(0),
                    ..Recovery::default()
                };
                st.kill_settled = 0;
                st.drop_ns.clear();
            }
            let interval = Duration::from_millis(interval_ms.max(1));
            set_step(
                wk,
                StepKind::Traffic {
                    interval,
                    kill: kill_node,
                },
            );
            answer(wk, false, Outcome::TrafficOn);
            None
        }
        Command::Killed { at_ns } => {
            let victims = wk.st.borrow().recovery.victims;
            pending(Wait::Killed { at_ns }, victims)
        }
        Command::Quiet => {
            let live = wk.st.borrow().live;
            set_step(wk, StepKind::Quiet);
            pending(Wait::Quiet, live)
        }
        Command::Close => {
            let live = wk.st.borrow().live;
            set_step(wk, StepKind::Close);
            pending(Wait::Close, live)
        }
    }
}

/// (done, out of) for the wait in progress.
fn progress(wk: &Wk, p: &Pending) -> (u64, u64) {
    let st = wk.st.borrow();
    match p.wait {
        Wait::Deliver { kind, seq } => (got(&st, kind, seq), st.live),
        Wait::Killed { .. } => (st.kill_settled, p.target),
        Wait::Connect | Wait::Resume | Wait::Quiet | Wait::Close => (st.done, p.target),
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

fn tally(wk: &Wk) -> Tally {
    let st = wk.st.borrow();
    Tally {
        fanout_latency: stats::to_pairs(&st.fanout_latency),
        room_latency: stats::to_pairs(&st.room_latency),
        ..st.tally.clone()
    }
}

fn outcome(wk: &Wk, p: &Pending) -> Outcome {
    let st = wk.st.borrow();
    match p.wait {
        Wait::Connect => Outcome::Connected {
            ok: st.connected,
            failed: p.target - st.connected.min(p.target),
            last_ns: st.last_open_ns,
            connect: stats::to_pairs(&st.connect),
        },
        Wait::Deliver { kind, seq } => Outcome::Delivered {
            kind,
            seq,
            got: got(&st, kind, seq),
            live: st.live,
            last_ns: match kind {
                Kind::Fanout => st.fanout_last.get(seq as usize).copied().unwrap_or(0),
                Kind::Room => st.room_last,
                Kind::Barrier => st.barrier_last,
                // Its figure is the order check, not the timing.
                Kind::Stream => 0,
            },
        },
        Wait::Resume => Outcome::Resumed {
            movers: p.target,
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
            survivors_disconnected: st.recovery.survivors_disconnected,
        },
        Wait::Close => Outcome::Closed {
            expected: p.target,
            closed: st.closed,
            bye_mismatches: st.bye_mismatches,
        },
    }
}
