//! One socket's whole life as one task: it follows the worker's steps
//! (connect, tour the nodes, closed-loop traffic through a node's death,
//! close), checks every answer, and keeps reading in between so pings are
//! answered and broadcasts are stamped the moment they arrive.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::check::{self, Resume};
use super::layout::room_name;
use super::tag::{self, Kind};
use super::worker::{Step, StepKind, Wk};
use crate::reply::{self, Reply};
use crate::stats::Fault;
use crate::sys::now_ns;

type Ws = WebSocketStream<TcpStream>;

/// Longest single reconnect attempt while a node's sockets flood the others.
const ATTEMPT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// What a socket sends: the contract counts frames, not their text.
const PAYLOAD: &str = "scale";

/// Why a socket stopped: the fault to count and a word for stderr.
#[derive(Debug, Clone, Copy)]
struct Fail(Fault, &'static str);

struct Welcome {
    session: String,
    count: u64,
    resumed: bool,
    offset: Option<Offset>,
    recovered: Option<bool>,
}

/// A broadcast offset, `ms-seq`, as numbers, so the newest is told apart.
type Offset = (u64, u64);

fn parse_offset(s: &str) -> Option<Offset> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Who a socket is and which broadcasts it has seen; apart from the stream
/// so both can be borrowed at once.
struct Marks {
    i: u32,
    room: u32,
    /// One bit per fanout broadcast.
    fanout: Vec<u64>,
    room_seen: bool,
    barrier_seen: bool,
    /// The stream broadcast this socket must get next.
    stream_next: u32,
    /// The newest broadcast offset it has: its `since` after a node dies.
    offset: Option<Offset>,
}

impl Marks {
    fn saw(&mut self, offset: Option<Offset>) {
        if offset > self.offset {
            self.offset = offset;
        }
    }
}

struct Sock {
    /// The node the layout gives it, whatever it is connected to now.
    node: u32,
    session: Option<String>,
    /// The last count the server acknowledged.
    acked: u64,
    ws: Option<Ws>,
    marks: Marks,
    /// Holds a session and counts in the worker's `live`.
    alive: bool,
    /// A victim that resumed on a survivor.
    moved: bool,
    /// The step generation this socket last counted itself done for.
    counted: u64,
}

/// What one read meant, once heartbeats, pings and broadcasts are dealt with.
enum Got {
    Nothing,
    Count(u64),
    Bye,
    Ended(&'static str),
    Bad(&'static str),
}

pub async fn run(wk: Rc<Wk>, i: u32) {
    let mut s = Sock {
        node: wk.layout.node_of(i),
        session: None,
        acked: 0,
        ws: None,
        marks: Marks {
            i,
            room: wk.layout.room_of(i),
            fanout: vec![0; (wk.plan.broadcasts as usize).div_ceil(64)],
            room_seen: false,
            barrier_seen: false,
            stream_next: 0,
            offset: None,
        },
        alive: false,
        moved: false,
        counted: 0,
    };
    let mut rx = wk.steps.subscribe();
    loop {
        let step = *rx.borrow_and_update();
        let r = match step.kind {
            StepKind::Hold | StepKind::Quiet => Ok(()),
            StepKind::Connect => connect(&wk, &mut s).await,
            StepKind::Resume if s.node == 0 => tour(&wk, &mut s).await,
            StepKind::Resume => Ok(()),
            StepKind::Traffic { interval, kill } => {
                traffic(&wk, &mut s, &mut rx, interval, kill).await
            }
            StepKind::Close => {
                let deadline = Instant::now() + wk.timeout;
                match close_clean(&wk, &mut s, deadline).await {
                    Ok(()) => {
                        finish(&wk, &mut s, step);
                        let mut st = wk.st.borrow_mut();
                        st.closed += 1;
                        leave(&mut st, &mut s);
                    }
                    Err(f) => {
                        if f.0 == Fault::ByeMismatch {
                            wk.st.borrow_mut().bye_mismatches += 1;
                        }
                        die(&wk, &mut s, f);
                    }
                }
                return;
            }
        };
        if let Err(f) = r {
            die(&wk, &mut s, f);
            return;
        }
        finish(&wk, &mut s, step);
        // Traffic ends on a step change it has already taken in: go straight
        // to the new step instead of waiting for another.
        if matches!(step.kind, StepKind::Traffic { .. }) {
            continue;
        }
        if let Err(f) = hold(&wk, &mut s, &mut rx).await {
            die(&wk, &mut s, f);
            return;
        }
    }
}

/// Whether a socket must report in for `kind` before the worker answers;
/// mirrors the targets the controller counts.
fn participates(kind: StepKind, s: &Sock) -> bool {
    match kind {
        StepKind::Connect | StepKind::Quiet | StepKind::Close => true,
        StepKind::Resume => s.node == 0,
        StepKind::Hold | StepKind::Traffic { .. } => false,
    }
}

fn finish(wk: &Wk, s: &mut Sock, step: Step) {
    if s.counted != step.gen && participates(step.kind, s) {
        s.counted = step.gen;
        wk.st.borrow_mut().done += 1;
    }
}

fn leave(st: &mut super::worker::State, s: &mut Sock) {
    if s.alive {
        st.live -= 1;
        st.live_by_node[s.node as usize] -= 1;
    }
    s.alive = false;
    s.ws = None;
}

/// Counts the fault and retires the socket. It reports in for the current
/// step, which may be newer than the one it was working on: the controller
/// counted it in that step's target while it was alive.
fn die(wk: &Wk, s: &mut Sock, f: Fail) {
    let step = wk.step();
    let mut st = wk.st.borrow_mut();
    st.fault(f.0, s.marks.i, f.1);
    let traffic = matches!(step.kind, StepKind::Traffic { .. } | StepKind::Quiet);
    if traffic && s.alive && st.kill == Some(s.node) && !s.moved {
        st.kill_settled += 1;
    }
    leave(&mut st, s);
    if s.counted != step.gen && participates(step.kind, s) {
        s.counted = step.gen;
        st.done += 1;
    }
}

/// Reads (and so answers pings) until the step changes.
async fn hold(wk: &Wk, s: &mut Sock, rx: &mut watch::Receiver<Step>) -> Result<(), Fail> {
    loop {
        let Some(ws) = s.ws.as_mut() else {
            return match rx.changed().await {
                Ok(()) => Ok(()),
                Err(_) => Err(Fail(Fault::UnexpectedClose, "the worker is stopping")),
            };
        };
        tokio::select! {
            biased;
            _ = rx.changed() => return Ok(()),
            m = ws.next() => match take(wk, &mut s.marks, m) {
                Got::Nothing => {}
                Got::Ended(why) => return Err(Fail(Fault::UnexpectedClose, why)),
                Got::Bad(why) => return Err(Fail(Fault::BadFrame, why)),
                Got::Count(_) | Got::Bye => {
                    return Err(Fail(Fault::BadFrame, "a reply to nothing"))
                }
            },
        }
    }
}

async fn connect(wk: &Wk, s: &mut Sock) -> Result<(), Fail> {
    let deadline = Instant::now() + wk.timeout;
    let permit = timeout_at(deadline, wk.gate.acquire())
        .await
        .map_err(|_| Fail(Fault::ConnectTimeout, "no connect slot in time"))?;
    let t0 = now_ns();
    let (ws, w) = open(wk, s.node, None, s.marks.room, None, deadline).await?;
    drop(permit);
    s.marks.saw(w.offset);
    let took = now_ns() - t0;
    if w.resumed || w.count != 0 {
        return Err(Fail(
            Fault::WelcomeMismatch,
            "a new session's welcome is not resumed:false, count 0",
        ));
    }
    s.session = Some(w.session);
    s.ws = Some(ws);
    s.alive = true;
    {
        let mut st = wk.st.borrow_mut();
        st.live += 1;
        st.live_by_node[s.node as usize] += 1;
        st.connect.saturating_record(took.max(1));
    }
    send(s, deadline).await?;
    expect_count(wk, s, 1, deadline).await?;
    s.acked = 1;
    let mut st = wk.st.borrow_mut();
    st.connected += 1;
    st.last_open_ns = st.last_open_ns.max(now_ns());
    Ok(())
}

/// Connects to `node`, upgrades and reads the welcome.
async fn open(
    wk: &Wk,
    node: u32,
    session: Option<&str>,
    room: u32,
    since: Option<Offset>,
    deadline: Instant,
) -> Result<(Ws, Welcome), Fail> {
    let n = &wk.plan.nodes[node as usize];
    let mut url = n.ws_url(session, &room_name(room));
    if let Some((ms, seq)) = since {
        url.push_str(&format!("&since={ms}-{seq}"));
    }
    let tcp = match timeout_at(deadline, TcpStream::connect(n.addr)).await {
        Err(_) => return Err(Fail(Fault::ConnectTimeout, "TCP connect")),
        Ok(Err(e)) => return Err(Fail(Fault::Connect, os_reason(&e))),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let upgrade = tokio_tungstenite::client_async_with_config(url, tcp, Some(wk.config));
    let mut ws = match timeout_at(deadline, upgrade).await {
        Err(_) => return Err(Fail(Fault::ConnectTimeout, "upgrade")),
        Ok(Err(WsError::Http(_))) => {
            return Err(Fail(Fault::Refused, "upgrade answered without 101"))
        }
        Ok(Err(WsError::Io(e))) => return Err(Fail(Fault::Connect, os_reason(&e))),
        Ok(Err(_)) => return Err(Fail(Fault::Handshake, "bad upgrade answer")),
        Ok(Ok((ws, _))) => ws,
    };
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Fail(Fault::ReplyTimeout, "no welcome"))?;
        match m {
            Some(Ok(Message::Text(t))) => match reply::parse(t.as_bytes()) {
                Reply::Welcome {
                    session,
                    count,
                    resumed,
                    offset,
                    recovered,
                } => {
                    return Ok((
                        ws,
                        Welcome {
                            session: String::from_utf8_lossy(&session).into_owned(),
                            count,
                            resumed,
                            offset: offset.and_then(parse_offset),
                            recovered,
                        },
                    ))
                }
                Reply::Heartbeat => {}
                _ => return Err(Fail(Fault::BadFrame, "the first frame is not a welcome")),
            },
            Some(Ok(Message::Binary(_))) => {
                return Err(Fail(Fault::BadFrame, "binary frame before the welcome"))
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                return Err(Fail(Fault::UnexpectedClose, "closed before the welcome"))
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn send(s: &mut Sock, deadline: Instant) -> Result<(), Fail> {
    let ws =
        s.ws.as_mut()
            .ok_or(Fail(Fault::UnexpectedClose, "no connection"))?;
    match timeout_at(deadline, ws.send(Message::text(PAYLOAD))).await {
        Err(_) => Err(Fail(Fault::ReplyTimeout, "send")),
        Ok(Err(_)) => Err(Fail(Fault::UnexpectedClose, "send failed")),
        Ok(Ok(())) => Ok(()),
    }
}

async fn expect_count(wk: &Wk, s: &mut Sock, want: u64, deadline: Instant) -> Result<(), Fail> {
    let ws =
        s.ws.as_mut()
            .ok_or(Fail(Fault::UnexpectedClose, "no connection"))?;
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Fail(Fault::ReplyTimeout, "no count"))?;
        match take(wk, &mut s.marks, m) {
            Got::Nothing => {}
            Got::Count(n) if n == want => return Ok(()),
            Got::Count(_) => {
                return Err(Fail(
                    Fault::CountMismatch,
                    "a count that is not the last one plus one",
                ))
            }
            Got::Bye => return Err(Fail(Fault::BadFrame, "a goodbye nobody asked for")),
            Got::Ended(why) => return Err(Fail(Fault::UnexpectedClose, why)),
            Got::Bad(why) => return Err(Fail(Fault::BadFrame, why)),
        }
    }
}

/// Close 1000, then the goodbye (its total must be the last count) and the
/// server's Close echo.
async fn close_clean(wk: &Wk, s: &mut Sock, deadline: Instant) -> Result<(), Fail> {
    let mut ws =
        s.ws.take()
            .ok_or(Fail(Fault::UnexpectedClose, "no connection to close"))?;
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    match timeout_at(deadline, ws.send(close)).await {
        Err(_) => return Err(Fail(Fault::CloseTimeout, "sending Close")),
        Ok(Err(_)) => return Err(Fail(Fault::UnexpectedClose, "gone before our Close")),
        Ok(Ok(())) => {}
    }
    let mut bye = None;
    loop {
        let m = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Fail(Fault::CloseTimeout, "no Close echo"))?;
        match m {
            // The handshake is complete; the TCP end is the server's business.
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(t))) => match reply::parse(t.as_bytes()) {
                Reply::Bye { total, .. } => bye = Some(total),
                Reply::Heartbeat => {}
                Reply::Broadcast { text, offset } => note(wk, &mut s.marks, &text, offset),
                _ => return Err(Fail(Fault::BadFrame, "unexpected text while closing")),
            },
            Some(Ok(Message::Binary(_))) => {
                return Err(Fail(Fault::BadFrame, "binary frame while closing"))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                return Err(Fail(Fault::UnexpectedClose, "ended without a Close echo"))
            }
        }
    }
    match bye {
        None => Err(Fail(Fault::ByeMismatch, "no goodbye before the Close echo")),
        Some(t) if t != s.acked => Err(Fail(
            Fault::ByeMismatch,
            "the goodbye's total is not the last count",
        )),
        Some(_) => Ok(()),
    }
}

/// A node-0 socket hops over every other node and back home, proving at
/// each stop that its count followed it.
async fn tour(wk: &Wk, s: &mut Sock) -> Result<(), Fail> {
    let deadline = Instant::now() + wk.timeout;
    let r = async {
        for hop in wk.layout.hops() {
            close_clean(wk, s, deadline).await?;
            let session = s.session.clone().unwrap_or_default();
            let (ws, w) = open(wk, hop, Some(&session), s.marks.room, None, deadline).await?;
            s.marks.saw(w.offset);
            if !w.resumed || w.count != s.acked {
                return Err(Fail(
                    Fault::WelcomeMismatch,
                    "a resumed welcome does not carry the goodbye's total",
                ));
            }
            s.ws = Some(ws);
            send(s, deadline).await?;
            expect_count(wk, s, s.acked + 1, deadline).await?;
            s.acked += 1;
            wk.st.borrow_mut().hops += 1;
        }
        Ok(())
    }
    .await;
    let mut st = wk.st.borrow_mut();
    match r {
        Ok(()) => {
            st.moved += 1;
            st.resume_last = st.resume_last.max(now_ns());
        }
        Err(Fail(Fault::WelcomeMismatch | Fault::CountMismatch | Fault::ByeMismatch, _)) => {
            st.resume_mismatches += 1
        }
        Err(_) => {}
    }
    r
}

/// Closed loop, one message per `interval`, until the step changes and the
/// last message is answered. A socket of the killed node resumes on a
/// survivor when its connection ends; anyone else losing theirs is a fault.
async fn traffic(
    wk: &Wk,
    s: &mut Sock,
    rx: &mut watch::Receiver<Step>,
    interval: Duration,
    kill: Option<u32>,
) -> Result<(), Fail> {
    let victim = kill == Some(s.node);
    let mut next = Instant::now() + offset(wk.plan.seed, s.marks.i, interval);
    // When the unanswered message went out.
    let mut inflight: Option<Instant> = None;
    let mut quiet = false;
    loop {
        let reply_due = inflight.map_or(next + wk.timeout, |t| t + wk.timeout);
        let Some(ws) = s.ws.as_mut() else {
            return Err(Fail(Fault::UnexpectedClose, "no connection"));
        };
        // Whatever ended the connection: a read or a send may notice first.
        let ended = tokio::select! {
            biased;
            _ = rx.changed(), if !quiet => {
                quiet = true;
                if inflight.is_none() {
                    return Ok(());
                }
                None
            }
            m = ws.next() => match take(wk, &mut s.marks, m) {
                Got::Nothing => None,
                Got::Count(n) if inflight.is_some() && n == s.acked + 1 => {
                    s.acked = n;
                    inflight = None;
                    wk.st.borrow_mut().recovery.acked += 1;
                    if quiet {
                        return Ok(());
                    }
                    None
                }
                Got::Count(_) => {
                    return Err(Fail(
                        Fault::CountMismatch,
                        "a count that is not the last one plus one",
                    ))
                }
                Got::Ended(why) => Some(Fail(Fault::UnexpectedClose, why)),
                Got::Bye => return Err(Fail(Fault::BadFrame, "a goodbye nobody asked for")),
                Got::Bad(why) => return Err(Fail(Fault::BadFrame, why)),
            },
            _ = sleep_until(next), if inflight.is_none() && !quiet => {
                let now = Instant::now();
                // In flight even if the send fails: it may have left anyway.
                inflight = Some(now);
                next += interval;
                if next < now {
                    next = now + interval;
                }
                send(s, now + wk.timeout).await.err()
            }
            _ = sleep_until(reply_due), if inflight.is_some() => {
                return Err(Fail(Fault::ReplyTimeout, "no count within --timeout"));
            }
        };
        let Some(f) = ended else {
            continue;
        };
        match kill {
            Some(k) if victim && !s.moved => {
                recover(wk, s, rx, k, inflight.is_some()).await?;
                inflight = None;
                if quiet {
                    return Ok(());
                }
                next = Instant::now();
            }
            _ => {
                if f.0 == Fault::UnexpectedClose {
                    wk.st.borrow_mut().recovery.survivors_disconnected += 1;
                }
                return Err(f);
            }
        }
    }
}

/// The victim's way back: reconnect to its survivor with its session, with
/// backoff because every victim does the same at the same moment, until it
/// is in, traffic stops, or --timeout has passed since the connection ended.
async fn recover(
    wk: &Wk,
    s: &mut Sock,
    rx: &mut watch::Receiver<Step>,
    killed: u32,
    unacked: bool,
) -> Result<(), Fail> {
    let dropped = now_ns();
    s.ws = None;
    {
        let mut st = wk.st.borrow_mut();
        st.recovery.dropped += 1;
        st.drop_ns.push(dropped);
    }
    let target = wk.layout.survivor(s.marks.i, killed);
    let session = s.session.clone().unwrap_or_default();
    let mut backoff = BACKOFF_FIRST;
    let mut last = Fail(Fault::ConnectTimeout, "still away when traffic stopped");
    let give_up = Instant::now() + wk.timeout;
    loop {
        let now = Instant::now();
        if now >= give_up {
            return Err(last);
        }
        let attempt = (now + ATTEMPT).min(give_up);
        let r = tokio::select! {
            biased;
            _ = rx.changed() => return Err(last),
            r = open(wk, target, Some(&session), s.marks.room, s.marks.offset, attempt) => r,
        };
        let (ws, w) = match r {
            Ok(x) => x,
            Err(f) => {
                // Refusals and timeouts are expected under the storm; only
                // the last one counts, and only if the socket never gets in.
                last = f;
                tokio::select! {
                    biased;
                    _ = rx.changed() => return Err(last),
                    _ = sleep_until((Instant::now() + backoff).min(give_up)) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let now = now_ns();
        let mut st = wk.st.borrow_mut();
        if s.marks.offset.is_some() && w.recovered != Some(true) {
            st.tally.not_recovered += 1;
            st.fault(
                Fault::WelcomeMismatch,
                s.marks.i,
                "a reconnect with since was not told recovered:true",
            );
        }
        s.marks.saw(w.offset);
        if !w.resumed {
            st.fault(
                Fault::WelcomeMismatch,
                s.marks.i,
                "resumed:false on the survivor",
            );
            s.session = Some(w.session);
        }
        st.recovery.in_flight += u64::from(unacked);
        match check::resume(s.acked, u64::from(unacked), w.count) {
            Resume::Continues { applied } => {
                st.recovery.acked += applied;
                st.recovery.in_flight_counted += applied;
            }
            Resume::Lost { .. } => {
                st.recovery.lost += 1;
                st.fault(
                    Fault::WelcomeMismatch,
                    s.marks.i,
                    "resumed below the last acknowledged count",
                );
            }
            Resume::Ahead { .. } => {
                st.recovery.ahead += 1;
                st.fault(
                    Fault::WelcomeMismatch,
                    s.marks.i,
                    "resumed above every message sent",
                );
            }
        }
        // Counting goes on from what the server holds, so one fault does
        // not turn every later reply into another.
        s.acked = w.count;
        s.ws = Some(ws);
        s.moved = true;
        st.recovery.recovered += 1;
        st.kill_settled += 1;
        st.reconnect
            .saturating_record(now.saturating_sub(dropped).max(1));
        st.recovery.last_ns = st.recovery.last_ns.max(now);
        return Ok(());
    }
}

/// Classifies one read; heartbeats and pings are nothing, broadcasts are
/// stamped and tallied here.
fn take(wk: &Wk, m: &mut Marks, msg: Option<Result<Message, WsError>>) -> Got {
    match msg {
        None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
            Got::Ended("connection ended")
        }
        Some(Err(WsError::Io(e))) => Got::Ended(os_reason(&e)),
        Some(Err(_)) => Got::Ended("protocol error"),
        Some(Ok(Message::Text(t))) => match reply::parse(t.as_bytes()) {
            Reply::Heartbeat => Got::Nothing,
            Reply::Broadcast { text, offset } => {
                note(wk, m, &text, offset);
                Got::Nothing
            }
            Reply::Count(n) => Got::Count(n),
            Reply::Bye { .. } => Got::Bye,
            Reply::Welcome { .. } => Got::Bad("a welcome on an open socket"),
            Reply::RateLimited => Got::Bad("rate limited"),
            Reply::Unknown => Got::Bad("text the contract does not name"),
        },
        Some(Ok(Message::Close(_))) => Got::Ended("the server sent Close"),
        Some(Ok(Message::Binary(_))) => Got::Bad("binary frame"),
        Some(Ok(_)) => Got::Nothing,
    }
}

/// Tallies one broadcast receipt against what this socket has seen.
fn note(wk: &Wk, m: &mut Marks, text: &str, offset: Option<&str>) {
    let now = now_ns();
    m.saw(offset.and_then(parse_offset));
    let mut st = wk.st.borrow_mut();
    let Some(tag) = tag::parse(text) else {
        st.fault(Fault::BadFrame, m.i, "a broadcast this run did not send");
        return;
    };
    let latency = now.saturating_sub(tag.t_ns).max(1);
    match tag.kind {
        Kind::Fanout => {
            let j = tag.seq as usize;
            if j >= st.fanout_got.len() {
                st.fault(Fault::BadFrame, m.i, "a fanout number out of range");
                return;
            }
            let (word, bit) = (j / 64, 1u64 << (j % 64));
            if m.fanout[word] & bit != 0 {
                st.tally.fanout_dups += 1;
                return;
            }
            m.fanout[word] |= bit;
            st.fanout_got[j] += 1;
            st.fanout_last[j] = st.fanout_last[j].max(now);
            st.tally.fanout += 1;
            st.fanout_latency.saturating_record(latency);
        }
        Kind::Room if tag.seq != m.room => st.tally.room_strays += 1,
        Kind::Room if m.room_seen => st.tally.room_dups += 1,
        Kind::Room => {
            m.room_seen = true;
            st.tally.room += 1;
            st.room_last = st.room_last.max(now);
            st.room_latency.saturating_record(latency);
        }
        Kind::Stream => {
            let j = tag.seq;
            if j < m.stream_next {
                st.tally.stream_dups += 1;
                return;
            }
            if j > m.stream_next {
                // Counted once; the order is checked on from here.
                st.tally.stream_gaps += 1;
            }
            m.stream_next = j + 1;
            let k = j as usize;
            if st.stream_got.len() <= k {
                st.stream_got.resize(k + 1, 0);
            }
            st.stream_got[k] += 1;
            st.tally.stream += 1;
        }
        Kind::Barrier if m.barrier_seen => st.tally.barrier_dups += 1,
        Kind::Barrier => {
            m.barrier_seen = true;
            st.tally.barrier += 1;
            st.barrier_last = st.barrier_last.max(now);
            // Published after the room broadcast, so a member must have it.
            if tag.seq == m.room && !m.room_seen {
                st.tally.room_late += 1;
            }
        }
    }
}

/// Where in the first interval a socket starts sending, so a node's sockets
/// do not all fire in the same millisecond.
fn offset(seed: u64, i: u32, interval: Duration) -> Duration {
    let ns = interval.as_nanos().max(1) as u64;
    Duration::from_nanos(splitmix(seed ^ u64::from(i)) % ns)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn os_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "out of file descriptors",
        Some(libc::EADDRNOTAVAIL) => return "no free source port",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::BrokenPipe => "broken pipe",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::UnexpectedEof => "connection ended",
        _ => "I/O error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_inside_the_interval_and_spread() {
        let iv = Duration::from_secs(2);
        let offs: Vec<Duration> = (0..1000).map(|i| offset(1, i, iv)).collect();
        assert!(offs.iter().all(|o| *o < iv));
        let early = offs.iter().filter(|o| **o < iv / 2).count();
        assert!((400..600).contains(&early), "{early}");
        assert_eq!(offset(1, 7, iv), offset(1, 7, iv));
        assert_eq!(offset(1, 7, Duration::ZERO), Duration::ZERO);
    }
}
