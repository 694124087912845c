//! The `scale` subcommand's options and their check: everything wrong with
//! them is a [`UsageError`] (exit 64) before any socket or worker exists.

use std::path::PathBuf;
use std::time::Duration;

use clap::{value_parser, Args};

use super::layout::{self, Layout, MAX_SOCKETS_PER_PROC};
use super::node::{self, Node, NodeError};

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// A node of the cluster, `http://HOST:PORT` (WebSocket and HTTP share
    /// the port). Give it once per node, at least twice.
    #[arg(long = "node", value_name = "URL", required = true)]
    pub nodes: Vec<String>,
    /// The pid of each node's process, in --node order; the kill phase needs
    /// the killed node's.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Sockets in all; socket i connects to node i % nodes.
    #[arg(short = 'n', long, default_value_t = 12_000)]
    pub sockets: u32,
    /// Worker processes; 0 picks one per 3000 sockets, at least 2.
    #[arg(long, default_value_t = 0)]
    pub procs: u32,
    /// Rooms; socket i joins room-((i / nodes) % rooms). At most the
    /// server's default room cap, 10,000.
    #[arg(long, default_value_t = 8, value_parser = value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,
    /// Global broadcasts in the fanout phase, one after another.
    #[arg(long, default_value_t = 5, value_parser = value_parser!(u32).range(1..=1000))]
    pub broadcasts: u32,
    /// Index of the node to SIGKILL in the kill phase (default: the last).
    #[arg(long, value_name = "INDEX")]
    pub kill_node: Option<u32>,
    /// Skip the kill phase (sockets are still closed and checked at the end).
    #[arg(long)]
    pub no_kill: bool,
    /// Closed-loop pacing of each socket's messages in the kill phase.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub send_interval: Duration,
    /// Connects in flight at once, per worker.
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Bound on each phase, and on every single wait inside one.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Write the figures and assertions as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Seed of the send offsets in the kill phase.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The node to kill and its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub node: u32,
    pub pid: u32,
}

/// A checked `scale` run: the options as given, and what they name.
#[derive(Debug, Clone)]
pub struct ScaleSpec {
    pub args: ScaleArgs,
    pub nodes: Vec<Node>,
    pub procs: u32,
    pub kill: Option<Kill>,
}

