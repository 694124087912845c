//! The plain-HTTP route table: the web console at `/`, health and
//! readiness (open), and the server API (status, sessions, broadcast, and
//! metrics on the service port), which changes or reveals state and so
//! answers only a request with a key (`apikey`). The admin listener
//! (`admin`) serves the same routes through [`probe`], [`is_api`] and
//! [`api`].

use serde_json::json;

use crate::apikey::Denied;
use crate::context::Context;
use crate::context::Shared;
use crate::http::{self, Request};
use crate::metrics::ErrorKind;
use crate::protocol;
use crate::pubsub::check_room;
use crate::readiness::State;

/// The web console served at `/`: one page (see its top comment), whose
/// socket is the JavaScript client's.
pub const CONSOLE_HTML: &str = include_str!("console.html");

/// The JavaScript client (clients/js), as built into `dist/`: served at
/// `/shardcast.js` for the console and for pages of the same origin.
pub const CLIENT_JS: &str = include_str!("../clients/js/dist/shardcast.js");

/// Whether a request asks for one of the open pages: the console, or the
/// client script it loads. They hold nothing: no key is needed.
pub fn is_page(method: &str, path: &str) -> bool {
    matches!(method, "GET" | "HEAD") && matches!(path, "/" | "/shardcast.js")
}

/// The answer to an open page.
pub fn page(path: &str) -> Vec<u8> {
    match path {
        "/shardcast.js" => http::response(
            200,
            "text/javascript; charset=utf-8",
            &[],
            CLIENT_JS.as_bytes(),
        ),
        _ => console(),
    }
}

/// The console page's answer.
pub fn console() -> Vec<u8> {
    http::response(
        200,
        "text/html; charset=utf-8",
        &[],
        CONSOLE_HTML.as_bytes(),
    )
}

/// Whether `path` is part of the server API: calls that change or reveal
/// state, which need a key.
pub fn is_api(path: &str) -> bool {
    path == "/status" || path == "/api" || path.starts_with("/api/")
}

/// The answer to a request the server API refused, as JSON with its reason.
pub fn denied(why: Denied) -> Vec<u8> {
    let body = json!({
        "error": if why == Denied::Disabled { "not found" } else { "unauthorized" },
        "reason": why.as_str(),
        "message": why.to_string(),
    });
    let extra: &[(&str, &str)] = if why.status() == 401 {
        &[("WWW-Authenticate", "apikey")]
    } else {
        &[]
    };
    http::response(
        why.status(),
        "application/json",
        extra,
        body.to_string().as_bytes(),
    )
}

/// The probe routes, `/healthz`, `/readyz` and `/metrics`, which need no
/// shard: the service port and the admin listener both answer them from here.
/// None for any other path.
pub fn probe(shared: &Shared, method: &str, path: &str) -> Option<Vec<u8>> {
    let get = matches!(method, "GET" | "HEAD");
    Some(match path {
        "/healthz" | "/readyz" | "/metrics" if !get => method_not_allowed(),
        "/healthz" => http::json(200, &json!({ "status": "ok" })),
        "/readyz" => {
            let state = shared.readiness.state();
            let code = if state == State::Ready { 200 } else { 503 };
            http::json(code, &json!({ "status": state.as_str() }))
        }
        "/metrics" => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &[],
            shared
                .metrics
                .render(shared.readiness.redis_up())
                .as_bytes(),
        ),
        _ => return None,
    })
}

fn method_not_allowed() -> Vec<u8> {
    http::response(
        405,
        "application/json",
        &[],
        br#"{"error":"method not allowed"}"#,
    )
}

/// The service port's answer to a plain HTTP request: probes and the
/// console for anyone, the server API (and `/metrics`) for a request with a
/// key.
pub async fn answer(shard: &Context, req: &Request) -> Vec<u8> {
    let path = req.path.as_str();
    let method = req.method.as_str();
    if path == "/metrics" || is_api(path) {
        if let Err(why) = shard.shared.api_keys.check(req) {
            shard.metrics().denied(why.into());
            if let Some(unlogged) = shard.log_gate(ErrorKind::Unauthorized) {
                tracing::info!(
                    path,
                    reason = why.as_str(),
                    unlogged,
                    "server API call refused: {}",
                    why.status()
                );
            }
            return denied(why);
        }
    }
    if let Some(answer) = probe(&shard.shared, method, path) {
        return answer;
    }
    match (method, path) {
        _ if is_page(method, path) => page(path),
        _ if is_api(path) => api(shard, req).await,
        _ => {
            shard.metrics().error(ErrorKind::NotFound);
            http::error(404, "not found")
        }
    }
}

/// The server API, for a request already let in: status, sessions and
/// broadcast.
pub async fn api(shard: &Context, req: &Request) -> Vec<u8> {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/status") => http::json(200, &status(shard)),
        ("POST", "/api/broadcast") => broadcast(shard, &req.rest).await,
        (_, "/status" | "/api/broadcast") => method_not_allowed(),
        (method, _) => {
            if let Some(id) = path.strip_prefix("/api/sessions/") {
                return session_api(shard, method, id).await;
            }
            let room = path.strip_prefix("/api/rooms/");
            if let Some(room) = room.and_then(|r| r.strip_suffix("/presence")) {
                return presence_api(shard, method, room, req).await;
            }
            shard.metrics().error(ErrorKind::NotFound);
            http::error(404, "not found")
        }
    }
}

/// Members listed by a presence read unless `limit` says otherwise.
const PRESENCE_LIMIT: usize = 1000;

