//! A WebSocket's upgrade: the handshake checks, origin and token, the
//! session, the room, then the 101 and the welcome handed to the shard's
//! [`Plane`] with the socket. Runs in the connection's task.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::context::{Context, Slot};
use crate::history::{self, Channel, Offset, Position, Since};
use crate::http::{self, Request};
use crate::metrics::{Denial, ErrorKind};
use crate::presence;
use crate::protocol::{self, Member};
use crate::pubsub;
use crate::session;
use crate::store::{OpenError, Opened};
use crate::ws::codec;
use crate::ws::counter::{Grant, Sockets};
use crate::ws::deflate::{Agreed, Mode};
use crate::ws::handshake;
use crate::ws::rooms;

/// Whether a browser on `origin` may open a socket: any when the list is
/// empty, else an exact match without case (scheme, host and port).
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin.trim()))
}

/// What an upgrade request asks for, once every check on it has passed.
struct Ask {
    /// The handshake's `Sec-WebSocket-Accept`.
    accept: String,
    /// What it agrees of permessage-deflate.
    deflate: Option<Agreed>,
    /// The session it resumes, if it names one.
    requested: Option<uuid::Uuid>,
    room: Option<String>,
    since: Option<Since>,
    grant: Option<Box<Grant>>,
    sub: Option<String>,
}

/// Checks an upgrade request against the shard's settings, with no I/O:
/// the handshake, the origin, the token and its rooms, the drain, the room
/// and `since`. A refusal is the whole HTTP answer, its metric counted and
/// its line logged.
fn admit(ctx: &Context, req: &Request) -> Result<Ask, Vec<u8>> {
    let m = ctx.metrics();
    let accept = handshake::validate(req).map_err(|r| {
        m.error(ErrorKind::BadRequest);
        tracing::info!(status = r.status, reason = r.reason, "upgrade refused");
        let body = serde_json::json!({ "error": r.reason }).to_string();
        http::response(r.status, "application/json", r.headers, body.as_bytes())
    })?;
    if let Some(origin) = req.header("origin") {
        if !origin_allowed(&ctx.cfg().allowed_origins, origin) {
            m.error(ErrorKind::ForbiddenOrigin);
            tracing::info!(origin, "upgrade refused: origin not allowed: 403");
            return Err(http::error(403, "origin not allowed"));
        }
    }
    let identity = match &ctx.cfg().auth_secret {
        None => None,
        Some(secret) => {
            let token = crate::auth::token_of(req).unwrap_or("");
            let id = crate::auth::verify(secret.as_bytes(), token, crate::auth::unix_now())
                .map_err(|e| {
                    m.error(ErrorKind::Unauthorized);
                    tracing::info!(reason = %e, "upgrade refused: 401");
                    let body =
                        serde_json::json!({ "error": "unauthorized", "reason": e.to_string() });
                    http::response(
                        401,
                        "application/json",
                        &[("WWW-Authenticate", "Bearer")],
                        body.to_string().as_bytes(),
                    )
                })?;
            Some(id)
        }
    };
    let sub = identity.as_ref().and_then(|id| id.sub.clone());
    if ctx.is_draining() {
        return Err(http::error(503, "draining"));
    }
    let room = match req.param(&[pubsub::ROOM_PARAM]) {
        None => None,
        Some(r) => {
            pubsub::check_room(r).map_err(|e| {
                m.error(ErrorKind::BadRequest);
                tracing::info!(room = r, "upgrade refused: bad room: 400");
                http::error(400, &e.to_string())
            })?;
            Some(r.to_string())
        }
    };
    if let (Some(id), Some(r)) = (&identity, &room) {
        if !id.rooms.allows(r) {
            m.denied(Denial::RoomNotAllowed);
            tracing::info!(room = r, sub, "upgrade refused: room not in the token: 403");
            let body = serde_json::json!({
                "error": "forbidden",
                "reason": "the token's rooms claim does not name this room",
            });
            return Err(http::json(403, &body));
        }
    }
    let since = match (positions(ctx, req)?, req.param(&[history::SINCE_PARAM])) {
        (Some(p), _) => Some(Since::Position(p)),
        (None, Some(raw)) => Some(Since::Offset(raw.parse::<Offset>().map_err(|e| {
            m.error(ErrorKind::BadRequest);
            tracing::info!(since = raw, "upgrade refused: bad since: 400");
            http::error(400, &e.to_string())
        })?)),
        (None, None) => None,
    };
    // Read now, once: the deadline is an Instant from here on.
    let grant = identity.map(|id| {
        let now = std::time::Instant::now();
        Box::new(Grant {
            sub: id.sub.map(String::into_boxed_str),
            expires: crate::auth::deadline(id.exp, crate::auth::unix_now(), now),
            rooms: id.rooms,
        })
    });
    Ok(Ask {
        accept,
        deflate: handshake::deflate(req, ctx.cfg().permessage_deflate),
        requested: req.param(&session::ID_PARAMS).and_then(session::parse_id),
        room,
        since,
        grant,
        sub,
    })
}

