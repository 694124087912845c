//! The standard suite behind `make bench`: a private redis-server, a fresh
//! server process for every run (shardcast, and beside it the tokio-tungstenite
//! baseline and the uWebSockets peer `uws-counter`), each figure repeated, and
//! the table of medians, bests, ratios and goals appended to `bench/RESULTS.md`
//! with the machine it ran on.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::plan::{Load, OnGo, Plan, Target};
use crate::report::{bytes, Report};
use crate::run::{self, Mode, RunSpec};
use crate::sys;
use shardcast_kit::process::free_port;
use shardcast_kit::redis::Redis;

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// The shardcast binary (a release build).
    #[arg(long, default_value = "target/release/shardcast")]
    pub server: PathBuf,
    /// The baseline binary.
    #[arg(long, default_value = "target/release/tt-counter")]
    pub baseline: PathBuf,
    /// The uWebSockets peer (`uws-counter PORT`); when it is missing, its
    /// figures are skipped.
    #[arg(long, default_value = "../shared/peers/uws-counter")]
    pub uws: PathBuf,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// Where the results table is appended.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// Runs of each figure; the table shows the median and the best.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Socket counts and durations cut down about tenfold: checks the suite
    /// itself in a minute, its figures mean little.
    #[arg(long)]
    pub quick: bool,
    /// Where each run's JSON report is kept.
    #[arg(long, default_value = "target/bench")]
    pub raw: PathBuf,
}

/// Which server a run is against: shardcast, the tokio-tungstenite baseline,
/// or the uWebSockets peer (one thread, no Redis, no goodbye).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Shardcast { shards: u32 },
    Baseline { threads: u32 },
    Uws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Server on CPU 1, generator (and the suite's redis-server) on CPU 0.
    Pinned,
    /// Server and generator free on both CPUs (redis-server stays on CPU 0).
    Unpinned,
}

struct Figure {
    name: String,
    unit: &'static str,
    /// Whether a smaller value is better.
    lower_better: bool,
    goal: &'static str,
    /// Goal check on the median, given the peers' medians in the same run.
    met: Option<Check>,
    ours: Vec<f64>,
    baseline: Vec<f64>,
    uws: Vec<f64>,
}

impl Figure {
    /// The column that runs against `server` fill.
    fn col(&mut self, server: Server) -> &mut Vec<f64> {
        match server {
            Server::Shardcast { .. } => &mut self.ours,
            Server::Baseline { .. } => &mut self.baseline,
            Server::Uws => &mut self.uws,
        }
    }
}

