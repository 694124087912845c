//! The JSON payloads the server sends, as PROTOCOL.md words them. The
//! per-message reply is written by hand (it is the hot path); the rest go
//! through serde_json so strings are always escaped right.

use serde_json::json;
use uuid::Uuid;

use crate::history::{Lost, Offset, Piece};
use crate::redis::{Applied, RedisError};

/// `{"count":n}` appended to `out`; `{"count":n,"confirmed":false}` for a
/// message counted in sync durability that Redis's master may hold but too
/// few replicas confirmed (or whose write's outcome is not known yet): it
/// is counted, and written again until it is confirmed.
pub fn count(out: &mut Vec<u8>, n: u64, confirmed: bool) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(b.format(n).as_bytes());
    if !confirmed {
        out.extend_from_slice(b",\"confirmed\":false");
    }
    out.push(b'}');
}

/// Why a write the server API asked for did not go as asked (its `503`
/// body): `replicas_unconfirmed`, the master took it (a broadcast went
/// out, a tombstone is there) but fewer replicas than `redis_min_replicas`
/// hold it, so a failover may undo it; `outcome_unknown`, the request
/// reached Redis and its reply was lost with the connection;
/// `redis_unavailable`, it was not done. Each is true of its case.
pub fn write_refusal(e: &RedisError) -> &'static str {
    match e.applied() {
        Applied::Unconfirmed => "replicas_unconfirmed",
        Applied::Unknown => "outcome_unknown",
        Applied::No => "redis_unavailable",
    }
}

/// What the welcome says about history: the socket's position (and, for
/// clients of before, its offset on the global channel), and, to a socket
/// that asked to recover, whether it gets everything it missed.
#[derive(Debug, Clone, Default)]
pub struct WelcomeHistory {
    pub offset: Option<Offset>,
    pub position: Option<String>,
    pub recovered: Option<bool>,
}

pub fn welcome(id: &Uuid, count: u64, resumed: bool, history: WelcomeHistory) -> String {
    let mut w = json!({ "session_id": id.to_string(), "count": count, "resumed": resumed });
    if let Some(o) = history.offset {
        w["offset"] = o.to_string().into();
    }
    if let Some(p) = history.position {
        w["position"] = p.into();
    }
    if let Some(r) = history.recovered {
        w["recovered"] = r.into();
    }
    w.to_string()
}

/// Told after the welcome, once per channel whose missed broadcasts a
/// recovery could not all give: the client refetches that channel's state.
pub fn unrecovered(room: Option<&str>, why: Lost) -> String {
    let mut u = json!({ "reason": why.as_str() });
    if let Some(r) = room {
        u["room"] = r.into();
    }
    json!({ "unrecovered": u }).to_string()
}

pub fn heartbeat(ts: &str) -> String {
    json!({ "ts": ts }).to_string()
}

/// Goodbye after the client's Close.
pub fn bye(total: u64) -> String {
    json!({ "bye": true, "total": total }).to_string()
}

/// Goodbye when the server drains.
pub fn bye_shutdown(total: u64, retry_after_ms: u64) -> String {
    json!({ "bye": true, "total": total, "reason": "shutdown", "retry_after_ms": retry_after_ms })
        .to_string()
}

/// Goodbye to a socket closed for silence.
pub fn bye_idle(total: u64) -> String {
    json!({ "bye": true, "total": total, "reason": "idle" }).to_string()
}

/// Goodbye to a socket whose token ran out (`reason: token_expired`) or
/// whose refresh was refused (`reason: token_refused`, with why); Close
/// 4001 follows.
pub fn bye_token(total: u64, reason: &str, why: Option<&str>) -> String {
    let mut b = json!({ "bye": true, "total": total, "reason": reason });
    if let Some(w) = why {
        b["error"] = w.into();
    }
    b.to_string()
}

/// The answer to a refresh that replaced the socket's token: the new
/// token's `exp` (Unix seconds), absent when it has none.
pub fn refreshed(exp: Option<f64>) -> String {
    let mut r = json!({ "refreshed": true });
    if let Some(e) = exp {
        r["exp"] = e.into();
    }
    r.to_string()
}

/// The answer to a join: the room, the socket's position on it alone
/// (with history), and, when the join asked with a position, whether what
/// follows is every broadcast it missed there. `restored`: not an answer
/// but a room of a resumed session, joined again at the upgrade.
pub fn joined(
    room: &str,
    position: Option<&str>,
    recovered: Option<bool>,
    restored: bool,
) -> String {
    let mut j = json!({ "joined": room });
    if restored {
        j["restored"] = true.into();
    }
    if let Some(p) = position {
        j["position"] = p.into();
    }
    if let Some(r) = recovered {
        j["recovered"] = r.into();
    }
    j.to_string()
}

/// The answer to a leave.
pub fn left(room: &str) -> String {
    json!({ "left": room }).to_string()
}

/// A join or leave refused; the socket stays open. `room` when it is a
/// room's name, `reason` in words.
pub fn room_refusal(error: &str, room: Option<&str>, reason: Option<&str>) -> String {
    let mut e = json!({ "error": error });
    if let Some(r) = room {
        e["room"] = r.into();
    }
    if let Some(w) = reason {
        e["reason"] = w.into();
    }
    e.to_string()
}

