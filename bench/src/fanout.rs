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

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use shardcast_kit::wire;

use crate::epoll::Epoll;
use crate::scale::http;
use crate::scale::node::{self, Node};
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
    #[error("the server answered an upgrade wrongly: {0}")]
    Upgrade(String),
    #[error("{0} of {1} sockets were not welcomed within 60 s")]
    Unwelcomed(usize, usize),
    #[error("{0} of {1} sockets did not get broadcast {2} within 30 s")]
    Missing(usize, usize, usize),
}

/// One socket: what it has read but not parsed, and what it got.
struct Sock {
    tcp: TcpStream,
    buf: Vec<u8>,
    upgraded: bool,
    welcomed: bool,
    got: usize,
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

/// Takes everything the socket has (edge-triggered) and counts broadcast
/// frames; the welcome, answers and heartbeats are not counted.
fn read_all(s: &mut Sock, accept: &str) -> Result<(), FanoutError> {
    let mut chunk = [0u8; 16384];
    loop {
        match s.tcp.read(&mut chunk) {
            Ok(0) => return Err(FanoutError::Upgrade("the server closed a socket".into())),
            Ok(n) => s.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    if !s.upgraded {
        let Some(head) =
            wire::parse_upgrade(&s.buf, accept).map_err(|e| FanoutError::Upgrade(e.to_string()))?
        else {
            return Ok(());
        };
        s.buf.drain(..head);
        s.upgraded = true;
    }
    let mut used = 0;
    while let Some((f, n)) =
        wire::raw_frame(&s.buf[used..]).map_err(|e| FanoutError::Upgrade(e.to_string()))?
    {
        if !s.welcomed {
            s.welcomed = true;
        } else if f.payload.starts_with(b"{\"broadcast\"") {
            s.got += 1;
        }
        used += n;
    }
    s.buf.drain(..used);
    Ok(())
}

/// Reads what is ready until `done` holds for every socket, or `limit`;
/// returns when the last socket came to hold it.
fn pump(
    ep: &Epoll,
    socks: &mut [Sock],
    limit: Duration,
    done: impl Fn(&Sock) -> bool,
    accept: &str,
) -> Result<Instant, FanoutError> {
    let deadline = Instant::now() + limit;
    let mut events: Vec<libc::epoll_event> = Vec::with_capacity(1024);
    let mut left = socks.iter().filter(|s| !done(s)).count();
    let mut last = Instant::now();
    while left > 0 && Instant::now() < deadline {
        ep.wait(&mut events, Some(50_000_000))?;
        for ev in &events {
            let s = &mut socks[ev.u64 as usize];
            let before = done(s);
            read_all(s, accept)?;
            if !before && done(s) {
                left -= 1;
                last = Instant::now();
            }
        }
    }
    Ok(last)
}

fn open(node: &Node, ep: &Epoll, args: &FanoutArgs) -> Result<Vec<Sock>, FanoutError> {
    let path = format!("/ws/chat/?room={}", args.room);
    let mut socks = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let tcp = TcpStream::connect(node.addr)?;
        tcp.set_nodelay(true)?;
        let mut req = Vec::new();
        wire::upgrade_request(&mut req, &node.authority, &path, None);
        (&tcp).write_all(&req)?;
        tcp.set_nonblocking(true)?;
        ep.add_input(tcp.as_raw_fd(), i as u64)?;
        socks.push(Sock {
            tcp,
            buf: Vec::new(),
            upgraded: false,
            welcomed: false,
            got: 0,
        });
    }
    let accept = wire::expected_accept();
    pump(
        ep,
        &mut socks,
        Duration::from_secs(60),
        |s| s.welcomed,
        &accept,
    )?;
    let missing = socks.iter().filter(|s| !s.welcomed).count();
    if missing > 0 {
        return Err(FanoutError::Unwelcomed(missing, socks.len()));
    }
    Ok(socks)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn main(args: &FanoutArgs) -> Result<(), FanoutError> {
    let node = node::parse(&args.url)?;
    sys::raise_fd_limit();
    let ep = Epoll::new()?;
    let mut socks = open(&node, &ep, args)?;
    let accept = wire::expected_accept();
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
        let last = pump(
            &ep,
            &mut socks,
            Duration::from_secs(30),
            |s| s.got > i,
            &accept,
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
    let (ms, ms_lo, ms_hi) = median(shots.iter().map(|s| s.last_receipt_ms).collect());
    let (cpu, cpu_lo, cpu_hi) = median(shots.iter().map(|s| s.cpu_us_per_delivery).collect());
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