/// Validates the handshake, opens or resumes the session and sends the 101
/// with the welcome, and hands the socket to the plane; a refused upgrade
/// is answered here.
pub async fn open(slot: Slot, plane: &Rc<Sockets>, mut stream: TcpStream, mut req: Request) {
    let ctx = slot.ctx().clone();
    let m = ctx.metrics();
    let Ask {
        accept,
        deflate,
        requested,
        room,
        since,
        grant,
        sub,
    } = match admit(&ctx, &req) {
        Ok(ask) => ask,
        Err(refusal) => {
            let _ = stream.write_all(&refusal).await;
            return;
        }
    };
    // Only the bytes after the head live on; the headers go now.
    let rest = std::mem::take(&mut req.rest);
    drop(req);
    // The Redis calls' states are boxed while they wait: kept inline they
    // would size every upgrade's future for the largest of them.
    let Opened {
        session,
        resumed,
        rooms: stored,
    } = match Box::pin(ctx.store.open(requested)).await {
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
    let (room, room_head) = match room {
        None => (None, None),
        Some(r) => match Box::pin(rooms::join(&ctx, &r, conn, false)).await {
            Some(j) => (Some(j.name), j.head),
            None => {
                ctx.store.release(&session);
                let _ = stream.write_all(&http::error(503, "too_many_rooms")).await;
                return;
            }
        },
    };
    if resumed {
        m.sessions_resumed_total.inc();
    }
    let (joined, refused) =
        Box::pin(restore(&ctx, conn, stored, room.as_ref(), grant.as_deref())).await;
    // From the recovery read to `adopt` below there is no await: the
    // bridge's messages are the socket's up to the moment it joins the plane.
    let asked = since.is_some();
    let mut chans = history::channels_of(room.as_ref(), room_head);
    chans.extend(joined.iter().map(|j| Channel {
        chan: Some(j.name.clone()),
        head: j.head,
        alone: true,
    }));
    let (recovery, said) = Box::pin(rooms::recover(&ctx, since, &chans, true)).await;
    if asked && ctx.history.enabled() {
        for (chan, has) in &recovery.has {
            ctx.history.set_floor(conn, chan.clone(), *has);
        }
    }
    stream.set_nodelay(true).ok();
    tracing::info!(conn_id = conn, session_id = %session.id, resumed, count = session.count(), sub, room = room.as_deref(), rooms = joined.len(), asked, recovered = said.welcome.recovered, missed = recovery.texts.len(), "ws open");
    let mut first = handshake::accept_response(&accept, deflate.as_ref());
    let mode = deflate.map_or(Mode::Off, |a| a.mode);
    let min = plane.limits().deflate_min;
    let mut text = |t: &str| codec::encode_text_for(&mut first, t.as_bytes(), mode, min);
    text(&protocol::welcome(
        &session.id,
        session.count(),
        resumed,
        said.welcome,
    ));
    for t in said.joined.iter().chain(&refused) {
        text(t);
    }
    for (chan, why) in &recovery.lost {
        text(&protocol::unrecovered(chan.as_deref(), *why));
    }
    for t in &recovery.texts {
        text(t);
    }
    let joined: Vec<Rc<str>> = joined.into_iter().map(|j| j.name).collect();
    let Some(fd) = take_fd(stream) else {
        m.error(ErrorKind::Io);
        for r in room.iter().chain(&joined) {
            ctx.pubsub.leave(r, conn);
        }
        ctx.store.release(&session);
        return;
    };
    let p = &ctx.presence;
    for r in room.iter().chain(&joined) {
        let entry = presence::entry(&session.id, sub.as_deref(), ctx.store.writer(), conn);
        p.joined(r, entry, || Member {
            session_id: session.id.to_string(),
            sub: sub.clone(),
        });
    }
    let state = plane.handler().open(slot, session, (room, joined), grant);
    plane.adopt(conn, fd, rest, &first, mode, state);
}

/// The upgrade's `position`: one token, or several (its channels', then
/// one per room its session joined on a socket), merged; a channel is read
/// from the first token that names it. At most one per room the socket may
/// be in, and one more.
fn positions(ctx: &Context, req: &Request) -> Result<Option<Position>, Vec<u8>> {
    let most = ctx.cfg().max_rooms_per_socket + 1;
    let mut merged: Option<Position> = None;
    for (i, raw) in req.params(history::POSITION_PARAM).enumerate() {
        let refuse = |why: &str| {
            ctx.metrics().error(ErrorKind::BadRequest);
            tracing::info!(position = raw, "upgrade refused: bad position: 400");
            http::error(400, why)
        };
        if i == most {
            return Err(refuse(&format!("at most {most} positions")));
        }
        let p = raw
            .parse::<Position>()
            .map_err(|e| refuse(&e.to_string()))?;
        match &mut merged {
            None => merged = Some(p),
            Some(m) => m.merge(p),
        }
    }
    Ok(merged)
}

/// Joins a resumed session's rooms again (its sockets joined them on their
/// open socket): those that are well-formed, not the upgrade's own room,
/// still allowed by the token, up to the socket's cap. Returns the rooms
/// joined, and a refusal frame for each one left out for its token or a
/// cap.
async fn restore(
    ctx: &Context,
    conn: u64,
    stored: Vec<String>,
    home: Option<&Rc<str>>,
    grant: Option<&Grant>,
) -> (Vec<rooms::Joined>, Vec<String>) {
    let cap = ctx.cfg().max_rooms_per_socket;
    let mut joined: Vec<rooms::Joined> = Vec::new();
    let mut refused = Vec::new();
    // What Redis holds is checked like a client's input, and bounded.
    for r in stored.iter().take(cap.saturating_mul(2)) {
        let taken = home.is_some_and(|h| **h == **r) || joined.iter().any(|j| *j.name == **r);
        if pubsub::check_room(r).is_err() || taken {
            continue;
        }
        if grant.is_some_and(|g| !g.rooms.allows(r)) {
            refused.push(protocol::room_refusal(
                "forbidden",
                Some(r),
                Some("the token's rooms claim does not name this room"),
            ));
            continue;
        }
        let full = joined.len() + usize::from(home.is_some()) >= cap;
        let j = if full {
            None
        } else {
            Box::pin(rooms::join(ctx, r, conn, false)).await
        };
        match j {
            Some(j) => joined.push(j),
            None => refused.push(protocol::room_refusal("too_many_rooms", Some(r), None)),
        }
    }
    (joined, refused)
}

/// The descriptor the plane will own: a copy, since glommio's stream, and
/// any poll it had armed, goes with the connection's task. None when the
/// copy fails (out of descriptors).
pub(crate) fn take_fd(stream: TcpStream) -> Option<OwnedFd> {
    // SAFETY: duplicating an open descriptor; the copy is owned below.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    drop(stream);
    // SAFETY: a fresh descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
