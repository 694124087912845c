//! `shardcast-bench deflate`: what permessage-deflate costs and saves on
//! broadcasts, measured against one running server started with
//! `--permessage-deflate true`. Each round holds N sockets that did not offer
//! compression, publishes B chat-sized broadcasts and waits for every socket
//! to get each; then the same with N sockets that offered it. Per phase: the
//! bytes each delivery took on the wire (frame head and payload, as read)
//! and the server's CPU per delivery (from /proc, over the phase's
//! broadcasts). The two phases of a round run back to back on the same
//! server, so their ratio is a same-run figure; the summary gives medians
//! and min-max over the rounds.

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
pub struct DeflateArgs {
    /// The server, http://HOST:PORT, run with --permessage-deflate true.
    #[arg(long)]
    pub url: String,
    /// Its pid, for its CPU time.
    #[arg(long)]
    pub server_pid: u32,
    /// Sockets per phase.
    #[arg(long, default_value_t = 2000)]
    pub sockets: usize,
    /// Broadcasts per phase.
    #[arg(long, default_value_t = 50)]
    pub broadcasts: usize,
    /// Rounds (each: a phase without compression, then one with it).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// A chat message as an app would broadcast it: a JSON object as text.
fn message(i: usize) -> String {
    serde_json::json!({
        "type": "message",
        "room": "general",
        "user": { "id": 4821, "name": "Ana Lima" },
        "text": format!("Deploy {i} is out: the new search is live for everyone, tell me if anything looks off"),
        "sent_at": "2026-12-07T10:15:00Z",
    })
    .to_string()
}

#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub bytes_per_delivery: f64,
    pub cpu_us_per_delivery: f64,
}