pub fn main(args: SuiteArgs) -> anyhow::Result<ExitCode> {
    for bin in [&args.server, &args.baseline] {
        if !bin.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release`",
                bin.display()
            );
        }
    }
    let uws = args.uws.is_file();
    if !uws {
        eprintln!(
            "suite: {} is missing: uws figures are skipped",
            args.uws.display()
        );
    }
    std::fs::create_dir_all(&args.raw).ok();
    let started = Instant::now();
    // The suite's own Redis on CPU 0, the generator's.
    let redis = Redis::start_pinned(args.redis_server.clone(), 0).map_err(anyhow::Error::msg)?;
    let mut s = Suite {
        args: &args,
        redis_url: format!("redis://127.0.0.1:{}", redis.port),
        uws,
        faults: 0,
        baseline_faults: 0,
        uws_faults: 0,
        runs: 0,
    };
    let q = |full: u32, quick: u32| if args.quick { quick } else { full };
    let secs = |full: u64, quick: u64| Duration::from_secs(if args.quick { quick } else { full });

    let mut figures = Vec::new();
    let one = Server::Shardcast { shards: 1 };
    let two = Server::Shardcast { shards: 2 };
    let tt1 = Server::Baseline { threads: 1 };
    let tt2 = Server::Baseline { threads: 2 };

    // 1. Idle memory.
    let idle_n = q(19_000, 2_000);
    let mut f = lower("idle: userspace bytes per socket", "B")
        .goal("≤ 1 KiB, then ≤ 512 B", |v, _| v <= 1024.0);
    let per_socket = |r: &Report| r.server.as_ref()?.bytes_per_socket;
    for _ in 0..args.repeat {
        for srv in s.lineup(&[one, tt1]) {
            let spec = s.spec(Mode::Idle, idle_n, Load::Idle, srv, |sp| {
                sp.duration = secs(3, 1);
            });
            let r = s.run_one(srv, Placement::Pinned, spec)?;
            f.col(srv).extend(per_socket(&r));
        }
    }
    figures.push(f);

    // 2. Server CPU per reply, closed loop, 100 sockets: one core, then two.
    let tp = |s: &Suite, srv| {
        s.spec(
            Mode::Throughput,
            100,
            Load::Closed { window: 8 },
            srv,
            |sp| {
                (sp.duration, sp.warmup) = (secs(5, 2), Duration::from_secs(1));
            },
        )
    };
    let per_reply = |r: &Report| r.server.as_ref()?.cpu_us_per_reply;
    let rps = |r: &Report| Some(r.msgs_per_s);
    let mut cpu1 = lower("throughput, 1 shard pinned: server µs per reply", "µs").vs_uws();
    let mut rps1 = higher("throughput, 1 shard pinned: replies/s", "/s");
    let mut cpu2 = lower("throughput, 2 shards unpinned: server µs per reply", "µs")
        .goal("≤ tt in the same run", |v, p| {
            p.tt.is_some_and(|t| v <= t)
        });
    let mut rps2 = higher("throughput, 2 shards unpinned: replies/s", "/s");
    let mut gen1 = lower("throughput, 1 shard pinned: generator µs per reply", "µs")
        .goal("≤ 2 µs", |v, _| v <= 2.0);
    let gen_per_reply = |r: &Report| r.generator.cpu_us_per_reply;
    for _ in 0..args.repeat {
        for srv in s.lineup(&[one, tt1]) {
            let r = s.run_one(srv, Placement::Pinned, tp(&s, srv))?;
            cpu1.col(srv).extend(per_reply(&r));
            rps1.col(srv).extend(rps(&r));
            gen1.col(srv).extend(gen_per_reply(&r));
        }
        // uws has one thread only: it sits out the 2-shard figures.
        for srv in [two, tt2] {
            let r = s.run_one(srv, Placement::Unpinned, tp(&s, srv))?;
            cpu2.col(srv).extend(per_reply(&r));
            rps2.col(srv).extend(rps(&r));
        }
    }
    // Two shards cannot show their throughput on a 2-CPU box whose other
    // CPU runs the generator; what a shard count changes is the CPU each
    // reply costs. Same per-reply cost on 2 shards as on 1 means 2 cores
    // give twice the replies of 1.
    let mut scale = higher(
        "2 shards vs 1: replies/s ratio on this box (the generator shares the 2 CPUs)",
        "x",
    );
    scale.ours = ratios(&rps2.ours, &rps1.ours, 1.0);
    scale.baseline = ratios(&rps2.baseline, &rps1.baseline, 1.0);
    let mut per_core = higher(
        "2 shards vs 1: scaling from per-reply CPU (2 × µs on 1 shard ÷ µs on 2)",
        "x",
    )
    .goal("≥ 1.8x", |v, _| v >= 1.8);
    per_core.ours = ratios(&cpu1.ours, &cpu2.ours, 2.0);
    per_core.baseline = ratios(&cpu1.baseline, &cpu2.baseline, 2.0);
    figures.extend([cpu1, rps1, gen1, cpu2, rps2, scale, per_core]);

    // 3. Open-loop round trips at 10K sockets, pinned, one shard or thread
    // each: the layout the goals are stated for.
    let rate_n = q(10_000, 1_000);
    let rate = if args.quick { 2_000.0 } else { 20_000.0 };
    let [mut p50, mut p99, mut p999] = ["p50", "p99", "p99.9"].map(|q| {
        lower(
            &format!("rate 10K sockets, 20K msgs/s, 1 shard pinned: RTT {q}"),
            "µs",
        )
        .vs_uws()
    });
    let mut rcpu = lower("rate: server µs per reply", "µs").vs_uws();
    let mut rgen = lower("rate: generator µs per reply", "µs");
    for _ in 0..args.repeat {
        for srv in s.lineup(&[one, tt1]) {
            let spec = s.spec(Mode::Rate, rate_n, Load::Open { rate }, srv, |sp| {
                sp.duration = secs(10, 3);
            });
            let r = s.run_one(srv, Placement::Pinned, spec)?;
            let q = r.rtt_us;
            p50.col(srv).extend(q.map(|q| q.p50));
            p99.col(srv).extend(q.map(|q| q.p99));
            p999.col(srv).extend(q.map(|q| q.p999));
            rcpu.col(srv).extend(per_reply(&r));
            rgen.col(srv).extend(gen_per_reply(&r));
        }
    }
    figures.extend([p50, p99, p999, rcpu, rgen]);

    // 4. Storm: connect all at once, drop, resume from Redis.
    let storm_n = q(10_000, 1_000);
    let mut connect =
        lower("storm 10K: all connected", "s").goal("no later than uws, no failures", at_most_uws);
    let mut resume = lower("storm 10K: all resumed from Redis, counts exact", "s")
        .goal("≤ 2 s", |v, _| v <= 2.0);
    for _ in 0..args.repeat {
        // Two workers: one connect() runs a whole loopback TCP handshake
        // (about 50 µs here), so one generator process would time itself.
        let spec = s.spec(Mode::Storm, storm_n, Load::Idle, two, |sp| {
            (sp.procs, sp.plan.prime, sp.plan.on_go) = (2, 3, OnGo::DropAndResume);
            sp.settle = Duration::from_millis(100);
        });
        let r = s.run_one(two, Placement::Unpinned, spec)?;
        connect.ours.extend(r.connect_all_s);
        if let Some(st) = &r.storm {
            resume.ours.push(st.resume_all_s);
        }
        // The peers have no resume: an Idle run times their connects.
        for srv in s.lineup(&[tt2]) {
            let spec = s.spec(Mode::Idle, storm_n, Load::Idle, srv, |sp| sp.procs = 2);
            let r = s.run_one(srv, Placement::Unpinned, spec)?;
            connect.col(srv).extend(r.connect_all_s);
        }
    }
    figures.extend([connect, resume]);

    // 5. Drain.
    let mut drain = lower("drain 10K: SIGTERM to last close", "s")
        .goal("≤ 1 s, all with goodbye", |v, _| v <= 1.0);
    let mut share = higher("drain 10K: goodbye + 1001 share", "%").goal("100%", |v, _| v >= 100.0);
    let mut exit = lower("drain 10K: SIGTERM to process exit", "s");
    for _ in 0..args.repeat {
        let spec = s.spec(Mode::Drain, storm_n, Load::Idle, two, |sp| {
            (sp.procs, sp.plan.on_go) = (2, OnGo::ExpectDrain);
        });
        let r = s.run_one(two, Placement::Unpinned, spec)?;
        if let Some(d) = &r.drain {
            drain.ours.push(d.last_close_s);
            share.ours.push(d.goodbye_share * 100.0);
            exit.ours.extend(d.exit_s);
        }
    }
    figures.extend([drain, share, exit]);

    // 6. The original service's load test, once.
    let mix_n = q(10_000, 1_000);
    let mut mix_p99 = lower("mix 10K for 60 s: reply RTT p99", "µs");
    let mut mix_rate = higher("mix 10K for 60 s: replies/s", "/s");
    let load = Load::Mix {
        chatter_share: 0.8,
        churn: 0.0,
    };
    let spec = s.spec(Mode::Mix, mix_n, load, two, |sp| {
        (sp.plan.connect_rate, sp.plan.reconnect) = (2_000.0, true);
        sp.duration = secs(60, 5);
    });
    let r = s.run_one(two, Placement::Unpinned, spec)?;
    mix_p99.ours.extend(r.rtt_us.map(|q| q.p99));
    mix_rate.ours.push(r.msgs_per_s);
    figures.extend([mix_p99, mix_rate]);

    drop(redis);
    let faults = Faults {
        ours: s.faults,
        baseline: s.baseline_faults,
        uws: s.uws.then_some(s.uws_faults),
    };
    let table = render(&args, &figures, started.elapsed(), &faults);
    println!("{table}");
    append(&args.out, &table)?;
    eprintln!(
        "suite: {} runs in {:.0} s, faults: {}; appended to {}",
        s.runs,
        started.elapsed().as_secs_f64(),
        faults,
        args.out.display()
    );
    Ok(if s.faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A goal check: shardcast's median against the peers' medians.
type Check = fn(f64, Peers) -> bool;

/// The peers' medians of one figure in one run.
#[derive(Debug, Clone, Copy)]
struct Peers {
    tt: Option<f64>,
    uws: Option<f64>,
}

/// The data plane's goal: at or below uWebSockets in the same run.
fn at_most_uws(v: f64, p: Peers) -> bool {
    p.uws.is_some_and(|u| v <= u)
}

/// A figure where a smaller value is better, with no goal yet.
fn lower(name: &str, unit: &'static str) -> Figure {
    Figure {
        name: name.to_string(),
        unit,
        lower_better: true,
        goal: "",
        met: None,
        ours: Vec::new(),
        baseline: Vec::new(),
        uws: Vec::new(),
    }
}

fn higher(name: &str, unit: &'static str) -> Figure {
    Figure {
        lower_better: false,
        ..lower(name, unit)
    }
}

impl Figure {
    fn goal(self, goal: &'static str, met: Check) -> Figure {
        Figure {
            goal,
            met: Some(met),
            ..self
        }
    }

    /// The data plane's goal.
    fn vs_uws(self) -> Figure {
        self.goal("≤ uws in the same run", at_most_uws)
    }
}

/// `k · a / b`, pair by pair, skipping zero denominators.
fn ratios(a: &[f64], b: &[f64], k: f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| k * n / d)
        .collect()
}

struct Suite<'a> {
    args: &'a SuiteArgs,
    redis_url: String,
    /// Whether the uws binary is there to run.
    uws: bool,
    /// Faults in runs against shardcast: these fail the suite.
    faults: u64,
    /// Faults in runs against the baseline: reported, not failing.
    baseline_faults: u64,
    /// Faults in runs against uws: reported, not failing.
    uws_faults: u64,
    runs: u32,
}

impl Suite<'_> {
    /// `servers`, then uws when its binary is there.
    fn lineup(&self, servers: &[Server]) -> Vec<Server> {
        let mut v = servers.to_vec();
        if self.uws {
            v.push(Server::Uws);
        }
        v
    }

    fn spec(
        &self,
        mode: Mode,
        sockets: u32,
        load: Load,
        server: Server,
        tune: impl FnOnce(&mut RunSpec),
    ) -> RunSpec {
        // The address is the fresh server's, filled in by `run_one`.
        let mut plan = Plan::new(
            Target::chat(SocketAddr::from(([127, 0, 0, 1], 0))),
            sockets,
            load,
        );
        plan.expect_bye = matches!(server, Server::Shardcast { .. });
        let mut spec = RunSpec::new(mode, plan);
        tune(&mut spec);
        spec
    }

    /// Starts a fresh server, runs `spec` against it, stops it.
    fn run_one(
        &mut self,
        server: Server,
        place: Placement,
        mut spec: RunSpec,
    ) -> anyhow::Result<Report> {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = self.start_server(server, place, addr)?;
        (spec.plan.addr, spec.plan.host) = (addr, addr.to_string());
        spec.server_pid = Some(child.id());
        let gen_cpus: &[usize] = match place {
            Placement::Pinned => &[0],
            Placement::Unpinned => &[0, 1],
        };
        sys::pin_to(gen_cpus).context("pinning the generator")?;
        let label = format!(
            "{} {} ({}, {} sockets)",
            spec.mode.name(),
            server_label(server),
            if place == Placement::Pinned {
                "pinned"
            } else {
                "unpinned"
            },
            spec.plan.sockets
        );
        eprintln!("suite: run {}: {label} ...", self.runs + 1);
        let result = run::run(&spec);
        let _ = sys::pin_to(&[0, 1]);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = wait_with_timeout(&mut child, Duration::from_secs(30));
        let report = result.with_context(|| label.clone())?;
        self.runs += 1;
        *match server {
            Server::Shardcast { .. } => &mut self.faults,
            Server::Baseline { .. } => &mut self.baseline_faults,
            Server::Uws => &mut self.uws_faults,
        } += report.fault_total;
        if !report.ok() {
            eprintln!("suite: {label}: faults {:?}", report.faults);
        }
        let stem = self.args.raw.join(format!(
            "{:02}-{}-{}",
            self.runs,
            spec.mode.name(),
            server_label(server).replace(' ', "-")
        ));
        let file = |ext: &str| stem.with_extension(ext);
        let _ = std::fs::write(file("json"), serde_json::to_vec_pretty(&report)?);
        // The charts are for reading a run afterwards; a run stands without them.
        match report.html().and_then(|h| Ok((h, report.png()?))) {
            Ok((html, png)) => {
                let _ = std::fs::write(file("html"), html);
                let _ = std::fs::write(file("png"), png);
            }
            Err(e) => eprintln!("suite: {label}: no charts: {e}"),
        }
        Ok(report)
    }

    fn start_server(
        &self,
        server: Server,
        place: Placement,
        addr: SocketAddr,
    ) -> anyhow::Result<Child> {
        let mut cmd = match place {
            Placement::Pinned => {
                let mut c = Command::new("taskset");
                c.args(["-c", "1"]);
                c
            }
            Placement::Unpinned => Command::new("env"),
        };
        match server {
            Server::Shardcast { shards } => {
                cmd.arg(&self.args.server).args([
                    "--listen",
                    &addr.to_string(),
                    "--shards",
                    &shards.to_string(),
                    "--pin",
                    "false",
                    "--redis-url",
                    &self.redis_url,
                    // The bench measures the server, not its abuse guard.
                    "--rate-limit",
                    "0",
                    "--max-connections",
                    "20000",
                    "--log-level",
                    "warn",
                    // Servers of a run may overlap as one stops and the next
                    // starts: no fixed admin port between them.
                    "--admin-listen",
                    "off",
                ]);
            }
            Server::Baseline { threads } => {
                cmd.arg(&self.args.baseline).args([
                    "--listen",
                    &addr.to_string(),
                    "--threads",
                    &threads.to_string(),
                ]);
            }
            Server::Uws => {
                cmd.arg(&self.args.uws).arg(addr.port().to_string());
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", server_label(server)))?;
        let ready = match server {
            Server::Shardcast { .. } => wait_ready(addr, "/readyz", Duration::from_secs(20)),
            Server::Baseline { .. } | Server::Uws => wait_ready(addr, "", Duration::from_secs(20)),
        };
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not become ready on {addr}", server_label(server));
        }
        Ok(child)
    }
}

fn server_label(s: Server) -> String {
    match s {
        Server::Shardcast { shards } => format!("shardcast {shards} shard(s)"),
        Server::Baseline { threads } => format!("tt {threads} thread(s)"),
        Server::Uws => "uws".into(),
    }
}

/// Polls until `path` answers 200 (or, with no path, until the port accepts).
fn wait_ready(addr: SocketAddr, path: &str, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if path.is_empty() {
                return true;
            }
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_exact(&mut head).is_ok()
                && head.ends_with(b"200")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::io::Result<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait().map(|_| ())
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn best(v: &[f64], lower_better: bool) -> Option<f64> {
    let it = v.iter().copied();
    if lower_better {
        it.min_by(f64::total_cmp)
    } else {
        it.max_by(f64::total_cmp)
    }
}

fn fmt_value(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit == "B" => bytes(v),
        Some(v) if unit == "/s" => format!("{v:.0}/s"),
        Some(v) if unit == "%" => format!("{v:.2}%"),
        Some(v) if unit == "x" => format!("{v:.2}x"),
        Some(v) if unit == "s" => format!("{v:.3} s"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

/// Fault totals per server; `uws` is None when its runs were skipped.
struct Faults {
    ours: u64,
    baseline: u64,
    uws: Option<u64>,
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} against shardcast, {} against tt",
            self.ours, self.baseline
        )?;
        match self.uws {
            Some(n) => write!(f, ", {n} against uws"),
            None => write!(f, ", uws skipped"),
        }
    }
}

fn render(args: &SuiteArgs, figures: &[Figure], took: Duration, faults: &Faults) -> String {
    let mut s = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\n## {when} · commit {commit}{} · {cpu} × {cpus} · Linux {kernel}{}\n",
        if dirty { " (with local changes)" } else { "" },
        if args.quick {
            " · QUICK (reduced sizes)"
        } else {
            ""
        }
    );
    let uws = match faults.uws {
        Some(_) => "uws: uWebSockets peer `uws-counter`, one thread.".to_string(),
        None => format!("uws: skipped, {} is missing.", args.uws.display()),
    };
    let _ = writeln!(
        s,
        "{} runs per figure (median, best in brackets); suite took {:.0} s; faults: {faults}. \
         Pinned: server on CPU 1, generator and redis-server on CPU 0. \
         tt: tokio-tungstenite 0.30 baseline, 4 KiB buffers. {uws}\n",
        args.repeat,
        took.as_secs_f64()
    );
    s.push_str(
        "| figure | shardcast | tt | uws | shardcast / tt | shardcast / uws | goal | met |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for f in figures {
        let (mo, mb, mu) = (median(&f.ours), median(&f.baseline), median(&f.uws));
        let cell = |v: &[f64], m: Option<f64>| {
            if v.len() > 1 {
                format!(
                    "{} ({})",
                    fmt_value(m, f.unit),
                    fmt_value(best(v, f.lower_better), f.unit)
                )
            } else {
                fmt_value(m, f.unit)
            }
        };
        let met = match (f.met, mo) {
            (Some(check), Some(v)) => {
                if check(v, Peers { tt: mb, uws: mu }) {
                    "yes"
                } else {
                    "**no**"
                }
            }
            _ => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            cell(&f.ours, mo),
            cell(&f.baseline, mb),
            cell(&f.uws, mu),
            ratio(mo, mb),
            ratio(mo, mu),
            f.goal,
            met
        );
    }
    s
}

fn append(path: &PathBuf, table: &str) -> anyhow::Result<()> {
    let header = "# Bench results\n\nAppended by `make bench` (`shardcast-bench suite`): each section is one run \
                  of the standard suite on the machine it names. Compare figures only within a section: \
                  the machines this runs on change speed between runs.\n";
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if f.metadata()?.len() == 0 {
        f.write_all(header.as_bytes())?;
    }
    f.write_all(table.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_bests() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(best(&[3.0, 1.0, 2.0], true), Some(1.0));
        assert_eq!(best(&[3.0, 1.0, 2.0], false), Some(3.0));
    }

    #[test]
    fn ratios_skip_zero_denominators() {
        assert_eq!(
            ratios(&[4.0, 6.0, 1.0], &[2.0, 0.0, 2.0], 1.0),
            vec![2.0, 0.5]
        );
        assert_eq!(ratios(&[3.0], &[2.0], 2.0), vec![3.0]);
    }

    #[test]
    fn each_server_fills_its_own_column() {
        let mut f = lower("f", "µs");
        f.col(Server::Shardcast { shards: 1 }).push(1.0);
        f.col(Server::Baseline { threads: 2 }).push(2.0);
        f.col(Server::Uws).push(3.0);
        assert_eq!(
            (f.ours, f.baseline, f.uws),
            (vec![1.0], vec![2.0], vec![3.0])
        );
    }

    #[test]
    fn uws_goals_need_uws_in_the_run() {
        let with = Peers {
            tt: Some(1.0),
            uws: Some(10.0),
        };
        assert!(at_most_uws(10.0, with));
        assert!(!at_most_uws(10.5, with));
        assert!(!at_most_uws(
            1.0,
            Peers {
                tt: None,
                uws: None
            }
        ));
    }

    #[test]
    fn faults_name_uws_or_its_skip() {
        let mut f = Faults {
            ours: 0,
            baseline: 1,
            uws: Some(2),
        };
        assert_eq!(
            f.to_string(),
            "0 against shardcast, 1 against tt, 2 against uws"
        );
        f.uws = None;
        assert_eq!(
            f.to_string(),
            "0 against shardcast, 1 against tt, uws skipped"
        );
    }

    #[test]
    fn values_print_in_their_units() {
        assert_eq!(fmt_value(Some(10_600.0), "B"), "10.6 KB");
        assert_eq!(fmt_value(Some(0.2345), "s"), "0.234 s");
        assert_eq!(fmt_value(Some(1.825), "x"), "1.82x");
        assert_eq!(fmt_value(None, "µs"), "-");
    }
}
