//! `shardcast-bench fanout`: one broadcast to N sockets of one room, timed
//! from outside, against one running server: shardcast (its broadcast goes
//! through Redis) or the uWebSockets peer run with `pubsub` (its own
//! pub/sub, one loop). N sockets upgrade on `/ws/chat/?room=ROOM` and are
//! read by one epoll loop; then, B times, one broadcast is posted (to
//! `/api/broadcast?room=ROOM` with the room in the body too, which each
//! server reads its own way) and the loop waits until every socket has it.
//! Per broadcast: POST to last receipt, and the server's CPU per delivery
//! (its threads' time on CPU from `/proc/PID/task/*/schedstat`, from before
//! the POST to the last receipt).

use std::io;
use std::time::{Duration, Instant};

use shardcast_kit::wire::{self, RawFrame};

use crate::epoll::Epoll;
use crate::held::{self, HeldError, Reading};
use crate::scale::http;
use crate::scale::node;
use crate::sys;

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// The server, http://HOST:PORT.
    #[arg(long)]
    pub url: String,
    /// Its pid, for its CPU time.
    #[arg(long)]
    pub server_pid: u32,
    /// Sockets in the room.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Broadcasts, one at a time.
    #[arg(long, default_value_t = 5)]
    pub broadcasts: usize,
    #[arg(long, default_value = "lobby")]
    pub room: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("node: {0}")]
    Node(#[from] node::NodeError),
    #[error("a broadcast was refused: {0}")]
    Post(#[from] http::PostError),
    #[error(transparent)]
    Held(#[from] HeldError),
    #[error("{0} of {1} sockets were not welcomed within 60 s")]
    Unwelcomed(usize, usize),
    #[error("{0} of {1} sockets did not get broadcast {2} within 30 s")]
    Missing(usize, usize, usize),
}

/// One broadcast's figures.
#[derive(Debug, Clone, Copy)]
pub struct Shot {
    pub last_receipt_ms: f64,
    pub cpu_us_per_delivery: f64,
}

/// The server's threads' time on CPU, in ns (finer than `/proc/PID/stat`'s
/// clock ticks, which a fan-out of a few tens of ms would round away).
fn cpu_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

pub fn main(args: &FanoutArgs) -> Result<(), FanoutError> {
    let node = node::parse(&args.url)?;
    sys::raise_fd_limit();
    let ep = Epoll::new()?;
    let path = format!("/ws/chat/?room={}", args.room);
    let mut socks = held::open(&node, &ep, &path, "", args.sockets)?;
    let accept = wire::expected_accept();
    let counts = |f: &RawFrame| f.payload.starts_with(b"{\"broadcast\"");
    let how = Reading {
        accept: &accept,
        head: &|_| Ok(()),
        counts: &counts,
    };
    held::pump(
        &ep,
        &mut socks,
        Duration::from_secs(60),
        |s| s.welcomed,
        &how,
    )?;
    let missing = socks.iter().filter(|s| !s.welcomed).count();
    if missing > 0 {
        return Err(FanoutError::Unwelcomed(missing, socks.len()));
    }
    // A line a script waits for before it starts counting the server.
    eprintln!("fanout: {} sockets open", socks.len());
    std::thread::sleep(Duration::from_secs(1));
    let path = format!("/api/broadcast?room={}", args.room);
    let mut shots = Vec::with_capacity(args.broadcasts);
    for i in 0..args.broadcasts {
        let before = cpu_ns(args.server_pid)?;
        let posted = Instant::now();
        http::broadcast_at(
            &node,
            &path,
            Some(&args.room),
            |_| format!("fan-out {i}"),
            Duration::from_secs(10),
        )?;
        let last = held::pump(
            &ep,
            &mut socks,
            Duration::from_secs(30),
            |s| s.got > i,
            &how,
        )?;
        let cpu = cpu_ns(args.server_pid)? - before;
        let missing = socks.iter().filter(|s| s.got <= i).count();
        if missing > 0 {
            return Err(FanoutError::Missing(missing, socks.len(), i));
        }
        let shot = Shot {
            last_receipt_ms: last.saturating_duration_since(posted).as_secs_f64() * 1e3,
            cpu_us_per_delivery: cpu as f64 / 1e3 / socks.len() as f64,
        };
        eprintln!(
            "fanout: broadcast {}: last receipt {:.1} ms, {:.2} µs per delivery",
            i + 1,
            shot.last_receipt_ms,
            shot.cpu_us_per_delivery
        );
        shots.push(shot);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("fanout: broadcasts done");
    let (ms, ms_lo, ms_hi) = held::median(shots.iter().map(|s| s.last_receipt_ms).collect());
    let (cpu, cpu_lo, cpu_hi) = held::median(shots.iter().map(|s| s.cpu_us_per_delivery).collect());
    // One line for scripts: sockets, broadcasts, then medians and ranges.
    println!(
        "fanout {} {} last_receipt_ms {ms:.2} {ms_lo:.2} {ms_hi:.2} cpu_us_per_delivery {cpu:.3} {cpu_lo:.3} {cpu_hi:.3}",
        socks.len(),
        shots.len()
    );
    // The script stops counting the server before the sockets close.
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}
