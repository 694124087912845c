//! The coordinator of one run: starts the worker processes, follows their
//! ticks on a progress bar, says `go` and `stop` when the mode's script says
//! so, samples the server and the workers from /proc at those moments, and
//! folds everything into a [`Report`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::plan::{Load, OnGo, Plan};
use crate::pool::{Msg, Pool};
use crate::report::{
    BroadcastFigures, DrainFigures, Point, ProcFigures, Quantiles, Report, StormFigures,
};
use crate::stats::{self, Counters, Faults};
use crate::sys::{self, now_ns, ProcSample};
use crate::worker::Line;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Mix,
    Throughput,
    Rate,
    Idle,
    Storm,
    Drain,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mix => "mix",
            Mode::Throughput => "throughput",
            Mode::Rate => "rate",
            Mode::Idle => "idle",
            Mode::Storm => "storm",
            Mode::Drain => "drain",
        }
    }
}

/// Everything a run needs besides the plan's per-socket settings.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub mode: Mode,
    pub plan: Plan,
    pub procs: u32,
    /// The measured window (mix, throughput, rate) or how long idle sockets
    /// are held before the server's memory is read.
    pub duration: Duration,
    pub warmup: Duration,
    /// Storm: time for the last primed counts to reach Redis before the drop.
    pub settle: Duration,
    pub server_pid: Option<u32>,
    /// Drain: more servers on the same port, signalled with `server_pid`.
    pub more_pids: Vec<u32>,
    /// Drain: one broadcast posted to this node (http://HOST:PORT) after
    /// the hold, timed to its last receipt.
    pub broadcast: Option<String>,
    pub progress: bool,
}

