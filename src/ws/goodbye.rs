//! The end of a socket's life, after it left the shard's plane: its count
//! to Redis, the goodbye the exit calls for, the Close, and the wait for the
//! peer's Close, in a short task of its own.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::context::{Context, Slot};
use crate::metrics::{Denial, ErrorKind};
use crate::protocol;
use crate::session::Session;
use crate::ws::codec::{self, Decoder, Event, WsError};

/// How long a close on a client's behalf may wait for Redis.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the client's Close after sending ours (not draining).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a socket ended.
#[derive(Debug, Clone)]
pub enum Exit {
    PeerClose(Option<u16>),
    Invalid(WsError),
    Drain,
    Kick,
    SlowReader,
    RateLimited,
    Idle,
    /// The token's `exp` passed with no refresh before it.
    TokenExpired,
    /// A refresh on the socket was refused, for this reason.
    TokenRefused(&'static str),
    Gone,
}

impl Exit {
    /// The Close a socket is sent for this exit, code and reason, whatever
    /// handler it ran under; None when the peer is gone.
    pub fn close(&self) -> Option<(u16, &'static str)> {
        Some(match self {
            Exit::PeerClose(code) => (code.unwrap_or(1000), ""),
            Exit::Invalid(e) => (e.code(), e.reason()),
            Exit::Drain => (1001, "server shutting down"),
            Exit::Kick => (1008, "session deleted"),
            Exit::SlowReader => (1008, "slow reader"),
            Exit::RateLimited => (1008, "rate limit exceeded"),
            Exit::Idle => (1001, "idle timeout"),
            Exit::TokenExpired => (4001, "token expired"),
            Exit::TokenRefused(_) => (4001, "token refused"),
            Exit::Gone => return None,
        })
    }
}

/// A socket's bad input, as the metric kind it counts under.
fn error_kind(e: WsError) -> ErrorKind {
    match e {
        WsError::Protocol(_) => ErrorKind::Protocol,
        WsError::Binary => ErrorKind::Binary,
        WsError::InvalidUtf8 => ErrorKind::InvalidUtf8,
        WsError::TooBig => ErrorKind::TooBig,
    }
}

/// A socket that left the plane, on its way out.
pub struct Ended {
    pub conn: u64,
    pub fd: OwnedFd,
    pub slot: Slot,
    pub session: Rc<Session>,
    pub exit: Exit,
    /// Bytes the kernel had not taken yet when the socket ended.
    pub unsent: Vec<u8>,
    pub opened: Instant,
    pub messages: u64,
}

/// Ends a socket that left the plane: what the exit calls for, then the
/// session's release and the close log line. The socket's own short task.
pub async fn close(ended: Ended) {
    let ctx = ended.slot.ctx();
    let session = &ended.session;
    // SAFETY: the descriptor is open and owned; the stream takes it over.
    let mut stream = unsafe { TcpStream::from_raw_fd(ended.fd.into_raw_fd()) };
    let code = Box::pin(finish(ctx, &mut stream, session, &ended.exit, ended.unsent)).await;
    ctx.store.release(session);
    tracing::info!(
        conn_id = ended.conn,
        session_id = %session.id,
        code,
        reason = ?ended.exit,
        messages = ended.messages,
        total = session.count(),
        duration_ms = ended.opened.elapsed().as_millis() as u64,
        "ws close"
    );
}

/// Sends what the exit calls for (goodbye, Close) and returns the close code.
async fn finish(
    ctx: &Rc<Context>,
    stream: &mut TcpStream,
    session: &Rc<Session>,
    exit: &Exit,
    unsent: Vec<u8>,
) -> u16 {
    let m = ctx.metrics();
    // The count reaches Redis before our Close frame does (contract).
    if !matches!(exit, Exit::Kick) {
        let persisted = glommio::timer::timeout(PERSIST_TIMEOUT, async {
            Ok(ctx.store.settle(session).await)
        })
        .await;
        if !matches!(persisted, Ok(Ok(()))) {
            ctx.store.enqueue(session);
        }
    }
    // What the plane could not send yet goes first, in order; a slow
    // reader's pile is dropped.
    let mut out = if matches!(exit, Exit::SlowReader) {
        Vec::new()
    } else {
        unsent
    };
    let Some((code, wait_until)) = farewell(ctx, session, exit, &mut out) else {
        m.close(1006);
        return 1006;
    };
    m.close(code);
    // Bounded: a peer that stopped reading must not hold the task for
    // another write timeout.
    let written =
        glommio::timer::timeout(CLOSE_WAIT, async { Ok(stream.write_all(&out).await) }).await;
    if !matches!(written, Ok(Ok(()))) {
        return code;
    }
    if let Some(until) = wait_until {
        // Give the client time to answer our Close, so it sees a clean close.
        await_peer_close(stream, until).await;
    }
    let _ = stream.close().await;
    code
}

/// Writes into `out` what a socket is told as it leaves for `exit` (a
/// goodbye where the contract has one, then its Close), counts and logs why,
/// and returns the close code and until when to wait for the client's Close.
/// None: the peer is gone, nothing can be told.
fn farewell(
    ctx: &Context,
    session: &Session,
    exit: &Exit,
    out: &mut Vec<u8>,
) -> Option<(u16, Option<Instant>)> {
    let (code, reason) = exit.close()?;
    let m = ctx.metrics();
    let soon = Some(Instant::now() + CLOSE_WAIT);
    let bye = |out: &mut Vec<u8>, text: String| codec::encode_text(out, text.as_bytes());
    let wait_until = match exit {
        Exit::PeerClose(_) => {
            bye(out, protocol::bye(session.count()));
            None
        }
        Exit::Drain => {
            let retry = ctx.retry_after_ms();
            bye(out, protocol::bye_shutdown(session.count(), retry));
            Some(ctx.drain_deadline())
        }
        Exit::Invalid(e) => {
            m.error(error_kind(*e));
            tracing::info!(code, reason, "closing on bad input");
            soon
        }
        Exit::Kick | Exit::RateLimited => soon,
        Exit::SlowReader => {
            m.error(ErrorKind::SlowReader);
            tracing::info!("closing a slow reader: its backlog passed the bound");
            None
        }
        Exit::Idle => {
            m.error(ErrorKind::IdleTimeout);
            let idle_s = ctx.cfg().idle_timeout.as_secs();
            tracing::info!(idle_s, "closing a silent socket");
            bye(out, protocol::bye_idle(session.count()));
            soon
        }
        Exit::TokenExpired => {
            m.denied(Denial::TokenExpired);
            tracing::info!("closing a socket whose token expired: 4001");
            bye(
                out,
                protocol::bye_token(session.count(), "token_expired", None),
            );
            soon
        }
        Exit::TokenRefused(why) => {
            m.denied(Denial::RefreshRefused);
            tracing::info!(reason = why, "refresh refused: closing with 4001");
            bye(
                out,
                protocol::bye_token(session.count(), "token_refused", Some(why)),
            );
            soon
        }
        Exit::Gone => return None,
    };
    codec::encode_close(out, code, reason);
    Some((code, wait_until))
}

async fn await_peer_close(stream: &mut TcpStream, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let _ = glommio::timer::timeout(left, async {
        let mut decoder = Decoder::new(usize::MAX);
        let mut buf = vec![0u8; 512];
        let mut end = 0;
        loop {
            match stream.read(&mut buf[end..]).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => end += n,
            }
            let mut start = 0;
            while start < end {
                match decoder.decode(&mut buf[start..end]) {
                    Ok((Some(Event::Close(_)), _)) | Err(_) => return Ok(()),
                    Ok((_, 0)) => break,
                    Ok((_, n)) => start += n,
                }
            }
            buf.copy_within(start..end, 0);
            end -= start;
        }
    })
    .await;
}
