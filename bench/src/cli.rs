//! The command line: one subcommand per mode, the options every mode shares,
//! and the translation of both into a [`RunSpec`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{value_parser, Args, Parser, Subcommand};

use crate::plan::{Load, Plan, Target};
use crate::run::{Mode, RunSpec};

/// Load generator for the shardcast wire contract. It checks every answer
/// (counts, welcomes, goodbyes) while it measures, reads the server's CPU and
/// memory from /proc, and exits 1 when anything was wrong.
#[derive(Debug, Parser)]
#[command(name = "shardcast-bench", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// N sockets ramped at --connect-rate: 80% chatters send every 2-10 s,
    /// 20% lurkers every 30-120 s, for --duration once all are in.
    Mix {
        #[command(flatten)]
        common: Common,
        /// New connections per second while ramping up.
        #[arg(long, default_value_t = 1000.0)]
        connect_rate: f64,
        /// How long to run once every socket is in.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Share of the sockets that are chatters.
        #[arg(long, default_value_t = 0.8)]
        chatters: f64,
        /// Share of sends after which the socket closes and comes back with
        /// its session id 0.5-2 s later (its count must continue), e.g. 0.02.
        #[arg(long, default_value_t = 0.0)]
        churn: f64,
        /// Do not reconnect after a drain goodbye (by default a socket comes back
        /// with its session id once retry_after_ms has passed).
        #[arg(long)]
        no_reconnect: bool,
    },
    /// C sockets, closed loop: each keeps --window messages in flight.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 8)]
        window: u32,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Load before the measured window opens.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
    },
    /// N sockets, open loop at --rate messages per second in total; round
    /// trips count from each message's scheduled time (no coordinated omission).
    Rate {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// After a drain goodbye, reconnect with the session id once
        /// retry_after_ms has passed (a deploy under load); sends that find
        /// their socket away are counted as skipped.
        #[arg(long)]
        reconnect: bool,
    },
    /// Hold N sockets and read the server's RSS before and after (needs --server-pid).
    Idle {
        #[command(flatten)]
        common: Common,
        /// How long the sockets are held before the server's memory is read.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// N sockets, as fast as possible, each sends --prime messages; all are
    /// dropped at once and reconnect with their session ids; every count must continue.
    Storm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3)]
        prime: u32,
        /// Pause between the last primed reply and the drop, for the server's flush.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// N sockets, then SIGTERM to --server-pid: every socket must get the
    /// shutdown goodbye and Close 1001.
    Drain {
        #[command(flatten)]
        common: Common,
        /// More servers sharing the port (pids, comma-separated): each is
        /// sent SIGTERM with --server-pid's, and the drain waits for all.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// How long every socket is held once all are open, before the
        /// drain.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// After the hold, one broadcast is posted here (http://HOST:PORT;
        /// the key from SHARDCAST_API_KEY) and the drain waits until every
        /// socket got it (up to 60 s): POST to last receipt.
        #[arg(long)]
        broadcast: Option<String>,
        /// New connections per second in all (0: as fast as they go).
        #[arg(long, default_value_t = 0.0)]
        connect_rate: f64,
        /// Messages each socket sends once welcomed, waiting for their
        /// counts: the drain's goodbye must then carry the last one, which
        /// the server wrote to Redis before sending it (counts lost).
        #[arg(long, default_value_t = 0)]
        prime: u32,
    },
    /// The standard suite against fresh servers, on HEAD's committed tree:
    /// writes bench/results/latest.json and appends to bench/RESULTS.md.
    Suite(crate::suite::SuiteArgs),
    /// Rewrites the generated figures in README.md and docs/BENCHMARKS.md
    /// (between their `figures:begin` and `figures:end` lines) from
    /// bench/results/latest.json.
    Figures(crate::figures::FiguresArgs),
    /// Scale-out test of a cluster: fanout, room broadcast, resume on every
    /// node, and a node killed under traffic; exits 1 when an assertion fails.
    Scale(crate::scale::ScaleArgs),
    /// permessage-deflate on broadcasts, against a server run with it on:
    /// bytes on the wire and server CPU per delivery, without and with.
    Deflate(crate::deflate::DeflateArgs),
    /// One broadcast to N sockets of one room at a time, against shardcast
    /// or `uws-counter PORT pubsub`: POST to last receipt and server CPU per
    /// delivery.
    Fanout(crate::fanout::FanoutArgs),
    /// Times `/metrics` rendering in-process: SHARDS shards' cells with
    /// traffic in them, rendered ROUNDS times; prints the median, p99 and
    /// worst time per scrape and the body's size.
    Scrape {
        #[arg(long, default_value_t = 64)]
        shards: usize,
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
    },
    /// Prints a duration (10s, 500ms, 1m 30s) in whole milliseconds, for
    /// scripts that must not parse durations by hand.
    Millis {
        #[arg(value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Internal: one worker process of a run.
    #[command(hide = true)]
    Worker { plan: String },
    /// Internal: one worker process of a scale run.
    #[command(hide = true)]
    ScaleWorker { plan: String },
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket URL of the server.
    #[arg(default_value = "ws://127.0.0.1:8080/ws/chat/")]
    pub url: String,
    /// Sockets to open (default per mode: mix 6000, throughput 100, others 10000).
    #[arg(short = 'n', long, value_parser = value_parser!(u32).range(1..))]
    pub sockets: Option<u32>,
    /// Worker processes (each has its own fd limit); 0 picks one per 15,000 sockets.
    #[arg(long, default_value_t = 0)]
    pub procs: u32,
    /// Source addresses 127.0.0.1 upward to spread connections over.
    #[arg(long, default_value_t = 16, value_parser = value_parser!(u32).range(1..=254))]
    pub sources: u32,
    /// Pin the generator (and its workers) to these CPUs, e.g. `1` or `0-1`.
    #[arg(long)]
    pub cpu: Option<String>,
    /// The server's pid: its CPU and RSS are sampled from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A reply, upgrade or close slower than this is an error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Bytes per message.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// The server sends no goodbye before its Close echo (servers built on
    /// tungstenite's protocol layer cannot).
    #[arg(long)]
    pub no_bye: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as an HTML page with charts here, and the charts as
    /// one PNG beside it (the same name ending in .png).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Common {
    /// Builds the run for `mode`; `tune` sets the mode's own settings.
    pub fn spec(
        &self,
        mode: Mode,
        load: Load,
        tune: impl FnOnce(&mut RunSpec),
    ) -> Result<RunSpec, String> {
        let sockets = self.sockets.unwrap_or(match mode {
            Mode::Mix => 6000,
            Mode::Throughput => 100,
            _ => 10_000,
        });
        let mut spec = RunSpec::new(mode, Plan::new(Target::parse(&self.url)?, sockets, load));
        let p = &mut spec.plan;
        (p.sources, p.payload, p.seed) = (self.sources, self.payload, self.seed);
        p.timeout_ms = self.timeout.as_millis() as u64;
        p.expect_bye = !self.no_bye;
        if self.procs > 0 {
            spec.procs = self.procs;
        }
        (spec.server_pid, spec.progress) = (self.server_pid, !self.quiet);
        tune(&mut spec);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["b", "throughput", "ws://127.0.0.1:1/ws/chat/"]).unwrap();
        let Cmd::Throughput {
            common,
            window,
            duration,
            ..
        } = cli.cmd
        else {
            panic!()
        };
        assert_eq!((window, duration), (8, Duration::from_secs(10)));
        let spec = common
            .spec(Mode::Throughput, Load::Closed { window }, |_| {})
            .unwrap();
        assert_eq!((spec.plan.sockets, spec.procs), (100, 1));
        let cli = Cli::try_parse_from(["b", "idle", "-n", "19000", "--timeout", "2s"]).unwrap();
        let Cmd::Idle { common, .. } = cli.cmd else {
            panic!()
        };
        let spec = common.spec(Mode::Idle, Load::Idle, |_| {}).unwrap();
        assert_eq!((spec.procs, spec.plan.timeout_ms), (2, 2000));
        assert!(Cli::try_parse_from(["b", "rate", "--rate", "x"]).is_err());
        assert!(Cli::try_parse_from(["b", "rate", "-n", "0"]).is_err());
        assert!(Cli::try_parse_from(["b", "idle", "--sources", "255"]).is_err());
        assert!(Cli::try_parse_from(["b", "mix", "--duration", "soon"]).is_err());
    }
}
