//! Sockets that one epoll loop of the bench's own measurements holds
//! (`deflate`, `fanout`): opened with an upgrade, read edge-triggered, each
//! complete frame shown to the caller, which says whether it counts.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use shardcast_kit::wire::{self, RawFrame};

use crate::epoll::Epoll;
use crate::scale::node::Node;

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the server answered an upgrade wrongly: {0}")]
    Upgrade(String),
    /// The caller's own verdict on an upgrade's answer.
    #[error("{0}")]
    Refused(&'static str),
}

/// One socket: what it has read but not parsed, and what it got.
pub struct Held {
    tcp: TcpStream,
    buf: Vec<u8>,
    upgraded: bool,
    pub welcomed: bool,
    /// Frames after the welcome that counted, and their bytes on the wire.
    pub got: usize,
    pub bytes: usize,
}

/// Opens `n` sockets on `path` (`extra`: more request header lines, each
/// ending in CRLF), registered with `ep` by index; no wait.
pub fn open(node: &Node, ep: &Epoll, path: &str, extra: &str, n: usize) -> io::Result<Vec<Held>> {
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let tcp = TcpStream::connect(node.addr)?;
        tcp.set_nodelay(true)?;
        let mut req = Vec::new();
        wire::upgrade_request_with(&mut req, &node.authority, path, None, extra);
        (&tcp).write_all(&req)?;
        tcp.set_nonblocking(true)?;
        ep.add_input(tcp.as_raw_fd(), i as u64)?;
        socks.push(Held {
            tcp,
            buf: Vec::new(),
            upgraded: false,
            welcomed: false,
            got: 0,
            bytes: 0,
        });
    }
    Ok(socks)
}

/// How a caller reads its sockets: `head` sees the upgrade's answer head
/// (lower-cased) once, `counts` each frame after the welcome.
pub struct Reading<'a> {
    pub accept: &'a str,
    pub head: &'a dyn Fn(&str) -> Result<(), HeldError>,
    pub counts: &'a dyn Fn(&RawFrame) -> bool,
}

impl Held {
    /// Takes everything the socket has (edge-triggered) and goes through
    /// the complete frames.
    pub fn read_all(&mut self, how: &Reading<'_>) -> Result<(), HeldError> {
        let mut chunk = [0u8; 16384];
        loop {
            match self.tcp.read(&mut chunk) {
                Ok(0) => return Err(HeldError::Upgrade("the server closed a socket".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if !self.upgraded {
            let Some(head) = wire::parse_upgrade(&self.buf, how.accept)
                .map_err(|e| HeldError::Upgrade(e.to_string()))?
            else {
                return Ok(());
            };
            (how.head)(&String::from_utf8_lossy(&self.buf[..head]).to_ascii_lowercase())?;
            self.buf.drain(..head);
            self.upgraded = true;
        }
        let mut used = 0;
        while let Some((f, n)) =
            wire::raw_frame(&self.buf[used..]).map_err(|e| HeldError::Upgrade(e.to_string()))?
        {
            if !self.welcomed {
                self.welcomed = true;
            } else if (how.counts)(&f) {
                self.got += 1;
                self.bytes += n;
            }
            used += n;
        }
        self.buf.drain(..used);
        Ok(())
    }
}

/// Reads what is ready until `done` holds for every socket, or `limit`;
/// returns when the last socket came to hold it.
pub fn pump(
    ep: &Epoll,
    socks: &mut [Held],
    limit: Duration,
    done: impl Fn(&Held) -> bool,
    how: &Reading<'_>,
) -> Result<Instant, HeldError> {
    let deadline = Instant::now() + limit;
    let mut events: Vec<libc::epoll_event> = Vec::with_capacity(1024);
    let mut left = socks.iter().filter(|s| !done(s)).count();
    let mut last = Instant::now();
    while left > 0 && Instant::now() < deadline {
        ep.wait(&mut events, Some(50_000_000))?;
        for ev in &events {
            let s = &mut socks[ev.u64 as usize];
            let before = done(s);
            s.read_all(how)?;
            if !before && done(s) {
                left -= 1;
                last = Instant::now();
            }
        }
    }
    Ok(last)
}

/// Median, min and max.
pub fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
