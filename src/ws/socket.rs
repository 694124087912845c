//! One WebSocket's life outside the data plane: the upgrade up to the
//! welcome ([`open`], which hands the socket to the shard's [`Plane`]), and
//! its end ([`close`]: the count to Redis, the goodbye, the Close and the
//! wait for the peer's Close), each in a short task of its own.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::context::{Context, Slot};
use crate::http::{self, Request};
use crate::metrics::ErrorKind;
use crate::protocol;
use crate::pubsub;
use crate::session::{self, Session};
use crate::store::OpenError;
use crate::ws::codec::{self, Decoder, Event, WsError};
use crate::ws::handshake;
use crate::ws::plane::{self, Plane, Upgraded};

/// How long a close on a client's behalf may wait for Redis.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connect waits for Redis to confirm its room's subscription.
const ROOM_JOIN_TIMEOUT: Duration = Duration::from_secs(2);
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
    Gone,
}

/// Whether a browser on `origin` may open a socket: any when the list is
/// empty, else an exact match without case (scheme, host and port).
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin.trim()))
}

/// Validates the handshake, opens or resumes the session and sends the 101
/// with the welcome, and hands the socket to the plane; a refused upgrade
/// is answered here.
pub async fn open(slot: Slot, plane: &Rc<Plane>, mut stream: TcpStream, mut req: Request) {
    let ctx = slot.ctx().clone();
    let m = ctx.metrics();
    let accept = match handshake::validate(&req) {
        Ok(a) => a,
        Err(r) => {
            m.error(ErrorKind::BadRequest);
            tracing::info!(status = r.status, reason = r.reason, "upgrade refused");
            let body = serde_json::json!({ "error": r.reason }).to_string();
            let _ = stream
                .write_all(&http::response(
                    r.status,
                    "application/json",
                    r.headers,
                    body.as_bytes(),
                ))
                .await;
            return;
        }
    };
    if let Some(origin) = req.header("origin") {
        if !origin_allowed(&ctx.cfg().allowed_origins, origin) {
            m.error(ErrorKind::ForbiddenOrigin);
            tracing::info!(origin, "upgrade refused: origin not allowed: 403");
            let _ = stream
                .write_all(&http::error(403, "origin not allowed"))
                .await;
            return;
        }
    }
    let sub = match &ctx.cfg().auth_secret {
        None => None,
        Some(secret) => {
            let token = crate::auth::token_of(&req).unwrap_or("");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            match crate::auth::verify(secret.as_bytes(), token, now) {
                Ok(id) => id.sub,
                Err(e) => {
                    m.error(ErrorKind::Unauthorized);
                    tracing::info!(reason = %e, "upgrade refused: 401");
                    let body =
                        serde_json::json!({ "error": "unauthorized", "reason": e.to_string() });
                    let _ = stream
                        .write_all(&http::response(
                            401,
                            "application/json",
                            &[("WWW-Authenticate", "Bearer")],
                            body.to_string().as_bytes(),
                        ))
                        .await;
                    return;
                }
            }
        }
    };
    if ctx.is_draining() {
        let _ = stream.write_all(&http::error(503, "draining")).await;
        return;
    }
    let requested = session::id_from_query(&req.query).and_then(session::parse_id);
    let room = match pubsub::room_from_query(&req.query) {
        None => None,
        Some(r) => match pubsub::check_room(r) {
            Ok(()) => Some(r.to_string()),
            Err(e) => {
                m.error(ErrorKind::BadRequest);
                tracing::info!(room = r, "upgrade refused: bad room: 400");
                let _ = stream.write_all(&http::error(400, &e.to_string())).await;
                return;
            }
        },
    };
    // Only the bytes after the head live on; the headers go now.
    let rest = std::mem::take(&mut req.rest);
    drop(req);
    let (session, resumed) = match ctx.store.open(requested).await {
        Ok(x) => x,
        Err(e) => {
            m.error(ErrorKind::RedisUnavailable);
            let why = match e {
                OpenError::RedisUnavailable => "redis_unavailable",
                OpenError::Backlog => "redis_backlog_full",
            };
            tracing::warn!(reason = why, "upgrade refused: 503");
            let _ = stream.write_all(&http::error(503, why)).await;
            return;
        }
    };
    let conn = ctx.next_conn_id();
    let joined = match room.as_deref().map(|r| ctx.pubsub.join(r, conn)) {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(e)) => {
            m.error(ErrorKind::TooManyRooms);
            if let Some(unlogged) = ctx.log_gate(ErrorKind::TooManyRooms) {
                tracing::warn!(
                    limit = ctx.cfg().max_rooms,
                    unlogged,
                    "upgrade refused: {e}: 503"
                );
            }
            ctx.store.release(&session);
            let _ = stream.write_all(&http::error(503, "too_many_rooms")).await;
            return;
        }
    };
    let room = joined.as_ref().map(|(name, _)| name.clone());
    if let Some((_, Some(confirmed))) = joined {
        // Bounded: with the subscription connection down the socket still
        // opens, and gets the room's broadcasts once it is back.
        let waited = glommio::timer::timeout(ROOM_JOIN_TIMEOUT, async {
            let _ = confirmed.await;
            Ok(())
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                room = room.as_deref(),
                "room subscription not confirmed in time; opening anyway"
            );
        }
    }
    if resumed {
        m.sessions_resumed_total.inc();
    }
    stream.set_nodelay(true).ok();
    tracing::info!(conn_id = conn, session_id = %session.id, resumed, count = session.count(), sub, room = room.as_deref(), "ws open");
    let mut first = handshake::accept_response(&accept);
    codec::encode_text(
        &mut first,
        protocol::welcome(&session.id, session.count(), resumed).as_bytes(),
    );
    // The plane owns a copy of the descriptor; glommio's stream, and any
    // poll it had armed, goes with this task.
    // SAFETY: duplicating an open descriptor; the copy is owned below.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    drop(stream);
    if fd < 0 {
        m.error(ErrorKind::Io);
        if let Some(r) = &room {
            ctx.pubsub.leave(r, conn);
        }
        ctx.store.release(&session);
        return;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let up = Upgraded {
        conn,
        fd,
        slot,
        session,
        room,
        rest,
    };
    plane.adopt(up, &first);
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
    let Ended {
        conn,
        fd,
        slot,
        session,
        exit,
        unsent,
        opened,
        messages,
    } = ended;
    let ctx = slot.ctx();
    // SAFETY: the descriptor is open and owned; the stream takes it over.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let code = Box::pin(finish(ctx, &mut stream, &session, &exit, unsent)).await;
    ctx.store.release(&session);
    tracing::info!(
        conn_id = conn,
        session_id = %session.id,
        code,
        reason = ?exit,
        messages,
        total = session.count(),
        duration_ms = opened.elapsed().as_millis() as u64,
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
    let (code, wait_until) = match exit {
        Exit::PeerClose(code) => {
            let code = code.unwrap_or(1000);
            codec::encode_text(&mut out, protocol::bye(session.count()).as_bytes());
            codec::encode_close(&mut out, code, "");
            (code, None)
        }
        Exit::Drain => {
            let retry = ctx.retry_after_ms();
            codec::encode_text(
                &mut out,
                protocol::bye_shutdown(session.count(), retry).as_bytes(),
            );
            codec::encode_close(&mut out, 1001, "server shutting down");
            (1001, Some(ctx.drain_deadline()))
        }
        Exit::Invalid(e) => {
            m.error(plane::error_kind(*e));
            tracing::info!(code = e.code(), reason = e.reason(), "closing on bad input");
            codec::encode_close(&mut out, e.code(), e.reason());
            (e.code(), Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Kick => {
            codec::encode_close(&mut out, 1008, "session deleted");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::SlowReader => {
            m.error(ErrorKind::SlowReader);
            tracing::info!("closing a slow reader: its backlog passed the bound");
            codec::encode_close(&mut out, 1008, "slow reader");
            (1008, None)
        }
        Exit::Idle => {
            m.error(ErrorKind::IdleTimeout);
            tracing::info!(
                idle_s = ctx.cfg().idle_timeout.as_secs(),
                "closing a silent socket"
            );
            codec::encode_text(&mut out, protocol::bye_idle(session.count()).as_bytes());
            codec::encode_close(&mut out, 1001, "idle timeout");
            (1001, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::RateLimited => {
            codec::encode_close(&mut out, 1008, "rate limit exceeded");
            (1008, Some(Instant::now() + CLOSE_WAIT))
        }
        Exit::Gone => {
            m.close(1006);
            return 1006;
        }
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
