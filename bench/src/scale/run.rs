//! The orchestrator of a scale run: starts the workers, walks the phases
//! (connect, fanout, room, resume, kill, close), posts the broadcasts and
//! kills the node itself, and folds the workers' answers into the report.
//! Every wait is bounded by --timeout plus a grace for the workers' own
//! answer, and the workers are killed on any way out but the normal one.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use super::args::ScaleSpec;
use super::http;
use super::layout::{self, room_name, Layout};
use super::proto::{Command, Event, Outcome, Tally, WorkerPlan};
use super::report::{
    Assertion, BroadcastFigures, CloseFigures, ConnectFigures, FanoutFigures, KillFigures,
    ResumeFigures, RoomFigures, ScaleReport,
};
use super::tag::{Kind, Tag};
use crate::pool::{Msg, Pool};
use crate::report::Quantiles;
use crate::stats::{self, Fault, Faults};
use crate::sys::{self, now_ns};

/// Time a worker gets past --timeout to send its answer.
const GRACE: Duration = Duration::from_secs(10);
/// Bound on reaching a node before the run, and on each HTTP step.
const REACH: Duration = Duration::from_secs(5);
const HTTP_LIMIT: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long finished workers get to exit once their stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("node {0} ({1}) is unreachable: {2}")]
    Unreachable(usize, String, std::io::Error),
    #[error("--pid {0} (node {1}) is not a running process")]
    NoProcess(u32, u32),
    #[error("could not start a worker process: {0}")]
    Spawn(std::io::Error),
    #[error("worker {0} ended during {1} (see its lines above)")]
    WorkerLost(usize, String),
    #[error("worker {0} did not answer {1} within --timeout")]
    WorkerSilent(usize, String),
    #[error("worker {0} answered {1} with {2}")]
    Protocol(usize, String, String),
    #[error("could not SIGKILL pid {0}: {1}")]
    Signal(u32, std::io::Error),
}

/// The worker processes, and each one's fault totals from its latest answer.
struct Workers {
    pool: Pool<Event>,
    exited: Vec<bool>,
    faults: Vec<Faults>,
}

impl Workers {
    fn say(&mut self, cmd: &Command, what: &str) -> Result<(), ScaleError> {
        let line = serde_json::to_string(cmd).expect("commands serialize");
        self.pool
            .say(&line)
            .map_err(|w| ScaleError::WorkerLost(w, what.to_string()))
    }

    fn fault_total(&self) -> Faults {
        let mut f = Faults::default();
        for w in &self.faults {
            f.add(w);
        }
        f
    }
}

/// Runs the phases and returns the report; a failed assertion is in the
/// report, the error is for runs that could not take place.
pub fn run(spec: &ScaleSpec) -> Result<ScaleReport, ScaleError> {
    for (i, n) in spec.nodes.iter().enumerate() {
        TcpStream::connect_timeout(&n.addr, REACH.min(spec.args.timeout))
            .map_err(|e| ScaleError::Unreachable(i, spec.args.nodes[i].clone(), e))?;
    }
    if let Some(k) = spec.kill {
        if !sys::alive(k.pid) {
            return Err(ScaleError::NoProcess(k.pid, k.node));
        }
    }
    let t0 = now_ns();
    let plans: Vec<WorkerPlan> = layout::split(spec.args.sockets, spec.procs)
        .into_iter()
        .enumerate()
        .map(|(w, (first, count))| WorkerPlan {
            worker: w as u32,
            nodes: spec.nodes.clone(),
            rooms: spec.args.rooms,
            broadcasts: spec.args.broadcasts,
            first,
            count,
            connect_concurrency: spec.args.connect_concurrency,
            timeout_ms: spec.args.timeout.as_millis() as u64,
            seed: spec.args.seed,
        })
        .collect();
    let workers = Workers {
        pool: Pool::spawn("scale-worker", &plans).map_err(ScaleError::Spawn)?,
        exited: vec![false; plans.len()],
        faults: vec![Faults::default(); plans.len()],
    };
    let mut o = Orchestrator {
        spec,
        layout: spec.layout(),
        w: workers,
        report: ScaleReport {
            nodes: spec.args.nodes.clone(),
            sockets: spec.args.sockets,
            procs: plans.len() as u32,
            rooms: spec.args.rooms,
            broadcasts: spec.args.broadcasts,
            kill_node: spec.kill.map(|k| k.node),
            ..ScaleReport::default()
        },
        seen: Faults::default(),
    };
    o.connect()?;
    o.fanout()?;
    o.room()?;
    o.resume()?;
    if spec.kill.is_some() {
        o.kill()?;
    }
    o.close()?;
    o.w.pool.shutdown(EXIT_GRACE);
    let mut report = o.report;
    let faults = o.w.fault_total();
    report.fault_total = faults.total();
    report.faults = named(&faults);
    report.duration_s = secs(now_ns() - t0);
    report.assertions = assess(&report);
    report.settle();
    Ok(report)
}

