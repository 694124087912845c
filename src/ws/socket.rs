//! A WebSocket's upgrade: the handshake checks, origin and token, the
//! session, the room, then the 101 and the welcome handed to the shard's
//! [`Plane`] with the socket. Runs in the connection's task.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::context::{Context, Slot};
use crate::history::{self, Offset, Recovery};
use crate::http::{self, Request};
use crate::metrics::{Denial, ErrorKind};
use crate::protocol::{self, WelcomeHistory};
use crate::pubsub;
use crate::session;
use crate::store::OpenError;
use crate::ws::codec;
use crate::ws::handshake;
use crate::ws::plane::{Grant, Plane, Upgraded};

/// How long a connect waits for Redis to confirm its room's subscription.
const ROOM_JOIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    let identity = match &ctx.cfg().auth_secret {
        None => None,
        Some(secret) => {
            let token = crate::auth::token_of(&req).unwrap_or("");
            match crate::auth::verify(secret.as_bytes(), token, crate::auth::unix_now()) {
                Ok(id) => Some(id),
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
    let sub = identity.as_ref().and_then(|id| id.sub.clone());
    if ctx.is_draining() {
        let _ = stream.write_all(&http::error(503, "draining")).await;
        return;
    }
    let requested = req.param(&session::ID_PARAMS).and_then(session::parse_id);
    let room = match req.param(&[pubsub::ROOM_PARAM]) {
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
    if let (Some(id), Some(r)) = (&identity, &room) {
        if !id.rooms.allows(r) {
            m.denied(Denial::RoomNotAllowed);
            tracing::info!(room = r, sub, "upgrade refused: room not in the token: 403");
            let body = serde_json::json!({
                "error": "forbidden",
                "reason": "the token's rooms claim does not name this room",
            });
            let _ = stream.write_all(&http::json(403, &body)).await;
            return;
        }
    }
    // Read now, once: the deadline is an Instant from here on.
    let grant = identity.map(|id| {
        let now = std::time::Instant::now();
        Box::new(Grant {
            sub: id.sub.map(String::into_boxed_str),
            expires: crate::auth::deadline(id.exp, crate::auth::unix_now(), now),
        })
    });
    let raw_since = req.param(&[history::SINCE_PARAM]);
    let since = match raw_since.map(str::parse::<Offset>) {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(e)) => {
            m.error(ErrorKind::BadRequest);
            tracing::info!(since = raw_since, "upgrade refused: bad since: 400");
            let _ = stream.write_all(&http::error(400, &e.to_string())).await;
            return;
        }
    };
    // Only the bytes after the head live on; the headers go now.
    let rest = std::mem::take(&mut req.rest);
    drop(req);
    // The Redis calls' states are boxed while they wait: kept inline they
    // would size every upgrade's future for the largest of them.
    let (session, resumed) = match Box::pin(ctx.store.open(requested)).await {
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
    // From the recovery read to `adopt` below there is no await: the
    // bridge's messages are the socket's up to the moment it joins the plane.
    let (recovery, said) = Box::pin(recover(&ctx, since, room.as_ref())).await;
    if since.is_some() && ctx.history.enabled() {
        ctx.history.set_floor(conn, recovery.has());
    }
    stream.set_nodelay(true).ok();
    tracing::info!(conn_id = conn, session_id = %session.id, resumed, count = session.count(), sub, room = room.as_deref(), since = ?since.map(|o| o.to_string()), recovered = said.recovered, missed = recovery.texts.len(), "ws open");
    let mut first = handshake::accept_response(&accept);
    codec::encode_text(
        &mut first,
        protocol::welcome(&session.id, session.count(), resumed, said).as_bytes(),
    );
    for text in &recovery.texts {
        codec::encode_text(&mut first, text.as_bytes());
    }
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
        grant,
        rest,
    };
    plane.adopt(up, &first);
}

/// What a socket that asked for `since` missed, and what its welcome says
/// about history. Without history the welcome says nothing of it, except
/// `recovered: false` to a client that asked.
async fn recover(
    ctx: &Context,
    since: Option<Offset>,
    room: Option<&std::rc::Rc<str>>,
) -> (Recovery, WelcomeHistory) {
    let h = &ctx.history;
    if !h.enabled() {
        let said = WelcomeHistory {
            offset: None,
            recovered: since.map(|_| false),
        };
        return (Recovery::default(), said);
    }
    let Some(since) = since else {
        let said = WelcomeHistory {
            offset: Some(h.head()),
            recovered: None,
        };
        return (Recovery::default(), said);
    };
    let m = ctx.metrics();
    let recovery = match h.recover(ctx.redis(), since, room).await {
        Ok(r) => r,
        Err(e) => {
            // The socket still opens: it is told it may have missed some.
            tracing::warn!(error = %e, "history not read; welcome says recovered false");
            Recovery {
                since: since.min(h.head()),
                ..Recovery::default()
            }
        }
    };
    m.recoveries_total.inc();
    if !recovery.complete {
        m.recoveries_incomplete_total.inc();
    }
    m.recovered_messages_total.add(recovery.texts.len() as u64);
    // Never below what it has: a client must not be sent back.
    let offset = h.head().max(recovery.has());
    let said = WelcomeHistory {
        offset: Some(offset),
        recovered: Some(recovery.complete),
    };
    (recovery, said)
}