/// `GET /api/rooms/{room}/presence[?limit=N]`: the room's members on every
/// node (each session once) and how many sockets are in it.
async fn presence_api(shard: &Context, method: &str, room: &str, req: &Request) -> Vec<u8> {
    if !matches!(method, "GET" | "HEAD") {
        return method_not_allowed();
    }
    if let Err(e) = check_room(room) {
        shard.metrics().error(ErrorKind::BadRequest);
        return http::error(400, &e.to_string());
    }
    if !shard.presence.enabled() {
        shard.metrics().error(ErrorKind::NotFound);
        return http::error(404, "presence is off");
    }
    let most = crate::presence::READ_MAX;
    let limit = match req.param(&["limit"]).map(str::parse::<usize>) {
        None => PRESENCE_LIMIT,
        Some(Ok(n)) if (1..=most).contains(&n) => n,
        Some(_) => {
            shard.metrics().error(ErrorKind::BadRequest);
            return http::error(400, &format!("limit must be 1 to {most}"));
        }
    };
    let (slot, cmd) = shard.presence.read_cmd(room, limit);
    let read = match shard.redis().query(Some(slot), &cmd).await {
        Ok(v) => crate::presence::read_reply(&v, limit),
        Err(e) => Err(e),
    };
    match read {
        Ok(r) => http::json(
            200,
            &json!({
                "room": room,
                "count": r.members.len(),
                "sockets": r.sockets,
                "members": r.members,
                "truncated": r.truncated,
            }),
        ),
        Err(e) => {
            tracing::warn!(room, error = %e, "presence not read: 503");
            http::error(503, "redis_unavailable")
        }
    }
}

fn status(shard: &Context) -> serde_json::Value {
    let s = &shard.shared;
    let conns: Vec<u64> = s
        .metrics
        .shards
        .iter()
        .map(|m| m.connections_active.get())
        .collect();
    let redis = if s.readiness.redis_up() { "up" } else { "down" };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "color": s.cfg.color,
        "shards": s.metrics.shards.len(),
        "connections": conns.iter().sum::<u64>(),
        "connections_per_shard": conns,
        "uptime_s": s.started.elapsed().as_secs(),
        "redis": redis,
        "pubsub": s.cfg.pubsub,
        "io": s.cfg.io,
        "rooms_per_shard": s.metrics.shards.iter().map(|m| m.rooms_active.get()).collect::<Vec<_>>(),
        // Running totals; the console charts their rates.
        "messages_per_shard": s.metrics.shards.iter().map(|m| m.messages_total.get()).collect::<Vec<_>>(),
        "broadcasts_per_shard": s.metrics.shards.iter().map(|m| m.broadcasts_delivered_total.get()).collect::<Vec<_>>(),
        "ready": s.readiness.state().as_str(),
        "pid": std::process::id(),
    })
}

async fn session_api(shard: &Context, method: &str, raw_id: &str) -> Vec<u8> {
    let Some(id) = crate::session::parse_id(raw_id) else {
        return http::error(404, "unknown session");
    };
    match method {
        "GET" | "HEAD" => match shard.store.lookup(&id).await {
            Ok(Some((found, ttl_ms))) => {
                // As a resume would join them: well-formed names only.
                let rooms: Vec<&str> = found
                    .rooms
                    .as_deref()
                    .unwrap_or_default()
                    .split(' ')
                    .filter(|r| crate::pubsub::check_room(r).is_ok())
                    .collect();
                http::json(
                    200,
                    &json!({ "session_id": id.to_string(), "count": found.count, "rooms": rooms, "ttl_s": ttl_ms.div_ceil(1000) }),
                )
            }
            Ok(None) => http::error(404, "unknown session"),
            Err(_) => http::error(503, "redis_unavailable"),
        },
        "DELETE" => {
            match shard
                .store
                .delete(&id, shard.pubsub.verbs().kick(&id))
                .await
            {
                Ok(()) => http::response(204, "application/json", &[], b""),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "session not deleted: 503");
                    http::error(503, protocol::write_refusal(&e))
                }
            }
        }
        _ => method_not_allowed(),
    }
}

async fn broadcast(shard: &Context, body: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        message: String,
        #[serde(default)]
        room: Option<String>,
    }
    let b = match serde_json::from_slice::<Body>(body) {
        Ok(b) => b,
        Err(e) => {
            shard.metrics().error(ErrorKind::BadRequest);
            tracing::info!(error = %e, "broadcast refused: 400");
            return http::error(
                400,
                "body must be {\"message\": \"...\"} with an optional \"room\"",
            );
        }
    };
    if let Some(room) = &b.room {
        if let Err(e) = check_room(room) {
            shard.metrics().error(ErrorKind::BadRequest);
            tracing::info!(room = %room, "broadcast refused: bad room: 400");
            return http::error(400, &e.to_string());
        }
    }
    match shard
        .history
        .publish(shard.redis(), b.room.as_deref(), &b.message)
        .await
    {
        // Redis counts subscriptions, and each shard (of any process)
        // holding the channel has one: for a room, the shards where it has
        // members. Sockets are not counted anywhere on the way.
        Ok((piece, n)) => {
            let mut body = json!({ "status": "accepted", "shards": n });
            if let Some(room) = &b.room {
                body["room"] = room.as_str().into();
            }
            if let Some(p) = piece {
                body["offset"] = p.offset.to_string().into();
                if let Some(e) = p.epoch {
                    body["epoch"] = e.to_string().into();
                }
            }
            http::json(202, &body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "broadcast not published: 503");
            http::error(503, protocol::write_refusal(&e))
        }
    }
}