impl RunSpec {
    /// A run with no timed phase yet, one worker per 15,000 sockets.
    pub fn new(mode: Mode, plan: Plan) -> RunSpec {
        RunSpec {
            mode,
            procs: plan.sockets.div_ceil(15_000),
            plan,
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
            settle: Duration::ZERO,
            server_pid: None,
            more_pids: Vec::new(),
            broadcast: None,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start a worker process: {0}")]
    Spawn(std::io::Error),
    #[error("worker {0} ended without a result (see its lines above)")]
    WorkerLost(usize),
    #[error("--server-pid {0} is not a running process")]
    NoServer(u32),
    #[error("the broadcast: {0}")]
    Broadcast(String),
    #[error("drain needs --server-pid")]
    DrainNeedsPid,
    #[error("could not signal the server: {0}")]
    Signal(std::io::Error),
}

struct Workers {
    pool: Pool<Line>,
    last: Vec<Counters>,
    faults: Vec<u64>,
    ready: Vec<Option<u64>>,
    results: Vec<Option<stats::WorkerResult>>,
    exited: Vec<bool>,
}

impl Workers {
    fn spawn(plans: Vec<Plan>) -> Result<Workers, RunError> {
        let pool = Pool::spawn("worker", &plans).map_err(RunError::Spawn)?;
        let n = plans.len();
        Ok(Workers {
            pool,
            last: vec![Counters::default(); n],
            faults: vec![0; n],
            ready: vec![None; n],
            results: vec![None; n],
            exited: vec![false; n],
        })
    }

    /// A worker that cannot take the command has ended; its exit is
    /// noticed on its own.
    fn say(&mut self, cmd: &str) {
        let _ = self.pool.say(cmd);
    }

    fn totals(&self) -> Counters {
        let mut c = Counters::default();
        for l in &self.last {
            c.add(l);
        }
        c
    }

    fn cpu_ns(&self) -> u64 {
        let own = sys::sample(std::process::id())
            .map(|s| s.cpu_ns)
            .unwrap_or(0);
        own + self
            .pool
            .pids()
            .map(|pid| sys::sample(pid).map(|s| s.cpu_ns).unwrap_or(0))
            .sum::<u64>()
    }

    fn all_ready(&self) -> bool {
        self.ready
            .iter()
            .zip(&self.exited)
            .all(|(r, e)| r.is_some() || *e)
    }
}

/// Runs one spec to its end and returns the report; faults are in the
/// report, not in the error, which is for runs that could not take place.
pub fn run(spec: &RunSpec) -> Result<Report, RunError> {
    if let Some(pid) = spec.server_pid {
        if !sys::alive(pid) {
            return Err(RunError::NoServer(pid));
        }
    }
    if spec.mode == Mode::Drain && spec.server_pid.is_none() {
        return Err(RunError::DrainNeedsPid);
    }
    let mut c = Coordinator::new(spec)?;
    c.script()?;
    c.finish()
}

struct Coordinator<'a> {
    spec: &'a RunSpec,
    w: Workers,
    bar: ProgressBar,
    t0: u64,
    server0: Option<ProcSample>,
    /// The server's previous sample for the series, and when it was taken.
    server_last: Option<(u64, ProcSample)>,
    rusage0: u64,
    series: Vec<Point>,
    last_point: (u64, u64),
    /// The slowest reply any worker saw since the last point.
    rtt_max_ns: u64,
    last_plain: u64,
    window: Option<Window>,
    storm: Option<StormFigures>,
    drain: Option<DrainFigures>,
    rss_loaded: Option<u64>,
}

#[derive(Default)]
struct Window {
    start: u64,
    end: u64,
    server: (Option<ProcSample>, Option<ProcSample>),
    gen: (u64, u64),
}

impl<'a> Coordinator<'a> {
    fn new(spec: &'a RunSpec) -> Result<Coordinator<'a>, RunError> {
        let server0 = spec.server_pid.and_then(|p| sys::sample(p).ok());
        // Workers are gone from /proc by the time the run is summed up, so the
        // whole-run figure comes from getrusage after they are waited for.
        let rusage0 = sys::rusage_ns(false) + sys::rusage_ns(true);
        let t0 = now_ns();
        let w = Workers::spawn(spec.plan.split(spec.procs))?;
        let bar = if spec.progress && std::io::stderr().is_terminal() {
            let b = ProgressBar::new(u64::from(spec.plan.sockets));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:28}] {pos}/{len} sockets  {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        Ok(Coordinator {
            spec,
            w,
            bar,
            t0,
            server0,
            server_last: server0.map(|s| (t0, s)),
            rusage0,
            series: Vec::new(),
            last_point: (t0, 0),
            rtt_max_ns: 0,
            last_plain: t0,
            window: None,
            storm: None,
            drain: None,
            rss_loaded: None,
        })
    }

    /// The mode's script: what happens once every socket is in.
    fn script(&mut self) -> Result<(), RunError> {
        let spec = self.spec;
        let ramp_s = if spec.plan.connect_rate > 0.0 {
            f64::from(spec.plan.sockets) / spec.plan.connect_rate
        } else {
            0.0
        };
        let connect_deadline =
            Duration::from_secs_f64(ramp_s + spec.plan.timeout_ms as f64 / 1e3 + 30.0);
        self.phase("connecting");
        self.wait_until(connect_deadline, |w| w.all_ready());
        match spec.mode {
            Mode::Idle => {
                self.phase("holding");
                self.pause(spec.duration);
                self.rss_loaded = spec
                    .server_pid
                    .and_then(|p| sys::sample(p).ok())
                    .map(|s| s.rss_bytes);
            }
            Mode::Throughput | Mode::Rate | Mode::Mix => {
                if spec.mode == Mode::Throughput {
                    self.phase("warming up");
                    self.pause(spec.warmup);
                }
                self.phase("measuring");
                self.open_window();
                self.pause(spec.duration);
                self.close_window();
            }
            Mode::Storm => {
                self.pause(spec.settle);
                self.phase("dropped, resuming");
                for r in &mut self.w.ready {
                    *r = None;
                }
                let go = now_ns();
                self.w.say("go");
                self.wait_until(connect_deadline, |w| w.all_ready());
                // Filled in from the workers' stamps once their results are in.
                self.storm = Some(StormFigures {
                    resume_all_s: 0.0,
                    dropped_ns: go,
                });
            }
            Mode::Drain => {
                let pid = spec.server_pid.ok_or(RunError::DrainNeedsPid)?;
                if !spec.duration.is_zero() {
                    self.phase("holding");
                    self.pause(spec.duration);
                }
                let broadcast = match &spec.broadcast {
                    Some(url) => Some(self.broadcast_to_all(url)?),
                    None => None,
                };
                self.phase("draining");
                self.w.say("go");
                let go = now_ns();
                let pids: Vec<u32> = std::iter::once(pid)
                    .chain(spec.more_pids.iter().copied())
                    .collect();
                for &p in &pids {
                    // SAFETY: kill with pids the caller gave for its servers.
                    if unsafe { libc::kill(p as i32, libc::SIGTERM) } != 0 {
                        return Err(RunError::Signal(std::io::Error::last_os_error()));
                    }
                }
                let limit = Duration::from_secs(60);
                let mut exited_at = None;
                let t = now_ns();
                while now_ns() - t < limit.as_nanos() as u64 {
                    self.pump(Duration::from_millis(2));
                    if exited_at.is_none() && !pids.iter().any(|&p| sys::alive(p)) {
                        exited_at = Some(now_ns());
                    }
                    if exited_at.is_some() && self.w.totals().live == 0 {
                        break;
                    }
                }
                self.drain = Some(DrainFigures {
                    goodbye_share: 0.0,
                    last_close_s: 0.0,
                    exit_s: exited_at.map(|e| secs(e - go)),
                    signalled_ns: go,
                    broadcast,
                });
            }
        }
        self.phase("closing");
        self.w.say("stop");
        Ok(())
    }

    fn open_window(&mut self) {
        self.w.say("go");
        self.window = Some(Window {
            start: now_ns(),
            server: (self.server_sample(), None),
            gen: (self.w.cpu_ns(), 0),
            ..Window::default()
        });
    }

    fn close_window(&mut self) {
        self.w.say("stop");
        let server = self.server_sample();
        let gen = self.w.cpu_ns();
        if let Some(win) = self.window.as_mut() {
            win.end = now_ns();
            win.server.1 = server;
            win.gen.1 = gen;
        }
    }

    fn server_sample(&self) -> Option<ProcSample> {
        self.spec.server_pid.and_then(|p| sys::sample(p).ok())
    }

    /// The server's CPU share since the previous point and its RSS now;
    /// nothing once it has exited (a drain) or when no pid was given.
    fn server_point(&mut self, now: u64) -> (Option<f64>, Option<u64>) {
        let Some(s) = self.server_sample() else {
            self.server_last = None;
            return (None, None);
        };
        let cpu = self.server_last.filter(|(t, _)| now > *t).map(|(t, last)| {
            s.cpu_ns.saturating_sub(last.cpu_ns) as f64 * 100.0 / (now - t) as f64
        });
        self.server_last = Some((now, s));
        (cpu, Some(s.rss_bytes))
    }

    fn phase(&self, name: &str) {
        self.bar.set_prefix(name.to_string());
        if self.bar.is_hidden() && self.spec.progress {
            eprintln!("[{:>7.1}s] {name}", secs(now_ns() - self.t0));
        }
    }

    /// One broadcast through `url`, then the wait (up to 60 s) until every
    /// open socket got it.
    fn broadcast_to_all(&mut self, url: &str) -> Result<BroadcastFigures, RunError> {
        self.phase("broadcast");
        let node =
            crate::scale::node::parse(url).map_err(|e| RunError::Broadcast(e.to_string()))?;
        let before = self.w.totals().broadcasts;
        let live = self.w.totals().live;
        let sent = match crate::scale::http::broadcast(
            &node,
            None,
            |_| "to everyone".to_string(),
            // The node that takes the POST may be one of many processes
            // sharing two cores with a million sockets: its answer is part
            // of the figure, not a reason to give up early.
            Duration::from_secs(60),
        ) {
            Ok(a) => a.sent_ns,
            // A figure, not the end of the run: the drain still follows.
            Err(e) => {
                eprintln!("the broadcast failed: {e}");
                return Ok(BroadcastFigures {
                    received: 0,
                    of: live,
                    last_receipt_s: 0.0,
                    error: Some(e.to_string()),
                });
            }
        };
        self.wait_until(Duration::from_secs(60), |w| {
            w.totals().broadcasts >= before + live
        });
        let t = self.w.totals();
        Ok(BroadcastFigures {
            received: t.broadcasts - before,
            of: live,
            last_receipt_s: secs(t.last_broadcast_ns.saturating_sub(sent)),
            error: None,
        })
    }

    fn pause(&mut self, d: Duration) {
        let end = now_ns() + d.as_nanos() as u64;
        while now_ns() < end {
            let left = end.saturating_sub(now_ns());
            self.pump(Duration::from_nanos(left.min(100_000_000)));
        }
    }

    fn wait_until(&mut self, limit: Duration, done: impl Fn(&Workers) -> bool) {
        let end = now_ns() + limit.as_nanos() as u64;
        while !done(&self.w) && now_ns() < end {
            self.pump(Duration::from_millis(100));
        }
    }

    /// Takes worker events for at most `d`, and redraws.
    fn pump(&mut self, d: Duration) {
        match self.w.pool.rx.recv_timeout(d) {
            Ok(ev) => self.on_event(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(d),
        }
        while let Ok(ev) = self.w.pool.rx.try_recv() {
            self.on_event(ev);
        }
        self.redraw();
    }

    fn on_event(&mut self, ev: Msg<Line>) {
        match ev {
            Msg::Line(
                w,
                Line::Tick {
                    c,
                    faults,
                    rtt_max_ns,
                },
            ) => {
                self.w.last[w] = c;
                self.w.faults[w] = faults;
                self.rtt_max_ns = self.rtt_max_ns.max(rtt_max_ns);
            }
            Msg::Line(w, Line::Ready { at_ns }) => self.w.ready[w] = Some(at_ns),
            Msg::Line(w, Line::Done(r)) => {
                self.w.last[w] = r.counters;
                self.w.results[w] = Some(*r);
            }
            Msg::Log(w, line) => self.bar.suspend(|| eprintln!("worker {w}: {line}")),
            Msg::Exit(w) => self.w.exited[w] = true,
        }
    }

    fn redraw(&mut self) {
        let now = now_ns();
        if now - self.last_point.0 < 500_000_000 {
            return;
        }
        let c = self.w.totals();
        let faults: u64 = self.w.faults.iter().sum();
        let rate =
            (c.replies - self.last_point.1.min(c.replies)) as f64 / secs(now - self.last_point.0);
        self.last_point = (now, c.replies);
        let (server_cpu_pct, server_rss_bytes) = self.server_point(now);
        self.series.push(Point {
            t_s: secs(now - self.t0),
            live: c.live,
            msgs_per_s: rate,
            faults,
            rtt_max_us: std::mem::take(&mut self.rtt_max_ns) as f64 / 1e3,
            server_cpu_pct,
            server_rss_bytes,
        });
        self.bar.set_position(c.live);
        self.bar.set_message(format!(
            "{}  msgs/s {:>9.0}  errors {}",
            self.bar.prefix(),
            rate,
            faults
        ));
        if self.bar.is_hidden() && self.spec.progress && now - self.last_plain >= 5_000_000_000 {
            self.last_plain = now;
            eprintln!(
                "[{:>7.1}s] live {} / {}  msgs/s {:.0}  errors {}",
                secs(now - self.t0),
                c.live,
                self.spec.plan.sockets,
                rate,
                faults
            );
        }
    }

    fn finish(mut self) -> Result<Report, RunError> {
        let limit = Duration::from_millis(self.spec.plan.timeout_ms) + Duration::from_secs(15);
        self.wait_until(limit, |w| {
            w.results
                .iter()
                .zip(&w.exited)
                .all(|(r, e)| r.is_some() || *e)
        });
        self.w.pool.wait();
        self.bar.finish_and_clear();
        let gen_total = (sys::rusage_ns(false) + sys::rusage_ns(true)).saturating_sub(self.rusage0);
        let mut counters = Counters::default();
        let mut faults = Faults::default();
        let mut rtt = stats::histogram();
        let mut connect = stats::histogram();
        let mut reconnect = stats::histogram();
        let mut win_replies = 0;
        let mut last_close = 0;
        let (mut first_connect, mut last_open, mut last_resume) = (u64::MAX, 0, 0);
        for (w, r) in self.w.results.iter().enumerate() {
            let r = r.as_ref().ok_or(RunError::WorkerLost(w))?;
            counters.add(&r.counters);
            faults.add(&r.faults);
            stats::merge_pairs(&mut rtt, &r.rtt);
            stats::merge_pairs(&mut connect, &r.connect);
            stats::merge_pairs(&mut reconnect, &r.reconnect);
            win_replies += r.window_replies;
            last_close = last_close.max(r.last_close_ns);
            if r.first_connect_ns > 0 {
                first_connect = first_connect.min(r.first_connect_ns);
            }
            last_open = last_open.max(r.last_open_ns);
            last_resume = last_resume.max(r.last_resume_ns);
        }
        let spec = self.spec;
        let elapsed = now_ns() - self.t0;
        // With a measured window, its replies over its own time and CPU.
        let (counted, span, server_cpu, gen_cpu) = match &self.window {
            Some(w) => {
                let server = match w.server {
                    (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns)),
                    _ => None,
                };
                let gen = w.gen.1.saturating_sub(w.gen.0);
                (win_replies, w.end - w.start, server, gen)
            }
            None => (counters.replies, elapsed, None, gen_total),
        };
        let msgs_per_s = counted as f64 / secs(span);
        let per = |ns: u64| (counted > 0).then(|| ns as f64 / 1e3 / counted as f64);
        let server = spec.server_pid.map(|pid| {
            let end = sys::sample(pid).ok();
            let before = self.server0.map(|s| s.rss_bytes);
            let loaded = self.rss_loaded;
            ProcFigures {
                pid: Some(pid),
                cpu_s: server_cpu
                    .or_else(|| Some(end?.cpu_ns.saturating_sub(self.server0?.cpu_ns)))
                    .map(secs),
                cpu_us_per_reply: server_cpu.and_then(per),
                rss_before: before,
                rss_loaded: loaded,
                bytes_per_socket: match (before, loaded) {
                    (Some(b), Some(l)) if !connect.is_empty() => {
                        Some((l as f64 - b as f64) / connect.len() as f64)
                    }
                    _ => None,
                },
            }
        });
        let generator = ProcFigures {
            pid: None,
            cpu_s: Some(secs(gen_cpu)),
            cpu_us_per_reply: per(gen_cpu),
            ..ProcFigures::default()
        };
        let drain = self.drain.take().map(|d| DrainFigures {
            goodbye_share: if !connect.is_empty() {
                counters.goodbyes as f64 / connect.len() as f64
            } else {
                0.0
            },
            last_close_s: secs(last_close.saturating_sub(d.signalled_ns)),
            ..d
        });
        Ok(Report {
            mode: spec.mode,
            url: spec.plan.url(),
            sockets: spec.plan.sockets,
            procs: self.w.pool.len() as u32,
            load: describe_load(&spec.plan),
            window_s: self.window.as_ref().map(|w| secs(w.end - w.start)),
            elapsed_s: secs(elapsed),
            connected: connect.len(),
            counters,
            faults: faults
                .named()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            fault_total: faults.total(),
            msgs_per_s,
            connect_ms: Quantiles::of(&connect, 1e6),
            connect_all_s: (last_open > 0 && first_connect <= last_open)
                .then(|| secs(last_open - first_connect)),
            reconnect_ms: Quantiles::of(&reconnect, 1e6),
            reconnected_within_1s: (!reconnect.is_empty())
                .then(|| reconnect.count_between(0, 1_000_000_000) as f64 / reconnect.len() as f64),
            rtt_us: Quantiles::of(&rtt, 1e3),
            server,
            generator,
            storm: self.storm.take().map(|st| StormFigures {
                resume_all_s: secs(last_resume.saturating_sub(st.dropped_ns)),
                ..st
            }),
            drain,
            series: std::mem::take(&mut self.series),
            rtt_histogram: stats::to_pairs(&rtt),
        })
    }
}

fn describe_load(p: &Plan) -> String {
    let go = match p.on_go {
        OnGo::Measure => "",
        OnGo::DropAndResume => ", drop and resume",
        OnGo::ExpectDrain => ", drain",
    };
    let load = match p.load {
        Load::Idle => "idle".to_string(),
        Load::Closed { window } => format!("closed loop, window {window}"),
        Load::Open { rate } => format!("open loop, {rate:.0} msgs/s"),
        Load::Mix {
            chatter_share,
            churn,
        } => format!(
            "{:.0}% chatters, {:.1}% of sends reconnect",
            chatter_share * 100.0,
            churn * 100.0
        ),
    };
    format!("{load}{go}")
}

pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}
