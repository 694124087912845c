//! The load engine: every client socket of one worker process on one thread
//! and one edge-triggered epoll set, non-blocking, with one receive buffer
//! for all of them and no allocation per message. It owns the transport
//! (connect, upgrade, frames, pings, writes that the socket could not take
//! yet, per-socket timers, command lines on stdin) and hands what the server
//! said to a [`Handler`], which owns what a socket is doing and what it
//! expects. The single-node runs ([`crate::worker`]) and the scale run
//! ([`crate::scale::worker`]) are two handlers on this one engine.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

use crate::epoll::{self, Epoll};
use crate::reply::{self, Reply};
use crate::stats::Fault;
use crate::sys::now_ns;
use crate::wire::{self, Frame};

const STDIN: u64 = u64::MAX;
/// One read's worth for every socket: the loop's one receive buffer.
const RECV: usize = 64 << 10;
/// Longest command line taken from stdin.
const LINE_MAX: usize = 64 << 10;

/// Why a connection is gone. The engine has closed the socket already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// connect() failed, or the socket could not be made.
    Connect(&'static str),
    /// The upgrade was answered with this status instead of 101.
    Refused(u16),
    /// The upgrade answer was not HTTP, or its accept key was wrong.
    Handshake,
    /// A frame RFC 6455 or the contract does not allow.
    BadFrame(&'static str),
    /// The peer ended the TCP connection (FIN).
    Eof,
    /// A read or a write failed: reset, broken pipe.
    Reset(&'static str),
}

impl End {
    /// The fault this end is when nothing asked for it.
    pub fn fault(self) -> (Fault, &'static str) {
        match self {
            End::Connect(why) => (Fault::Connect, why),
            End::Refused(503) => (Fault::Refused, "upgrade answered 503"),
            End::Refused(_) => (Fault::Refused, "upgrade answered non-101"),
            End::Handshake => (Fault::Handshake, "bad upgrade answer"),
            End::BadFrame(why) => (Fault::BadFrame, why),
            End::Eof => (Fault::UnexpectedClose, "connection ended without a Close"),
            End::Reset(why) => (Fault::UnexpectedClose, why),
        }
    }
}

/// Where a socket's transport is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Idle,
    Connecting,
    Upgrading,
    /// Upgraded: frames flow.
    Open,
}

struct Link {
    sock: Option<Socket>,
    wire: Wire,
    /// Grows with every connection, so an event or a timer of an earlier
    /// connection of the same slot is told apart.
    gen: u32,
    mask: [u8; 4],
    /// Input not yet parsed: an unfinished upgrade answer or frame.
    inbuf: Vec<u8>,
    /// Output the socket has not taken yet (the upgrade request waits here
    /// for the connect to finish).
    pending: Vec<u8>,
    /// The socket's timer; `u64::MAX` when none is set.
    due: u64,
}

/// The transport side the handler drives: it opens, writes, closes and sets
/// timers; the engine reports back through [`Handler`].
pub struct Io {
    ep: Epoll,
    links: Vec<Link>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    out: Vec<u8>,
    accept: String,
    /// Sockets whose write failed inside a handler call, reported once it returns.
    broken: Vec<u32>,
    /// The loop's clock, read once per wake-up.
    pub now: u64,
}

/// What a worker does with its sockets. Every call may drive `io`.
pub trait Handler {
    /// A text frame from the server, read under the contract.
    fn on_text(&mut self, io: &mut Io, i: usize, reply: Reply<'_>);
    /// The server's Close frame (its status code, if any). The connection
    /// stays up until the server ends it.
    fn on_close(&mut self, io: &mut Io, i: usize, code: Option<u16>);
    /// The connection is gone; the socket is already closed.
    fn on_end(&mut self, io: &mut Io, i: usize, end: End);
    /// The timer set with [`Io::schedule`] is due.
    fn on_due(&mut self, io: &mut Io, i: usize);
    /// A command line from the coordinator; `None` once stdin is closed.
    fn on_line(&mut self, io: &mut Io, line: Option<&[u8]>);
    /// Runs on every pass of the loop: schedules that are not per socket,
    /// ticks, sweeps. Returns when it next needs to run (monotonic ns), or
    /// `None` once the worker is finished.
    fn poll(&mut self, io: &mut Io) -> Option<u64>;
}

impl Io {
    /// `masks` gives each socket's frame mask (one per socket, for its life).
    pub fn new(masks: impl Iterator<Item = [u8; 4]>) -> io::Result<Io> {
        let links = masks
            .map(|mask| Link {
                sock: None,
                wire: Wire::Idle,
                gen: 0,
                mask,
                inbuf: Vec::new(),
                pending: Vec::new(),
                due: u64::MAX,
            })
            .collect();
        Ok(Io {
            ep: Epoll::new()?,
            links,
            heap: BinaryHeap::new(),
            out: Vec::with_capacity(64 << 10),
            accept: wire::expected_accept(),
            broken: Vec::new(),
            now: now_ns(),
        })
    }

    /// Starts connecting socket `i` (closing whatever it held); the upgrade
    /// request for `path` goes out once the connect is done. An error is
    /// a static reason for a [`End::Connect`] fault.
    pub fn connect(
        &mut self,
        i: usize,
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
        host: &str,
        path: &str,
        session: Option<&str>,
    ) -> Result<(), &'static str> {
        self.close(i);
        let sock = open_socket(addr, source).map_err(|e| os_reason(&e))?;
        let l = &mut self.links[i];
        let token = i as u64 | (u64::from(l.gen) << 32);
        self.ep
            .add(sock.as_raw_fd(), token)
            .map_err(|e| os_reason(&e))?;
        wire::upgrade_request(&mut l.pending, host, path, session);
        l.sock = Some(sock);
        l.wire = Wire::Connecting;
        Ok(())
    }

    /// Sends `k` text frames of `payload` in one write.
    pub fn send_text(&mut self, i: usize, payload: &[u8], k: u32) {
        self.out.clear();
        for _ in 0..k {
            wire::text_frame(&mut self.out, payload, self.links[i].mask);
        }
        self.write_out(i);
    }

    pub fn send_close(&mut self, i: usize, code: u16) {
        self.out.clear();
        wire::close_frame(&mut self.out, code, self.links[i].mask);
        self.write_out(i);
    }

    /// Closes socket `i` (FIN); nothing more is reported for this connection.
    pub fn close(&mut self, i: usize) {
        let l = &mut self.links[i];
        if l.sock.take().is_some() {
            l.gen = l.gen.wrapping_add(1);
        }
        l.wire = Wire::Idle;
        l.inbuf = Vec::new();
        l.pending = Vec::new();
    }

    /// Drops socket `i` as a network blip would: RST, no Close, and no
    /// TIME_WAIT left behind.
    pub fn reset(&mut self, i: usize) {
        if let Some(s) = self.links[i].sock.as_ref() {
            let _ = s.set_linger(Some(std::time::Duration::ZERO));
        }
        self.close(i);
    }

    /// Sets socket `i`'s one timer (replacing any earlier one).
    pub fn schedule(&mut self, i: usize, at: u64) {
        self.links[i].due = at;
        self.heap.push(Reverse((at, i as u32)));
    }

    pub fn unschedule(&mut self, i: usize) {
        self.links[i].due = u64::MAX;
    }

    fn write_out(&mut self, i: usize) {
        let out = std::mem::take(&mut self.out);
        self.write(i, &out);
        self.out = out;
    }

    fn write(&mut self, i: usize, bytes: &[u8]) {
        let l = &mut self.links[i];
        let Some(sock) = l.sock.as_ref() else { return };
        if !l.pending.is_empty() || l.wire == Wire::Connecting {
            l.pending.extend_from_slice(bytes);
            return;
        }
        let mut off = 0;
        while off < bytes.len() {
            match sock.send(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.pending.extend_from_slice(&bytes[off..]);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(i);
                    self.broken.push(i as u32);
                    return;
                }
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let pending = std::mem::take(&mut self.links[i].pending);
        self.write(i, &pending);
    }
}

/// Runs the loop until the handler's `poll` says the worker is finished.
pub fn run<H: Handler>(io: &mut Io, h: &mut H) -> io::Result<()> {
    set_nonblocking(0)?;
    io.ep.add_input(0, STDIN)?;
    let mut events = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; RECV];
    let mut stdin_buf = Vec::new();
    loop {
        io.now = now_ns();
        while let Some(&Reverse((due, i))) = io.heap.peek() {
            if due > io.now {
                break;
            }
            io.heap.pop();
            let i = i as usize;
            if io.links[i].due == due {
                io.links[i].due = u64::MAX;
                h.on_due(io, i);
                report_broken(io, h);
            }
        }
        let Some(next) = h.poll(io) else {
            return Ok(());
        };
        report_broken(io, h);
        let next = io.heap.peek().map_or(next, |Reverse((t, _))| next.min(*t));
        io.ep.wait(&mut events, Some(next.saturating_sub(io.now)))?;
        io.now = now_ns();
        for ev in events.iter() {
            let (token, bits) = (ev.u64, ev.events);
            if token == STDIN {
                read_lines(io, h, &mut stdin_buf);
                continue;
            }
            let i = (token & 0xffff_ffff) as usize;
            if i < io.links.len() && io.links[i].gen == (token >> 32) as u32 {
                on_event(io, h, i, bits, &mut scratch);
            }
            report_broken(io, h);
        }
    }
}

fn report_broken<H: Handler>(io: &mut Io, h: &mut H) {
    while let Some(i) = io.broken.pop() {
        h.on_end(io, i as usize, End::Reset("write failed: connection reset"));
    }
}

fn end<H: Handler>(io: &mut Io, h: &mut H, i: usize, e: End) {
    io.close(i);
    h.on_end(io, i, e);
}

fn on_event<H: Handler>(io: &mut Io, h: &mut H, i: usize, bits: u32, scratch: &mut [u8]) {
    if io.links[i].wire == Wire::Connecting && bits & (epoll::OUT | epoll::ERR | epoll::HUP) != 0 {
        match io.links[i].sock.as_ref().map(|s| s.take_error()) {
            Some(Ok(None)) => io.links[i].wire = Wire::Upgrading,
            Some(Ok(Some(e))) | Some(Err(e)) => return end(io, h, i, End::Connect(os_reason(&e))),
            None => return,
        }
    }
    if bits & epoll::OUT != 0 && !io.links[i].pending.is_empty() {
        io.flush(i);
    }
    if bits & (epoll::IN | epoll::HUP | epoll::ERR) != 0 {
        on_readable(io, h, i, bits & epoll::HUP != 0, scratch);
    }
}

fn on_readable<H: Handler>(io: &mut Io, h: &mut H, i: usize, hup: bool, scratch: &mut [u8]) {
    let gen = io.links[i].gen;
    loop {
        let l = &io.links[i];
        if l.gen != gen || !matches!(l.wire, Wire::Upgrading | Wire::Open) {
            return;
        }
        let Some(sock) = l.sock.as_ref() else { return };
        // SAFETY: u8 has no invalid bit patterns; recv only writes into it.
        let buf = unsafe { &mut *(scratch as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        match sock.recv(buf) {
            Ok(0) => return end(io, h, i, End::Eof),
            Ok(n) => {
                let mut inbuf = std::mem::take(&mut io.links[i].inbuf);
                if inbuf.is_empty() {
                    let used = on_bytes(io, h, i, gen, &scratch[..n]);
                    inbuf.extend_from_slice(&scratch[used..n]);
                } else {
                    inbuf.extend_from_slice(&scratch[..n]);
                    let used = on_bytes(io, h, i, gen, &inbuf);
                    inbuf.drain(..used);
                }
                if io.links[i].gen == gen {
                    io.links[i].inbuf = inbuf;
                }
                if n < scratch.len() && !hup {
                    // A short read drained the socket, and with edge
                    // triggers the next event says when there is more. A
                    // FIN that came before this event has no event of its
                    // own, so then reading goes on until it shows.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return end(io, h, i, End::Reset(os_reason(&e))),
        }
    }
}

/// Parses what arrived; returns the bytes used (the rest is incomplete).
fn on_bytes<H: Handler>(io: &mut Io, h: &mut H, i: usize, gen: u32, data: &[u8]) -> usize {
    let mut used = 0;
    if io.links[i].wire == Wire::Upgrading {
        match wire::parse_upgrade(data, &io.accept) {
            Ok(None) => return 0,
            Ok(Some(n)) => {
                used = n;
                io.links[i].wire = Wire::Open;
            }
            Err(wire::WireError::Status(code)) => {
                end(io, h, i, End::Refused(code));
                return data.len();
            }
            Err(_) => {
                end(io, h, i, End::Handshake);
                return data.len();
            }
        }
    }
    while io.links[i].gen == gen && io.links[i].wire == Wire::Open {
        match wire::next_frame(&data[used..]) {
            Ok(Some((frame, n))) => {
                used += n;
                match frame {
                    Frame::Text(text) => h.on_text(io, i, reply::parse(text)),
                    Frame::Binary => {
                        end(io, h, i, End::BadFrame("binary frame from the server"));
                    }
                    Frame::Ping(p) => {
                        io.out.clear();
                        wire::pong_frame(&mut io.out, p, io.links[i].mask);
                        io.write_out(i);
                    }
                    Frame::Pong => {}
                    Frame::Close(code) => h.on_close(io, i, code),
                }
            }
            Ok(None) => break,
            Err(_) => {
                end(io, h, i, End::BadFrame("frame breaks RFC 6455"));
                return data.len();
            }
        }
    }
    used
}

fn read_lines<H: Handler>(io: &mut Io, h: &mut H, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    loop {
        match io::stdin().lock().read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        h.on_line(io, Some(line.trim_ascii()));
        report_broken(io, h);
    }
    if buf.len() > LINE_MAX {
        buf.clear();
    }
    if closed {
        h.on_line(io, None);
        report_broken(io, h);
    }
}

fn open_socket(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    sock.set_nodelay(true)?;
    if let Some(src) = source {
        // Ports are then picked at connect() per 4-tuple, not at bind()
        // per address, so each source gets the whole ephemeral range.
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(src.into(), 0).into())?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock)
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on an fd we were given; flags are read then extended.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Fault details are static strings; an OS error picks the closest one.
pub fn os_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused",
        Some(libc::EADDRNOTAVAIL) => "no free source port (add --sources)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors (add --procs)",
        Some(libc::ECONNRESET) => "connection reset",
        Some(libc::EPIPE) => "broken pipe",
        Some(libc::ETIMEDOUT) => "connect timed out",
        _ => "connect failed",
    }
}