/// One socket of a phase.
struct Sock {
    tcp: TcpStream,
    buf: Vec<u8>,
    upgraded: bool,
    welcomed: bool,
    /// Broadcast frames received, and their bytes on the wire.
    got: usize,
    bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DeflateError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("node: {0}")]
    Node(#[from] node::NodeError),
    #[error("a broadcast was refused: {0}")]
    Post(#[from] http::PostError),
    #[error("the server answered the upgrade wrongly: {0}")]
    Upgrade(String),
    #[error("{0} of {1} sockets did not get broadcast {2} within 30 s")]
    Missing(usize, usize, usize),
    #[error("the sockets that offered compression were not given it (is the server run with --permessage-deflate true?)")]
    NotAgreed,
}

/// Opens `n` sockets, offering compression when `offer`, and waits for
/// every welcome.
fn open(node: &Node, ep: &Epoll, n: usize, offer: bool) -> Result<Vec<Sock>, DeflateError> {
    let ext = if offer {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let tcp = TcpStream::connect(node.addr)?;
        tcp.set_nodelay(true)?;
        let mut req = Vec::new();
        wire::upgrade_request_with(&mut req, &node.authority, "/ws/chat/", None, ext);
        (&tcp).write_all(&req)?;
        tcp.set_nonblocking(true)?;
        ep.add_input(tcp.as_raw_fd(), i as u64)?;
        socks.push(Sock {
            tcp,
            buf: Vec::new(),
            upgraded: false,
            welcomed: false,
            got: 0,
            bytes: 0,
        });
    }
    let accept = wire::expected_accept();
    pump(
        ep,
        &mut socks,
        Duration::from_secs(30),
        |s| s.welcomed,
        &accept,
        offer,
    )?;
    Ok(socks)
}

/// Reads what is ready until `done` holds for every socket, or `limit`.
fn pump(
    ep: &Epoll,
    socks: &mut [Sock],
    limit: Duration,
    done: impl Fn(&Sock) -> bool,
    accept: &str,
    offer: bool,
) -> Result<(), DeflateError> {
    let deadline = Instant::now() + limit;
    let mut events: Vec<libc::epoll_event> = Vec::with_capacity(256);
    while !socks.iter().all(&done) {
        if Instant::now() > deadline {
            return Ok(());
        }
        ep.wait(&mut events, Some(50_000_000))?;
        for ev in &events {
            let s = &mut socks[ev.u64 as usize];
            read_all(s, accept, offer)?;
        }
    }
    Ok(())
}

/// Takes everything the socket has (edge-triggered), counting broadcast
/// frames and their bytes; heartbeats and the welcome are not counted.
fn read_all(s: &mut Sock, accept: &str, offer: bool) -> Result<(), DeflateError> {
    let mut chunk = [0u8; 16384];
    loop {
        match s.tcp.read(&mut chunk) {
            Ok(0) => return Err(DeflateError::Upgrade("the server closed a socket".into())),
            Ok(n) => s.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    if !s.upgraded {
        let Some(head) = wire::parse_upgrade(&s.buf, accept)
            .map_err(|e| DeflateError::Upgrade(e.to_string()))?
        else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&s.buf[..head]).to_ascii_lowercase();
        if offer != text.contains("permessage-deflate") {
            return Err(DeflateError::NotAgreed);
        }
        s.buf.drain(..head);
        s.upgraded = true;
    }
    let mut used = 0;
    while let Some((f, n)) =
        wire::raw_frame(&s.buf[used..]).map_err(|e| DeflateError::Upgrade(e.to_string()))?
    {
        let heartbeat = f.first & 0x40 == 0 && f.payload.starts_with(b"{\"ts\"");
        if !s.welcomed {
            s.welcomed = true;
        } else if !heartbeat {
            s.got += 1;
            s.bytes += n;
        }
        used += n;
    }
    s.buf.drain(..used);
    Ok(())
}

/// One phase: `n` sockets (offering compression or not), `b` broadcasts.
fn phase(args: &DeflateArgs, node: &Node, offer: bool, base: usize) -> Result<Phase, DeflateError> {
    let ep = Epoll::new()?;
    let mut socks = open(node, &ep, args.sockets, offer)?;
    let accept = wire::expected_accept();
    let before = sys::sample(args.server_pid)?.cpu_ns;
    for i in 0..args.broadcasts {
        http::broadcast(node, None, |_| message(base + i), Duration::from_secs(10))?;
        pump(
            &ep,
            &mut socks,
            Duration::from_secs(30),
            |s| s.got > i,
            &accept,
            offer,
        )?;
        let missing = socks.iter().filter(|s| s.got <= i).count();
        if missing > 0 {
            return Err(DeflateError::Missing(missing, socks.len(), i));
        }
    }
    let cpu = sys::sample(args.server_pid)?.cpu_ns - before;
    let deliveries: usize = socks.iter().map(|s| s.got).sum();
    let bytes: usize = socks.iter().map(|s| s.bytes).sum();
    Ok(Phase {
        bytes_per_delivery: bytes as f64 / deliveries as f64,
        cpu_us_per_delivery: cpu as f64 / 1e3 / deliveries as f64,
    })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn main(args: &DeflateArgs) -> Result<(), DeflateError> {
    let node = node::parse(&args.url)?;
    sys::raise_fd_limit();
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let base = r * args.broadcasts * 2;
        let plain = phase(args, &node, false, base)?;
        let zipped = phase(args, &node, true, base + args.broadcasts)?;
        eprintln!(
            "round {}: without: {:.1} B, {:.2} µs per delivery; with: {:.1} B, {:.2} µs",
            r + 1,
            plain.bytes_per_delivery,
            plain.cpu_us_per_delivery,
            zipped.bytes_per_delivery,
            zipped.cpu_us_per_delivery
        );
        rounds.push((plain, zipped));
    }
    let col = |f: &dyn Fn(&(Phase, Phase)) -> f64| median(rounds.iter().map(f).collect());
    let show = |name: &str, (m, lo, hi): (f64, f64, f64), unit: &str| {
        println!("{name}: {m:.2}{unit} ({lo:.2}-{hi:.2})");
    };
    println!(
        "deflate: {} sockets, {} broadcasts of {} bytes per phase, {} rounds (median, min-max):",
        args.sockets,
        args.broadcasts,
        message(0).len(),
        args.rounds
    );
    show(
        "  bytes on the wire per delivery, without",
        col(&|r| r.0.bytes_per_delivery),
        " B",
    );
    show(
        "  bytes on the wire per delivery, with",
        col(&|r| r.1.bytes_per_delivery),
        " B",
    );
    show(
        "  with / without, bytes",
        col(&|r| r.1.bytes_per_delivery / r.0.bytes_per_delivery),
        "x",
    );
    show(
        "  server CPU per delivery, without",
        col(&|r| r.0.cpu_us_per_delivery),
        " µs",
    );
    show(
        "  server CPU per delivery, with",
        col(&|r| r.1.cpu_us_per_delivery),
        " µs",
    );
    show(
        "  with / without, CPU",
        col(&|r| r.1.cpu_us_per_delivery / r.0.cpu_us_per_delivery),
        "x",
    );
    Ok(())
}