struct Orchestrator<'a> {
    spec: &'a ScaleSpec,
    layout: Layout,
    w: Workers,
    report: ScaleReport,
    /// Fault totals at the end of the previous phase.
    seen: Faults,
}

impl Orchestrator<'_> {
    fn note(&self, line: &str) {
        if !self.spec.args.quiet {
            eprintln!("scale: {line}");
        }
    }

    /// Sends `cmd` to every worker and waits for every answer.
    fn ask(&mut self, cmd: Command, what: &str) -> Result<Vec<(bool, Outcome)>, ScaleError> {
        self.w.say(&cmd, what)?;
        let n = self.w.pool.len();
        let mut answers: Vec<Option<(bool, Outcome)>> = vec![None; n];
        let mut progress = vec![(0u64, 0u64); n];
        let end = now_ns() + (self.spec.args.timeout + GRACE).as_nanos() as u64;
        let mut last_line = now_ns();
        while answers.iter().any(Option::is_none) {
            let now = now_ns();
            if now >= end {
                let w = answers.iter().position(Option::is_none).unwrap_or(0);
                return Err(ScaleError::WorkerSilent(w, what.to_string()));
            }
            let wait = Duration::from_nanos((end - now).min(100_000_000));
            match self.w.pool.rx.recv_timeout(wait) {
                Ok(Msg::Line(i, Event::Progress { done, of, .. })) => progress[i] = (done, of),
                Ok(Msg::Line(
                    i,
                    Event::Done {
                        faults,
                        timed_out,
                        out,
                    },
                )) => {
                    self.w.faults[i] = faults;
                    answers[i] = Some((timed_out, out));
                }
                Ok(Msg::Log(i, line)) => eprintln!("worker {i}: {line}"),
                Ok(Msg::Exit(i)) => {
                    self.w.exited[i] = true;
                    if answers[i].is_none() {
                        return Err(ScaleError::WorkerLost(i, what.to_string()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let w = answers.iter().position(Option::is_none).unwrap_or(0);
                    return Err(ScaleError::WorkerLost(w, what.to_string()));
                }
            }
            if now_ns() - last_line >= PROGRESS_EVERY.as_nanos() as u64 {
                last_line = now_ns();
                let (done, of) = progress
                    .iter()
                    .fold((0, 0), |(d, o), &(pd, po)| (d + pd, o + po));
                if of > 0 {
                    self.note(&format!("{what} {done}/{of}"));
                }
            }
        }
        let answers: Vec<(bool, Outcome)> = answers.into_iter().flatten().collect();
        if answers.iter().any(|(t, _)| *t) {
            self.report.timeouts.push(what.to_string());
        }
        Ok(answers)
    }

    /// Asks every worker and hands each answer to `add`, which says whether
    /// it was the kind asked for; returns whether any worker ran out of time.
    fn gather(
        &mut self,
        cmd: Command,
        what: &str,
        mut add: impl FnMut(&Outcome) -> bool,
    ) -> Result<bool, ScaleError> {
        let answers = self.ask(cmd, what)?;
        for (w, (_, out)) in answers.iter().enumerate() {
            if !add(out) {
                return Err(ScaleError::Protocol(w, what.into(), format!("{out:?}")));
            }
        }
        Ok(answers.iter().any(|(t, _)| *t))
    }

    /// Takes worker lines for `d`; a worker that exits now is lost.
    fn pause(&mut self, d: Duration, what: &str) -> Result<(), ScaleError> {
        let end = now_ns() + d.as_nanos() as u64;
        loop {
            let now = now_ns();
            if now >= end {
                return Ok(());
            }
            match self.w.pool.rx.recv_timeout(Duration::from_nanos(end - now)) {
                Ok(Msg::Log(i, line)) => eprintln!("worker {i}: {line}"),
                Ok(Msg::Exit(i)) | Ok(Msg::Line(i, Event::Done { .. })) => {
                    return Err(ScaleError::WorkerLost(i, what.to_string()))
                }
                Ok(Msg::Line(_, Event::Progress { .. })) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ScaleError::WorkerLost(0, what.to_string()))
                }
            }
        }
    }

    /// Faults by kind since the previous call.
    fn phase_faults(&mut self) -> BTreeMap<String, u64> {
        let now = self.w.fault_total();
        let mut delta = Faults(
            now.0
                .iter()
                .enumerate()
                .map(|(k, v)| v.saturating_sub(self.seen.0.get(k).copied().unwrap_or(0)))
                .collect(),
        );
        delta.0.resize(Fault::ALL.len(), 0);
        self.seen = now;
        named(&delta)
    }

    fn connect(&mut self) -> Result<(), ScaleError> {
        self.note(&format!("connect: {} sockets", self.spec.args.sockets));
        let t0 = now_ns();
        let mut f = ConnectFigures::default();
        let (mut h, mut last) = (stats::histogram(), 0);
        self.gather(Command::Connect, "connect", |out| {
            let Outcome::Connected {
                ok,
                failed,
                last_ns,
                connect,
            } = out
            else {
                return false;
            };
            (f.connected, f.failures) = (f.connected + ok, f.failures + failed);
            last = last.max(*last_ns);
            stats::merge_pairs(&mut h, connect);
            true
        })?;
        f.all_connected_s = secs(last.saturating_sub(t0));
        f.connect_ms = Quantiles::of(&h, 1e6);
        f.faults = self.phase_faults();
        self.note(&format!(
            "connect: {} connected in {:.2} s, {} failed",
            f.connected, f.all_connected_s, f.failures
        ));
        self.report.phases.connect = Some(f);
        Ok(())
    }

    fn fanout(&mut self) -> Result<(), ScaleError> {
        let n = self.spec.nodes.len() as u32;
        let mut f = FanoutFigures {
            broadcasts: self.spec.args.broadcasts,
            expected: u64::from(self.spec.args.sockets) * u64::from(self.spec.args.broadcasts),
            ..FanoutFigures::default()
        };
        for j in 0..self.spec.args.broadcasts {
            let node = j % n;
            let mut b = BroadcastFigures {
                seq: j,
                node,
                ..BroadcastFigures::default()
            };
            let posted = http::broadcast(
                &self.spec.nodes[node as usize],
                None,
                |t| tag(Kind::Fanout, j, t),
                HTTP_LIMIT.min(self.spec.args.timeout),
            );
            match posted {
                Ok(a) => {
                    b.accepted = true;
                    b.shards = a.shards;
                    let what = format!("fanout {}/{}", j + 1, self.spec.args.broadcasts);
                    let cmd = Command::Await {
                        kind: Kind::Fanout,
                        seq: j,
                    };
                    let (got, last, timed_out) = self.delivered(cmd, &what)?;
                    b.got = got;
                    b.timed_out = timed_out;
                    b.last_ms = (last > 0).then(|| ms(last.saturating_sub(a.sent_ns)));
                }
                Err(e) => self.note(&format!("fanout {j}: POST via node {node} failed: {e}")),
            }
            f.per_broadcast.push(b);
        }
        f.worst_last_ms = f
            .per_broadcast
            .iter()
            .filter_map(|b| b.last_ms)
            .reduce(f64::max);
        let t = self.tally("fanout tally")?;
        f.deliveries = t.fanout;
        f.missing = f.expected.saturating_sub(t.fanout);
        f.duplicates = t.fanout_dups;
        let mut h = stats::histogram();
        stats::merge_pairs(&mut h, &t.fanout_latency);
        f.latency_ms = Quantiles::of(&h, 1e6);
        f.faults = self.phase_faults();
        self.note(&format!(
            "fanout: {} of {} deliveries, {} duplicates",
            f.deliveries, f.expected, f.duplicates
        ));
        self.report.phases.fanout = Some(f);
        Ok(())
    }

    /// (got, last receipt ns, any worker timed out) of one awaited broadcast.
    fn delivered(&mut self, cmd: Command, what: &str) -> Result<(u64, u64, bool), ScaleError> {
        let (mut got, mut last) = (0, 0);
        let timed_out = self.gather(cmd, what, |out| {
            let Outcome::Delivered { got: g, last_ns } = out else {
                return false;
            };
            (got, last) = (got + g, last.max(*last_ns));
            true
        })?;
        Ok((got, last, timed_out))
    }

    fn tally(&mut self, what: &str) -> Result<Tally, ScaleError> {
        let mut sum = Tally::default();
        let mut fan = stats::histogram();
        let mut room = stats::histogram();
        self.gather(Command::Tally, what, |out| {
            let Outcome::Tally(t) = out else {
                return false;
            };
            sum.add_counts(t);
            stats::merge_pairs(&mut fan, &t.fanout_latency);
            stats::merge_pairs(&mut room, &t.room_latency);
            true
        })?;
        sum.fanout_latency = stats::to_pairs(&fan);
        sum.room_latency = stats::to_pairs(&room);
        Ok(sum)
    }

    fn room(&mut self) -> Result<(), ScaleError> {
        let n = self.spec.nodes.len();
        let room = room_name(0);
        let mut f = RoomFigures {
            room: room.clone(),
            members: u64::from(self.layout.members(self.spec.args.sockets, 0)),
            barrier_expected: u64::from(self.spec.args.sockets),
            ..RoomFigures::default()
        };
        let limit = HTTP_LIMIT.min(self.spec.args.timeout);
        let posted = http::broadcast(
            &self.spec.nodes[1 % n],
            Some(&room),
            |t| tag(Kind::Room, 0, t),
            limit,
        )
        .and_then(|a| {
            // Only after the 202: the barrier must be published second.
            f.shards = a.shards;
            http::broadcast(
                &self.spec.nodes[2 % n],
                None,
                |t| tag(Kind::Barrier, 0, t),
                limit,
            )
        });
        match posted {
            Ok(_) => {
                f.accepted = true;
                let cmd = Command::Await {
                    kind: Kind::Barrier,
                    seq: 0,
                };
                self.delivered(cmd, "room barrier")?;
            }
            Err(e) => self.note(&format!("room: POST failed: {e}")),
        }
        let t = self.tally("room tally")?;
        f.delivered = t.room;
        f.missing = f.members.saturating_sub(t.room);
        f.duplicates = t.room_dups;
        f.late = t.room_late;
        f.strays = t.room_strays;
        f.barrier_got = t.barrier;
        f.barrier_duplicates = t.barrier_dups;
        let mut h = stats::histogram();
        stats::merge_pairs(&mut h, &t.room_latency);
        f.latency_ms = Quantiles::of(&h, 1e6);
        // Fanout copies that straggled in after its tally are still copies.
        if let Some(fan) = self.report.phases.fanout.as_mut() {
            fan.duplicates = t.fanout_dups;
        }
        f.faults = self.phase_faults();
        self.note(&format!(
            "room: {} of {} members, {} strays, barrier {} of {}",
            f.delivered, f.members, f.strays, f.barrier_got, f.barrier_expected
        ));
        self.report.phases.room = Some(f);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), ScaleError> {
        let movers = u64::from(self.layout.on_node(self.spec.args.sockets, 0));
        self.note(&format!("resume: {movers} sockets tour every node"));
        let t0 = now_ns();
        let mut f = ResumeFigures {
            movers,
            expected_hops: movers * u64::from(self.layout.nodes),
            ..ResumeFigures::default()
        };
        let mut last = 0;
        self.gather(Command::Resume, "resume", |out| {
            let Outcome::Resumed {
                moved,
                hops,
                mismatches,
                last_ns,
            } = out
            else {
                return false;
            };
            (f.moved, f.hops) = (f.moved + moved, f.hops + hops);
            f.mismatches += mismatches;
            last = last.max(*last_ns);
            true
        })?;
        f.time_s = secs(last.saturating_sub(t0));
        f.faults = self.phase_faults();
        self.note(&format!(
            "resume: {} of {} toured, {} hops in {:.2} s",
            f.moved, f.movers, f.hops, f.time_s
        ));
        self.report.phases.resume = Some(f);
        Ok(())
    }

    fn kill(&mut self) -> Result<(), ScaleError> {
        let Some(k) = self.spec.kill else {
            return Ok(());
        };
        let interval = self.spec.args.send_interval;
        let mut f = KillFigures {
            node: k.node,
            pid: k.pid,
            victims: u64::from(self.layout.on_node(self.spec.args.sockets, k.node)),
            ..KillFigures::default()
        };
        self.note(&format!(
            "kill: traffic every {}, node {} dies in {}",
            humantime::format_duration(interval),
            k.node,
            humantime::format_duration(interval * 2)
        ));
        let cmd = Command::Traffic {
            interval_ms: interval.as_millis() as u64,
            kill_node: Some(k.node),
        };
        self.ask(cmd, "traffic")?;
        let stream = Stream::start(
            self.spec
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k.node as usize)
                .map(|(_, n)| n.clone())
                .collect(),
            HTTP_LIMIT.min(self.spec.args.timeout),
        );
        self.pause(interval * 2, "traffic")?;
        let at = now_ns();
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        if unsafe { libc::kill(k.pid as libc::pid_t, libc::SIGKILL) } != 0 {
            return Err(ScaleError::Signal(k.pid, std::io::Error::last_os_error()));
        }
        self.note(&format!("kill: SIGKILL to pid {}", k.pid));
        let (mut h, mut last_ns) = (stats::histogram(), 0);
        self.gather(Command::Killed { at_ns: at }, "recovery", |out| {
            let Outcome::Recovered(r) = out else {
                return false;
            };
            f.dropped += r.dropped;
            f.early_drops += r.early;
            f.recovered += r.recovered;
            f.in_flight += r.in_flight;
            f.in_flight_counted += r.in_flight_counted;
            f.lost += r.lost;
            f.ahead += r.ahead;
            last_ns = last_ns.max(r.last_ns);
            stats::merge_pairs(&mut h, &r.reconnect);
            true
        })?;
        f.kill_to_last_recovery_s = (last_ns > 0).then(|| secs(last_ns.saturating_sub(at)));
        f.reconnect_ms = Quantiles::of(&h, 1e6);
        self.note(&format!(
            "kill: {} of {} victims back",
            f.recovered, f.victims
        ));
        self.pause(interval, "traffic")?;
        let (posted, accepted) = stream.stop();
        f.stream_posted = posted;
        f.stream_accepted = accepted;
        if posted > 0 {
            let cmd = Command::Await {
                kind: Kind::Stream,
                seq: (posted - 1) as u32,
            };
            let (got, _, _) = self.delivered(cmd, "the last broadcast of the kill")?;
            self.note(&format!(
                "kill: {posted} broadcasts posted meanwhile, the last reached {got} sockets"
            ));
        }
        let t = self.tally("kill tally")?;
        f.stream_expected = posted * u64::from(self.spec.args.sockets);
        f.stream_deliveries = t.stream;
        f.stream_duplicates = t.stream_dups;
        f.stream_gaps = t.stream_gaps;
        f.not_recovered = t.not_recovered;
        // Survivors may still lose their connection after the victims are
        // back, so that figure is read once traffic has stopped.
        self.gather(Command::Quiet, "quiet", |out| {
            let Outcome::Quieted {
                acked,
                survivors_lost,
            } = out
            else {
                return false;
            };
            (f.acked, f.survivors_disconnected) =
                (f.acked + acked, f.survivors_disconnected + survivors_lost);
            true
        })?;
        f.faults = self.phase_faults();
        self.report.phases.kill = Some(f);
        Ok(())
    }

    fn close(&mut self) -> Result<(), ScaleError> {
        self.note("close: every socket says goodbye");
        let mut f = CloseFigures {
            expected: u64::from(self.spec.args.sockets),
            ..CloseFigures::default()
        };
        self.gather(Command::Close, "close", |out| {
            let Outcome::Closed { closed, bad_byes } = out else {
                return false;
            };
            (f.closed, f.bye_mismatches) = (f.closed + closed, f.bye_mismatches + bad_byes);
            true
        })?;
        f.faults = self.phase_faults();
        self.report.phases.close = Some(f);
        Ok(())
    }
}

