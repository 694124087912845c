//! The JSON payloads the server sends, as PROTOCOL.md words them. The
//! per-message reply is written by hand (it is the hot path); the rest go
//! through serde_json so strings are always escaped right.

use serde_json::json;
use uuid::Uuid;

/// `{"count":n}` appended to `out`.
pub fn count(out: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(b.format(n).as_bytes());
    out.push(b'}');
}

pub fn welcome(id: &Uuid, count: u64, resumed: bool) -> String {
    json!({ "session_id": id.to_string(), "count": count, "resumed": resumed }).to_string()
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

pub fn error(kind: &str) -> String {
    json!({ "error": kind }).to_string()
}

pub fn broadcast(message: &str) -> String {
    json!({ "broadcast": message }).to_string()
}

/// What travels on the Redis events channel between shards and processes.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusEvent {
    /// Close live sockets of this session (it was deleted).
    Kick(String),
    /// Send this text to every socket.
    Broadcast(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_exact_json() {
        let mut v = vec![];
        count(&mut v, 12345);
        assert_eq!(v, b"{\"count\":12345}");
    }

    #[test]
    fn payloads_parse_as_the_contract_says() {
        let id = Uuid::new_v4();
        let w: serde_json::Value = serde_json::from_str(&welcome(&id, 3, true)).unwrap();
        assert_eq!(
            w,
            json!({"session_id": id.to_string(), "count": 3, "resumed": true})
        );
        let b: serde_json::Value = serde_json::from_str(&bye_shutdown(9, 250)).unwrap();
        assert_eq!(
            b,
            json!({"bye": true, "total": 9, "reason": "shutdown", "retry_after_ms": 250})
        );
        let m: serde_json::Value = serde_json::from_str(&broadcast("a\"b\n")).unwrap();
        assert_eq!(m["broadcast"], "a\"b\n");
        let e = serde_json::to_string(&BusEvent::Kick("x".into())).unwrap();
        assert_eq!(e, r#"{"kick":"x"}"#);
    }
}