/// A room's presence frame: who joined it and who left.
pub fn presence(room: &str, diff: &Diff) -> String {
    json!({ "presence": diff, "room": room }).to_string()
}

pub fn error(kind: &str) -> String {
    json!({ "error": kind }).to_string()
}

/// A broadcast frame: with history, its offset and epoch on its channel,
/// the position of the socket once it has it (when not empty), its room
/// when it went to one, and `"recovered":true` when it comes from history
/// to a socket that reconnected.
pub fn broadcast(
    message: &str,
    history: Option<(Piece, &str)>,
    room: Option<&str>,
    recovered: bool,
) -> String {
    let mut b = json!({ "broadcast": message });
    if recovered {
        b["recovered"] = true.into();
    }
    if let Some((piece, position)) = history {
        b["offset"] = piece.offset.to_string().into();
        if let Some(e) = piece.epoch {
            b["epoch"] = e.to_string().into();
        }
        if !position.is_empty() {
            b["position"] = position.into();
        }
        if let Some(r) = room {
            b["room"] = r.into();
        }
    }
    b.to_string()
}

/// One member of a room as clients and the API see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// A room's changes, as they travel on its channel and reach its members.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diff {
    #[serde(default)]
    pub joins: Vec<Member>,
    #[serde(default)]
    pub leaves: Vec<Member>,
}

/// What travels on Redis channels between shards and processes: a kick
/// (`{"kick":"<session id>"}`, events channel only) or a broadcast
/// (`{"broadcast":"…"}`, with `"offset"` when history is on; the publish
/// script writes that one).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusEvent {
    /// Close live sockets of this session (it was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick: Option<String>,
    /// Send this text to the channel's sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// The epoch of the channel's stream, beside `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The offset before this one in the stream; empty for the first of
    /// its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// Who joined and left a room (rooms that opted in to presence frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Diff>,
}

impl BusEvent {
    pub fn kick(id: String) -> Self {
        Self {
            kick: Some(id),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_exact_json() {
        let mut v = vec![];
        count(&mut v, 12345, true);
        assert_eq!(v, b"{\"count\":12345}");
        v.clear();
        count(&mut v, 7, false);
        assert_eq!(v, b"{\"count\":7,\"confirmed\":false}");
    }

    #[test]
    fn a_refused_write_is_named_by_what_it_did() {
        let unconfirmed = RedisError::Replicas {
            acked: 0,
            wanted: 1,
        };
        assert_eq!(write_refusal(&unconfirmed), "replicas_unconfirmed");
        assert_eq!(
            write_refusal(&RedisError::Io("reset".into())),
            "outcome_unknown"
        );
        assert_eq!(write_refusal(&RedisError::Unavailable), "redis_unavailable");
        assert_eq!(
            write_refusal(&RedisError::Server("READONLY".into())),
            "redis_unavailable"
        );
    }

    #[test]
    fn payloads_parse_as_the_contract_says() {
        let id = Uuid::new_v4();
        let w: serde_json::Value =
            serde_json::from_str(&welcome(&id, 3, true, WelcomeHistory::default())).unwrap();
        assert_eq!(
            w,
            json!({"session_id": id.to_string(), "count": 3, "resumed": true})
        );
        let b: serde_json::Value = serde_json::from_str(&bye_shutdown(9, 250)).unwrap();
        assert_eq!(
            b,
            json!({"bye": true, "total": 9, "reason": "shutdown", "retry_after_ms": 250})
        );
        let m: serde_json::Value =
            serde_json::from_str(&broadcast("a\"b\n", None, Some("r"), false)).unwrap();
        assert_eq!(
            m,
            json!({"broadcast": "a\"b\n"}),
            "no offset, no room: today's frame"
        );
        let at = Offset { ms: 17, seq: 2 };
        let piece = Piece {
            epoch: Some(crate::history::Epoch(0xab)),
            offset: at,
        };
        let m: serde_json::Value = serde_json::from_str(&broadcast(
            "x",
            Some((piece, "1.xyz")),
            Some("lobby"),
            false,
        ))
        .unwrap();
        assert_eq!(
            m,
            json!({"broadcast": "x", "offset": "17-2", "epoch": "00000000000000ab",
                   "position": "1.xyz", "room": "lobby"})
        );
        let h = WelcomeHistory {
            offset: Some(at),
            position: Some("1.xyz".into()),
            recovered: Some(false),
        };
        let w: serde_json::Value = serde_json::from_str(&welcome(&id, 0, false, h)).unwrap();
        assert_eq!(
            (&w["offset"], &w["position"], &w["recovered"]),
            (&json!("17-2"), &json!("1.xyz"), &json!(false))
        );
        let u: serde_json::Value =
            serde_json::from_str(&unrecovered(Some("lobby"), Lost::EpochChanged)).unwrap();
        assert_eq!(
            u,
            json!({"unrecovered": {"room": "lobby", "reason": "epoch_changed"}})
        );
        let e = serde_json::to_string(&BusEvent::kick("x".into())).unwrap();
        assert_eq!(e, r#"{"kick":"x"}"#);
        let b: BusEvent = serde_json::from_str(r#"{"broadcast":"m","offset":"1-0"}"#).unwrap();
        assert_eq!(
            (b.broadcast.as_deref(), b.offset.as_deref()),
            (Some("m"), Some("1-0"))
        );
    }
}