/// The assertions, read off the figures alone.
pub fn assess(r: &ScaleReport) -> Vec<Assertion> {
    let (eq, zero) = (Assertion::equals, Assertion::zero);
    let mut a = Vec::new();
    let p = &r.phases;
    if let Some(c) = &p.connect {
        a.push(zero("connect.failures", c.failures));
    }
    if let Some(f) = &p.fanout {
        let accepted = f.per_broadcast.iter().filter(|b| b.accepted).count() as u64;
        a.extend([
            eq("fanout.posts_accepted", accepted, u64::from(f.broadcasts)),
            eq("fanout.deliveries", f.deliveries, f.expected),
            zero("fanout.duplicates", f.duplicates),
        ]);
    }
    if let Some(m) = &p.room {
        a.extend([
            eq("room.posts_accepted", u64::from(m.accepted), 1),
            eq("room.delivered", m.delivered, m.members),
            zero("room.duplicates", m.duplicates),
            zero("room.late", m.late),
            zero("room.strays", m.strays),
            eq("room.barrier", m.barrier_got, m.barrier_expected),
            zero("room.barrier_duplicates", m.barrier_duplicates),
        ]);
    }
    if let Some(m) = &p.resume {
        a.extend([
            eq("resume.moved", m.moved, m.movers),
            eq("resume.hops", m.hops, m.expected_hops),
            zero("resume.mismatches", m.mismatches),
        ]);
    }
    if let Some(k) = &p.kill {
        a.extend([
            eq("kill.recovered", k.recovered, k.victims),
            zero("kill.lost", k.lost),
            zero("kill.ahead", k.ahead),
            zero("kill.early_drops", k.early_drops),
            zero("kill.survivors_disconnected", k.survivors_disconnected),
            eq(
                "kill.broadcasts_accepted",
                k.stream_accepted,
                k.stream_posted,
            ),
            eq(
                "kill.broadcast_deliveries",
                k.stream_deliveries,
                k.stream_expected,
            ),
            zero("kill.broadcast_duplicates", k.stream_duplicates),
            zero("kill.broadcast_gaps", k.stream_gaps),
            zero("kill.not_recovered", k.not_recovered),
        ]);
    }
    if let Some(c) = &p.close {
        a.extend([
            eq("close.goodbyes", c.closed, c.expected),
            zero("close.bye_mismatches", c.bye_mismatches),
        ]);
    }
    a.push(zero("timeouts", r.timeouts.len() as u64));
    a.push(zero("faults", r.fault_total));
    a
}

