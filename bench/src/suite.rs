//! The standard suite behind `make bench`: a private redis-server, a fresh
//! server process for every run (shardcast, and beside it the tokio-tungstenite
//! baseline and the uWebSockets peer `uws-counter`), every figure run in N
//! rounds with each server once per round, and the outcome written as
//! `bench/results/latest.json` and a section of `bench/RESULTS.md`, with the
//! commit, machine and kernel it ran on. It runs HEAD's committed tree only,
//! unless told otherwise, and then says so everywhere.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::figures::{self, FiguresError};
use crate::plan::{Load, OnGo, Plan, Target};
use crate::provenance::{self, ProvenanceError};
use crate::report::Report;
use crate::results::{Collector, Column, Results, ResultsError};
use crate::run::{self, Mode, RunError, RunSpec};
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
    /// Where the run's section is appended.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// Where the run is written as JSON, for `shardcast-bench figures`.
    #[arg(long, default_value = figures::LATEST)]
    pub json: PathBuf,
    /// Rounds: each figure runs this many times against each server, the
    /// servers of a round back to back. At least 3.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Socket counts and durations cut down about tenfold, any --repeat:
    /// checks the suite itself in about two minutes. Its figures mean little, so it
    /// writes nothing under bench/: the table is printed and the JSON kept
    /// as quick.json under --raw.
    #[arg(long)]
    pub quick: bool,
    /// Run although the tree differs from HEAD; every output then says
    /// "with local changes".
    #[arg(long)]
    pub allow_dirty: bool,
    /// Where each run's JSON report is kept.
    #[arg(long, default_value = "target/bench")]
    pub raw: PathBuf,
    /// shardcast's socket plane (`--io` of the server): auto, uring or
    /// epoll; recorded with the figures.
    #[arg(long, default_value = "auto")]
    pub io: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("--repeat {0}: a figure needs at least 3 runs (fewer only with --quick, at least 1)")]
    TooFewRuns(u32),
    #[error(transparent)]
    Tree(#[from] ProvenanceError),
    #[error("{0} is missing: build it with `cargo build --release`")]
    Missing(PathBuf),
    #[error("the suite's redis-server: {0}")]
    Redis(String),
    #[error("pinning the generator: {0}")]
    Pin(std::io::Error),
    #[error("starting {0}: {1}")]
    Start(String, std::io::Error),
    #[error("{0} did not become ready on {1}")]
    NotReady(String, SocketAddr),
    #[error("{0}: {1}")]
    Run(String, RunError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Figures(#[from] FiguresError),
}

/// Which server a run is against: shardcast, the tokio-tungstenite baseline,
/// or the uWebSockets peer (one thread, no Redis, no goodbye).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Shardcast { shards: u32 },
    Baseline { threads: u32 },
    Uws,
}

const ONE: Server = Server::Shardcast { shards: 1 };
const TWO: Server = Server::Shardcast { shards: 2 };
const TT1: Server = Server::Baseline { threads: 1 };
const TT2: Server = Server::Baseline { threads: 2 };

impl Server {
    fn column(self) -> Column {
        match self {
            Server::Shardcast { .. } => Column::Shardcast,
            Server::Baseline { .. } => Column::Tt,
            Server::Uws => Column::Uws,
        }
    }

    fn label(self) -> String {
        match self {
            Server::Shardcast { shards } => format!("shardcast {shards} shard(s)"),
            Server::Baseline { threads } => format!("tt {threads} thread(s)"),
            Server::Uws => "uws".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Server on CPU 1, generator (and the suite's redis-server) on CPU 0.
    Pinned,
    /// Server and generator free on both CPUs (redis-server stays on CPU 0).
    Unpinned,
}

pub fn main(args: SuiteArgs) -> Result<ExitCode, SuiteError> {
    if args.repeat == 0 || (args.repeat < 3 && !args.quick) {
        return Err(SuiteError::TooFewRuns(args.repeat));
    }
    // First, so that a refused tree costs nothing.
    let provenance = provenance::establish(args.allow_dirty)?;
    if provenance.dirty {
        eprintln!("suite: the tree has local changes: every output says so");
    }
    for bin in [&args.server, &args.baseline] {
        if !bin.exists() {
            return Err(SuiteError::Missing(bin.clone()));
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
    let redis = Redis::start_pinned(args.redis_server.clone(), 0).map_err(SuiteError::Redis)?;
    let mut s = Suite {
        args: &args,
        redis_url: format!("redis://127.0.0.1:{}", redis.port),
        uws,
        io: None,
        faults: BTreeMap::new(),
        runs: 0,
        rec: Collector::new(args.repeat),
    };
    s.faults.insert(Column::Shardcast, 0);
    s.faults.insert(Column::Tt, 0);
    if uws {
        s.faults.insert(Column::Uws, 0);
    }
    s.idle()?;
    s.closed()?;
    s.rate()?;
    s.storm()?;
    s.drain()?;
    s.mix()?;
    drop(redis);
    let ours = s.faults[&Column::Shardcast];
    let runs = s.runs;
    let took = started.elapsed().as_secs_f64();
    let mut results = s.rec.finish(provenance, args.quick, took, s.faults);
    results.io = s.io.unwrap_or_else(|| args.io.clone());
    write(&args, &results)?;
    eprintln!("suite: {runs} runs in {took:.0} s");
    Ok(if ours == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The server API key the suite gives its shardcast servers: `/status`,
/// which names the plane, is behind it.
const API_KEY: &str = "suite-key-0123456789abcdef";

/// The plane a running shardcast says it uses (`"io"` of `/status`:
/// `auto` comes to io_uring where the kernel allows it).
fn plane(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {API_KEY}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(v.get("io")?.as_str()?.to_string())
}

/// Prints the section; a full run also writes latest.json and appends the
/// section to RESULTS.md, a quick one keeps its JSON with the raw reports.
fn write(args: &SuiteArgs, results: &Results) -> Result<(), SuiteError> {
    let section = figures::section(results);
    println!("{section}");
    if args.quick {
        let path = args.raw.join("quick.json");
        results.save(&path)?;
        eprintln!(
            "suite: quick run: nothing written under bench/; JSON in {}",
            path.display()
        );
        return Ok(());
    }
    results.save(&args.json)?;
    figures::append_section(&args.out, &section)?;
    eprintln!(
        "suite: wrote {} and appended to {}; `make figures` puts it in the README",
        args.json.display(),
        args.out.display()
    );
    Ok(())
}

struct Suite<'a> {
    args: &'a SuiteArgs,
    redis_url: String,
    /// Whether the uws binary is there to run.
    uws: bool,
    /// The plane shardcast said it runs on.
    io: Option<String>,
    /// Faults per server; those against shardcast fail the suite.
    faults: BTreeMap<Column, u64>,
    runs: u32,
    rec: Collector,
}

impl Suite<'_> {
    fn rounds(&self) -> usize {
        self.args.repeat as usize
    }

    fn q(&self, full: u32, quick: u32) -> u32 {
        if self.args.quick {
            quick
        } else {
            full
        }
    }

    fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(if self.args.quick { quick } else { full })
    }

    /// `servers`, then uws when its binary is there.
    fn lineup(&self, servers: &[Server]) -> Vec<Server> {
        let mut v = servers.to_vec();
        if self.uws {
            v.push(Server::Uws);
        }
        v
    }

    /// Records figure `id` of a run of `srv` in `round`.
    fn put(&mut self, id: &'static str, round: usize, srv: Server, v: Option<f64>, r: &Report) {
        self.rec.put(id, round, srv.column(), v, r.fault_total);
    }

    fn idle(&mut self) -> Result<(), SuiteError> {
        let n = self.q(19_000, 2_000);
        let hold = self.secs(3, 1);
        for round in 0..self.rounds() {
            for srv in self.lineup(&[ONE, TT1]) {
                let spec = self.spec(Mode::Idle, n, Load::Idle, srv, |sp| sp.duration = hold);
                let r = self.run_one(srv, Placement::Pinned, spec)?;
                let v = r.server.as_ref().and_then(|s| s.bytes_per_socket);
                self.put("idle_bytes", round, srv, v, &r);
            }
        }
        Ok(())
    }

    /// Server CPU per reply, closed loop, 100 sockets: one core, then two.
    fn closed(&mut self) -> Result<(), SuiteError> {
        let (duration, warmup) = (self.secs(5, 2), Duration::from_secs(1));
        for round in 0..self.rounds() {
            let tp = |s: &Suite, srv| {
                let load = Load::Closed { window: 8 };
                s.spec(Mode::Throughput, 100, load, srv, |sp| {
                    (sp.duration, sp.warmup) = (duration, warmup);
                })
            };
            for srv in self.lineup(&[ONE, TT1]) {
                let r = self.run_one(srv, Placement::Pinned, tp(self, srv))?;
                let server_cpu = r.server.as_ref().and_then(|s| s.cpu_us_per_reply);
                self.put("closed_cpu", round, srv, server_cpu, &r);
                self.put("closed_rps", round, srv, Some(r.msgs_per_s), &r);
                self.put("closed_gen", round, srv, r.generator.cpu_us_per_reply, &r);
            }
            // uws has one thread only: it sits out the 2-shard figures.
            for srv in [TWO, TT2] {
                let r = self.run_one(srv, Placement::Unpinned, tp(self, srv))?;
                let server_cpu = r.server.as_ref().and_then(|s| s.cpu_us_per_reply);
                self.put("closed2_cpu", round, srv, server_cpu, &r);
                self.put("closed2_rps", round, srv, Some(r.msgs_per_s), &r);
            }
            // Two shards cannot show their throughput on a 2-CPU box whose
            // other CPU runs the generator; what a shard count changes is the
            // CPU each reply costs. Same per-reply cost on 2 shards as on 1
            // means 2 cores give twice the replies of 1.
            for col in [Column::Shardcast, Column::Tt] {
                let get = |id| self.rec.get(id, round, col).filter(|v| *v > 0.0);
                let rps = get("closed2_rps")
                    .zip(get("closed_rps"))
                    .map(|(a, b)| a / b);
                let cpu = get("closed_cpu")
                    .zip(get("closed2_cpu"))
                    .map(|(a, b)| 2.0 * a / b);
                self.rec.put("scale_rps", round, col, rps, 0);
                self.rec.put("scale_cpu", round, col, cpu, 0);
            }
        }
        Ok(())
    }

    /// Open-loop round trips at 10K sockets, pinned, one shard or thread
    /// each: the layout the goals are stated for.
    fn rate(&mut self) -> Result<(), SuiteError> {
        let n = self.q(10_000, 1_000);
        let rate = if self.args.quick { 2_000.0 } else { 20_000.0 };
        let duration = self.secs(10, 3);
        for round in 0..self.rounds() {
            for srv in self.lineup(&[ONE, TT1]) {
                let spec = self.spec(Mode::Rate, n, Load::Open { rate }, srv, |sp| {
                    sp.duration = duration;
                });
                let r = self.run_one(srv, Placement::Pinned, spec)?;
                let q = r.rtt_us;
                self.put("rate_p50", round, srv, q.map(|q| q.p50), &r);
                self.put("rate_p99", round, srv, q.map(|q| q.p99), &r);
                self.put("rate_p999", round, srv, q.map(|q| q.p999), &r);
                let server_cpu = r.server.as_ref().and_then(|s| s.cpu_us_per_reply);
                self.put("rate_cpu", round, srv, server_cpu, &r);
                self.put("rate_gen", round, srv, r.generator.cpu_us_per_reply, &r);
            }
        }
        Ok(())
    }

    /// Connect all at once; shardcast's sockets are then dropped and resume
    /// from Redis. Every server's figure is the same span, first connect to
    /// last welcome.
    fn storm(&mut self) -> Result<(), SuiteError> {
        let n = self.q(10_000, 1_000);
        for round in 0..self.rounds() {
            // Two workers: one connect() runs a whole loopback TCP handshake
            // (about 50 µs here), so one generator process would time itself.
            let spec = self.spec(Mode::Storm, n, Load::Idle, TWO, |sp| {
                (sp.procs, sp.plan.prime, sp.plan.on_go) = (2, 3, OnGo::DropAndResume);
                sp.settle = Duration::from_millis(100);
            });
            let r = self.run_one(TWO, Placement::Unpinned, spec)?;
            self.put("storm_connect", round, TWO, r.connect_all_s, &r);
            let resume = r.storm.as_ref().map(|st| st.resume_all_s);
            self.put("storm_resume", round, TWO, resume, &r);
            // The peers have no resume: an Idle run times their connects.
            for srv in self.lineup(&[TT2]) {
                let spec = self.spec(Mode::Idle, n, Load::Idle, srv, |sp| sp.procs = 2);
                let r = self.run_one(srv, Placement::Unpinned, spec)?;
                self.put("storm_connect", round, srv, r.connect_all_s, &r);
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), SuiteError> {
        let n = self.q(10_000, 1_000);
        for round in 0..self.rounds() {
            let spec = self.spec(Mode::Drain, n, Load::Idle, TWO, |sp| {
                (sp.procs, sp.plan.on_go) = (2, OnGo::ExpectDrain);
            });
            let r = self.run_one(TWO, Placement::Unpinned, spec)?;
            let d = r.drain.as_ref();
            self.put("drain_close", round, TWO, d.map(|d| d.last_close_s), &r);
            let share = d.map(|d| d.goodbye_share * 100.0);
            self.put("drain_goodbye", round, TWO, share, &r);
            self.put("drain_exit", round, TWO, d.and_then(|d| d.exit_s), &r);
        }
        Ok(())
    }

    /// The original service's load test.
    fn mix(&mut self) -> Result<(), SuiteError> {
        let n = self.q(10_000, 1_000);
        let duration = self.secs(60, 5);
        let load = Load::Mix {
            chatter_share: 0.8,
            churn: 0.0,
        };
        for round in 0..self.rounds() {
            let spec = self.spec(Mode::Mix, n, load, TWO, |sp| {
                (sp.plan.connect_rate, sp.plan.reconnect) = (2_000.0, true);
                sp.duration = duration;
            });
            let r = self.run_one(TWO, Placement::Unpinned, spec)?;
            self.put("mix_p99", round, TWO, r.rtt_us.map(|q| q.p99), &r);
            self.put("mix_rps", round, TWO, Some(r.msgs_per_s), &r);
        }
        Ok(())
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
    ) -> Result<Report, SuiteError> {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = self.start_server(server, place, addr)?;
        if matches!(server, Server::Shardcast { .. }) && self.io.is_none() {
            self.io = plane(addr);
        }
        (spec.plan.addr, spec.plan.host) = (addr, addr.to_string());
        spec.server_pid = Some(child.id());
        let gen_cpus: &[usize] = match place {
            Placement::Pinned => &[0],
            Placement::Unpinned => &[0, 1],
        };
        sys::pin_to(gen_cpus).map_err(SuiteError::Pin)?;
        let label = format!(
            "{} {} ({}, {} sockets)",
            spec.mode.name(),
            server.label(),
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
        let report = result.map_err(|e| SuiteError::Run(label.clone(), e))?;
        self.runs += 1;
        *self.faults.entry(server.column()).or_default() += report.fault_total;
        if !report.ok() {
            eprintln!("suite: {label}: faults {:?}", report.faults);
        }
        self.keep(&spec, server, &label, &report);
        Ok(report)
    }

    /// Keeps the run's JSON, page and charts under --raw, for reading a run
    /// afterwards; a run stands without them.
    fn keep(&self, spec: &RunSpec, server: Server, label: &str, report: &Report) {
        let stem = self.args.raw.join(format!(
            "{:02}-{}-{}",
            self.runs,
            spec.mode.name(),
            server.label().replace(' ', "-")
        ));
        let file = |ext: &str| stem.with_extension(ext);
        if let Ok(json) = serde_json::to_vec_pretty(report) {
            let _ = std::fs::write(file("json"), json);
        }
        match report.html().and_then(|h| Ok((h, report.png()?))) {
            Ok((html, png)) => {
                let _ = std::fs::write(file("html"), html);
                let _ = std::fs::write(file("png"), png);
            }
            Err(e) => eprintln!("suite: {label}: no charts: {e}"),
        }
    }

    fn start_server(
        &self,
        server: Server,
        place: Placement,
        addr: SocketAddr,
    ) -> Result<Child, SuiteError> {
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
                    "--io",
                    &self.args.io,
                    "--api-key",
                    API_KEY,
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
            .map_err(|e| SuiteError::Start(server.label(), e))?;
        let path = match server {
            Server::Shardcast { .. } => "/readyz",
            Server::Baseline { .. } | Server::Uws => "",
        };
        if !wait_ready(addr, path, Duration::from_secs(20)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SuiteError::NotReady(server.label(), addr));
        }
        Ok(child)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        suite: SuiteArgs,
    }

    #[test]
    fn each_server_fills_its_own_column() {
        assert_eq!(ONE.column(), Column::Shardcast);
        assert_eq!(TT2.column(), Column::Tt);
        assert_eq!(Server::Uws.column(), Column::Uws);
    }

    #[test]
    fn fewer_than_three_rounds_are_for_quick_runs_only() {
        let args = |a: &[&str]| Cli::parse_from([&["suite"], a].concat()).suite;
        let two = args(&["--repeat", "2"]);
        assert!(matches!(main(two), Err(SuiteError::TooFewRuns(2))));
        let zero = args(&["--repeat", "0", "--quick"]);
        assert!(matches!(main(zero), Err(SuiteError::TooFewRuns(0))));
        let text = SuiteError::TooFewRuns(2).to_string();
        assert!(text.contains("at least 3 runs"), "{text}");
        let d = args(&[]);
        assert_eq!((d.repeat, d.quick, d.allow_dirty), (3, false, false));
        assert_eq!(d.json, PathBuf::from("bench/results/latest.json"));
    }
}
