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

use std::io;
use std::time::Duration;

use shardcast_kit::wire::{self, RawFrame};

use crate::epoll::Epoll;
use crate::held::{self, HeldError, Reading};
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

const NOT_AGREED: &str = "the sockets that offered compression were not given it \
     (is the server run with --permessage-deflate true?)";

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

#[derive(Debug, thiserror::Error)]
pub enum DeflateError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("node: {0}")]
    Node(#[from] node::NodeError),
    #[error("a broadcast was refused: {0}")]
    Post(#[from] http::PostError),
    #[error(transparent)]
    Held(#[from] HeldError),
    #[error("{0} of {1} sockets did not get broadcast {2} within 30 s")]
    Missing(usize, usize, usize),
}

/// One phase: `n` sockets (offering compression or not), `b` broadcasts.
fn phase(args: &DeflateArgs, node: &Node, offer: bool, base: usize) -> Result<Phase, DeflateError> {
    let ep = Epoll::new()?;
    let ext = if offer {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let mut socks = held::open(node, &ep, "/ws/chat/", ext, args.sockets)?;
    let accept = wire::expected_accept();
    let head = |text: &str| {
        if offer == text.contains("permessage-deflate") {
            Ok(())
        } else {
            Err(HeldError::Refused(NOT_AGREED))
        }
    };
    // Broadcasts count; heartbeats (uncompressed `{"ts"…`) do not.
    let counts = |f: &RawFrame| !(f.first & 0x40 == 0 && f.payload.starts_with(b"{\"ts\""));
    let how = Reading {
        accept: &accept,
        head: &head,
        counts: &counts,
    };
    held::pump(
        &ep,
        &mut socks,
        Duration::from_secs(30),
        |s| s.welcomed,
        &how,
    )?;
    let before = sys::sample(args.server_pid)?.cpu_ns;
    for i in 0..args.broadcasts {
        http::broadcast(node, None, |_| message(base + i), Duration::from_secs(10))?;
        held::pump(
            &ep,
            &mut socks,
            Duration::from_secs(30),
            |s| s.got > i,
            &how,
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
    let col = |f: &dyn Fn(&(Phase, Phase)) -> f64| held::median(rounds.iter().map(f).collect());
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