impl ScaleSpec {
    pub fn layout(&self) -> Layout {
        Layout {
            nodes: self.nodes.len() as u32,
            rooms: self.args.rooms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("scale needs at least 2 --node, got {0}")]
    TooFewNodes(usize),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{pids} --pid for {nodes} --node: pids are matched to nodes by position")]
    TooManyPids { pids: usize, nodes: usize },
    #[error("--kill-node {index} names no node (there are {nodes})")]
    KillNodeOutOfRange { index: u32, nodes: usize },
    #[error("the kill phase needs the pid of node {0} (--pid in --node order), or --no-kill")]
    NoPid(u32),
    #[error("{0}")]
    Range(String),
}

impl ScaleArgs {
    pub fn spec(&self) -> Result<ScaleSpec, UsageError> {
        let n = self.nodes.len();
        if n < 2 {
            return Err(UsageError::TooFewNodes(n));
        }
        let nodes = self
            .nodes
            .iter()
            .map(|s| node::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if self.pids.len() > n {
            return Err(UsageError::TooManyPids {
                pids: self.pids.len(),
                nodes: n,
            });
        }
        let kill = if self.no_kill {
            None
        } else {
            let index = self.kill_node.unwrap_or(n as u32 - 1);
            if index as usize >= n {
                return Err(UsageError::KillNodeOutOfRange { index, nodes: n });
            }
            let pid = *self
                .pids
                .get(index as usize)
                .ok_or(UsageError::NoPid(index))?;
            Some(Kill { node: index, pid })
        };
        let range = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(UsageError::Range(what.to_string()))
            }
        };
        range(
            self.sockets as usize >= n,
            "--sockets must be at least the number of nodes",
        )?;
        range(!self.timeout.is_zero(), "--timeout must be above zero")?;
        range(
            self.send_interval >= Duration::from_millis(1),
            "--send-interval must be at least 1ms",
        )?;
        let procs = if self.procs == 0 {
            layout::auto_procs(self.sockets)
        } else {
            self.procs
        };
        range(procs <= self.sockets, "--procs must not exceed --sockets")?;
        if self.sockets.div_ceil(procs) > MAX_SOCKETS_PER_PROC {
            return Err(UsageError::Range(format!(
                "{} sockets over {procs} worker(s) is more than {MAX_SOCKETS_PER_PROC} each: raise --procs",
                self.sockets
            )));
        }
        Ok(ScaleSpec {
            args: self.clone(),
            nodes,
            procs,
            kill,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<ScaleSpec, UsageError> {
        let mut argv = vec!["b", "scale"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("clap accepts it");
        let Cmd::Scale(a) = cli.cmd else {
            panic!("not scale")
        };
        a.spec()
    }

    const THREE: [&str; 6] = [
        "--node",
        "http://127.0.0.1:8081",
        "--node",
        "http://127.0.0.1:8082",
        "--node",
        "http://127.0.0.1:8083",
    ];

    #[test]
    fn defaults_kill_the_last_node() {
        let mut a = THREE.to_vec();
        a.extend(["--pid", "11", "--pid", "12", "--pid", "13"]);
        let s = parse(&a).unwrap();
        assert_eq!(s.kill, Some(Kill { node: 2, pid: 13 }));
        let a = &s.args;
        assert_eq!(
            (a.sockets, s.procs, a.rooms, a.broadcasts),
            (12_000, 4, 8, 5)
        );
        assert_eq!(a.send_interval, Duration::from_secs(2));
        assert_eq!(a.timeout, Duration::from_secs(60));
        assert_eq!(a.connect_concurrency, 256);
        assert!(!a.quiet);
        assert_eq!(s.nodes[1].addr, "127.0.0.1:8082".parse().unwrap());
        assert_eq!(a.nodes[0], "http://127.0.0.1:8081");
    }

    #[test]
    fn a_missing_pid_is_a_usage_error_unless_no_kill() {
        assert_eq!(parse(&THREE).unwrap_err(), UsageError::NoPid(2));
        let mut a = THREE.to_vec();
        a.extend(["--pid", "11", "--pid", "12"]);
        assert_eq!(parse(&a).unwrap_err(), UsageError::NoPid(2));
        a.extend(["--kill-node", "1"]);
        assert_eq!(parse(&a).unwrap().kill, Some(Kill { node: 1, pid: 12 }));
        let mut a = THREE.to_vec();
        a.push("--no-kill");
        assert_eq!(parse(&a).unwrap().kill, None);
        let mut a = THREE.to_vec();
        a.extend(["--pid", "1", "--kill-node", "3"]);
        assert!(matches!(
            parse(&a).unwrap_err(),
            UsageError::KillNodeOutOfRange { index: 3, nodes: 3 }
        ));
    }

    #[test]
    fn bad_shapes_are_usage_errors() {
        let one = ["--node", "http://127.0.0.1:1", "--no-kill"];
        assert_eq!(parse(&one).unwrap_err(), UsageError::TooFewNodes(1));
        let clap_refuses = |extra: &[&str]| {
            let mut v = vec!["b", "scale", "--node", "http://127.0.0.1:1"];
            v.extend_from_slice(extra);
            Cli::try_parse_from(v).is_err()
        };
        assert!(
            Cli::try_parse_from(["b", "scale"]).is_err(),
            "--node is required"
        );
        for bad in [
            ["--rooms", "0"],
            ["--rooms", "10001"],
            ["--broadcasts", "0"],
            ["--broadcasts", "1001"],
            ["--connect-concurrency", "0"],
        ] {
            assert!(clap_refuses(&bad), "{bad:?}");
        }
        assert!(!clap_refuses(&["--rooms", "10000"]));
        let mut a = THREE.to_vec();
        a.push("--no-kill");
        let with = |extra: &[&str]| {
            let mut v = a.clone();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(matches!(with(&["--procs", "2"]), Err(UsageError::Range(_))));
        assert_eq!(with(&["--procs", "3"]).unwrap().procs, 3);
        assert!(matches!(with(&["-n", "2"]), Err(UsageError::Range(_))));
        assert_eq!(with(&["-n", "3"]).unwrap().procs, 2);
        assert!(matches!(
            with(&["--timeout", "0s"]),
            Err(UsageError::Range(_))
        ));
        let mut v = a.clone();
        v.extend(["--pid", "1", "--pid", "2", "--pid", "3", "--pid", "4"]);
        assert!(matches!(
            parse(&v),
            Err(UsageError::TooManyPids { pids: 4, nodes: 3 })
        ));
        let v = [
            "--node",
            "https://a:1",
            "--node",
            "http://127.0.0.1:1",
            "--no-kill",
        ];
        assert!(matches!(parse(&v), Err(UsageError::Node(_))));
    }
}
