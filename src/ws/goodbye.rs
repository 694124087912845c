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
#[derive(Debug)]
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
            Ok(ctx.store.persist(session).await)
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
/// goodbye where the contract has one, then Close), counts and logs why, and
/// returns the close code and how long to wait for the client's Close. None:
/// the peer is gone, nothing can be told.
fn farewell(
    ctx: &Context,
    session: &Session,
    exit: &Exit,
    out: &mut Vec<u8>,
) -> Option<(u16, Option<Instant>)> {
    let m = ctx.metrics();
    let out = &mut *out;
    Some(match exit {
        Exit::PeerClose(code) => {
            let code = code.unwrap_or(1000);
            codec::encode_text(out, protocol::bye(session.count()).as_bytes());
            codec::encode_close(out, code, "");
            (code, None)
        }
        Exit::Drain => {
            let retry = ctx.retry_after_ms();
            codec::encode_text(
                out,
                protocol::bye_shutdown(session.count(), retry).as_bytes(),
            );
            codec::encode_close(out, 1001, "server shutting down");
            (1001, Some(ctx.drain_deadline()))
        }
        Exit::Invalid(e) => {
            m.error(error_kind(*e));
            tracing::info!(code = e.code(), reason = e.reason(), "closing on bad input");
            codec::encode_close(out, e.code(), e.reason());
            (e.code(), Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Kick => {
            codec::encode_close(out, 1008, "session deleted");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::SlowReader => {
            m.error(ErrorKind::SlowReader);
            tracing::info!("closing a slow reader: its backlog passed the bound");
            codec::encode_close(out, 1008, "slow reader");
            (1008, None)
        }
        Exit::Idle => {
            m.error(ErrorKind::IdleTimeout);
            tracing::info!(
                idle_s = ctx.cfg().idle_timeout.as_secs(),
                "closing a silent socket"
            );
            codec::encode_text(out, protocol::bye_idle(session.count()).as_bytes());
            codec::encode_close(out, 1001, "idle timeout");
            (1001, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::TokenExpired => {
            m.denied(Denial::TokenExpired);
            tracing::info!("closing a socket whose token expired: 4001");
            let bye = protocol::bye_token(session.count(), "token_expired", None);
            codec::encode_text(out, bye.as_bytes());
            codec::encode_close(out, 4001, "token expired");
            (4001, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::TokenRefused(why) => {
            m.denied(Denial::RefreshRefused);
            tracing::info!(reason = why, "refresh refused: closing with 4001");
            let bye = protocol::bye_token(session.count(), "token_refused", Some(why));
            codec::encode_text(out, bye.as_bytes());
            codec::encode_close(out, 4001, "token refused");
            (4001, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::RateLimited => {
            codec::encode_close(out, 1008, "rate limit exceeded");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Gone => return None,
    })
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