/// Global broadcasts posted every `STREAM_EVERY` from a thread of their
/// own, through the nodes that live on, while a node dies.
/// Dropping it (an early return on a phase error) stops the thread too.
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

const STREAM_EVERY: Duration = Duration::from_millis(25);

impl Stream {
    fn start(nodes: Vec<super::node::Node>, limit: Duration) -> Stream {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut posted, mut accepted) = (0u64, 0u64);
            while !flag.load(Ordering::SeqCst) && !nodes.is_empty() {
                let node = &nodes[posted as usize % nodes.len()];
                let seq = posted as u32;
                if http::broadcast(node, None, |t| tag(Kind::Stream, seq, t), limit).is_ok() {
                    accepted += 1;
                }
                posted += 1;
                std::thread::sleep(STREAM_EVERY);
            }
            (posted, accepted)
        });
        Stream {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops posting; returns (posted, accepted).
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((0, 0))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn tag(kind: Kind, seq: u32, t_ns: u64) -> String {
    Tag { kind, seq, t_ns }.to_string()
}

fn named(f: &Faults) -> BTreeMap<String, u64> {
    f.named()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::report::{KillFigures, Phases};

    fn clean() -> ScaleReport {
        ScaleReport {
            sockets: 30,
            phases: Phases {
                connect: Some(ConnectFigures {
                    connected: 30,
                    ..ConnectFigures::default()
                }),
                fanout: Some(FanoutFigures {
                    broadcasts: 2,
                    expected: 60,
                    deliveries: 60,
                    per_broadcast: vec![
                        BroadcastFigures {
                            accepted: true,
                            ..BroadcastFigures::default()
                        };
                        2
                    ],
                    ..FanoutFigures::default()
                }),
                room: Some(RoomFigures {
                    accepted: true,
                    members: 6,
                    delivered: 6,
                    barrier_expected: 30,
                    barrier_got: 30,
                    ..RoomFigures::default()
                }),
                resume: Some(ResumeFigures {
                    movers: 10,
                    moved: 10,
                    hops: 30,
                    expected_hops: 30,
                    ..ResumeFigures::default()
                }),
                kill: Some(KillFigures {
                    victims: 10,
                    recovered: 10,
                    stream_posted: 40,
                    stream_accepted: 40,
                    stream_expected: 1200,
                    stream_deliveries: 1200,
                    ..KillFigures::default()
                }),
                close: Some(CloseFigures {
                    expected: 30,
                    closed: 30,
                    ..CloseFigures::default()
                }),
            },
            ..ScaleReport::default()
        }
    }

    #[test]
    fn a_clean_run_passes_every_assertion() {
        let a = assess(&clean());
        assert!(a.iter().all(|a| a.pass), "{a:?}");
        assert_eq!(a.len(), 28);
        assert_eq!(a.last().unwrap().name, "faults");
    }

    #[test]
    fn each_shortfall_fails_its_own_assertion() {
        let failing = |r: &ScaleReport| -> Vec<String> {
            assess(r)
                .into_iter()
                .filter(|a| !a.pass)
                .map(|a| a.name)
                .collect()
        };
        let mut r = clean();
        r.phases.fanout.as_mut().unwrap().deliveries = 59;
        r.phases.room.as_mut().unwrap().strays = 1;
        assert_eq!(failing(&r), vec!["fanout.deliveries", "room.strays"]);

        let mut r = clean();
        r.phases.kill.as_mut().unwrap().recovered = 9;
        r.phases.kill.as_mut().unwrap().lost = 1;
        r.fault_total = 1;
        assert_eq!(failing(&r), vec!["kill.recovered", "kill.lost", "faults"]);

        let mut r = clean();
        let k = r.phases.kill.as_mut().unwrap();
        k.stream_deliveries = 1199;
        k.stream_gaps = 1;
        k.not_recovered = 1;
        assert_eq!(
            failing(&r),
            vec![
                "kill.broadcast_deliveries",
                "kill.broadcast_gaps",
                "kill.not_recovered"
            ]
        );

        let mut r = clean();
        r.phases.fanout.as_mut().unwrap().per_broadcast[1].accepted = false;
        r.timeouts.push("fanout 2/2".into());
        assert_eq!(failing(&r), vec!["fanout.posts_accepted", "timeouts"]);

        // No kill phase, no kill assertions.
        let mut r = clean();
        r.phases.kill = None;
        assert!(assess(&r).iter().all(|a| !a.name.starts_with("kill.")));
    }
}
