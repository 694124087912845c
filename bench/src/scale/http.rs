//! `POST /api/broadcast` from the orchestrator: one short blocking HTTP/1.1
//! exchange per broadcast, bounded at every step, stamped right before the
//! request is written so the stamp and the tag inside it agree.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::node::{Node, BROADCAST_PATH};
use crate::sys::now_ns;

/// Largest answer read; the contract's is a few dozen bytes.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("no answer within {0:?}")]
    Silent(Duration),
    #[error("answered {0}: {1}")]
    Status(u16, String),
    #[error("unreadable answer")]
    Garbled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Monotonic ns taken right before the request was written.
    pub sent_ns: u64,
    /// `shards` from the 202 body (the shards that held the channel), when
    /// it had one.
    pub shards: Option<u64>,
}

/// Publishes `message` (to `room` only, if given) through `node`. The stamp
/// is taken by `make(t_ns)`, which builds the message from it.
pub fn broadcast(
    node: &Node,
    room: Option<&str>,
    make: impl FnOnce(u64) -> String,
    limit: Duration,
) -> Result<Accepted, PostError> {
    broadcast_at(node, BROADCAST_PATH, room, make, limit)
}

/// [`broadcast`] to `path` (the broadcast path, which may carry a query:
/// the uWebSockets peer takes its room as `?room=`).
pub fn broadcast_at(
    node: &Node,
    path: &str,
    room: Option<&str>,
    make: impl FnOnce(u64) -> String,
    limit: Duration,
) -> Result<Accepted, PostError> {
    let mut tcp = TcpStream::connect_timeout(&node.addr, limit).map_err(PostError::Connect)?;
    tcp.set_read_timeout(Some(limit)).map_err(PostError::Io)?;
    tcp.set_write_timeout(Some(limit)).map_err(PostError::Io)?;
    let _ = tcp.set_nodelay(true);
    let sent_ns = now_ns();
    let message = make(sent_ns);
    let body = match room {
        Some(r) => serde_json::json!({ "message": message, "room": r }),
        None => serde_json::json!({ "message": message }),
    }
    .to_string();
    // The nodes' server API key, as the operator gives it to them.
    let key = std::env::var("SHARDCAST_API_KEY")
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         {key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        node.authority,
        body.len()
    );
    // A socket timeout shows up as WouldBlock or TimedOut; name it for what it is.
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PostError::Silent(limit),
        _ => PostError::Io(e),
    };
    tcp.write_all(request.as_bytes()).map_err(io_err)?;
    let answer = read_answer(&mut tcp).map_err(|e| match e {
        PostError::Io(e) => io_err(e),
        e => e,
    })?;
    let (status, body) = parse_answer(&answer)?;
    if status != 202 {
        return Err(PostError::Status(
            status,
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ));
    }
    let shards = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("shards").and_then(|s| s.as_u64()));
    Ok(Accepted { sent_ns, shards })
}

/// Reads the answer to its end: the request asked the server to close.
fn read_answer(tcp: &mut TcpStream) -> Result<Vec<u8>, PostError> {
    let mut buf = Vec::with_capacity(512);
    tcp.take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(PostError::Io)?;
    if buf.len() > MAX_ANSWER {
        return Err(PostError::Garbled);
    }
    Ok(buf)
}

/// (status, body) of a complete answer.
pub fn parse_answer(buf: &[u8]) -> Result<(u16, &[u8]), PostError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            Ok((r.code.ok_or(PostError::Garbled)?, &buf[head..]))
        }
        _ => Err(PostError::Garbled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn answers_parse() {
        let a = b"HTTP/1.1 202 Accepted\r\nContent-Length: 41\r\n\r\n{\"status\":\"accepted\",\"shards\":3}";
        let (code, body) = parse_answer(a).unwrap();
        assert_eq!(code, 202);
        assert!(body.starts_with(b"{\"status\""));
        assert!(parse_answer(b"HTTP/1.1 202 Acc").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }

    /// A one-shot server: the request must carry the body, the answer is 202.
    #[test]
    fn a_broadcast_is_posted_and_stamped() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let node = super::super::node::parse(&l.local_addr().unwrap().to_string()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.ends_with(b"}") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&chunk[..n]);
            }
            let body = br#"{"status":"accepted","shards":2}"#;
            write!(
                s,
                "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(body).unwrap();
            String::from_utf8(req).unwrap()
        });
        let before = now_ns();
        let a = broadcast(
            &node,
            Some("room-0"),
            |t| format!("room:0:{t}"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(a.sent_ns >= before);
        assert_eq!(a.shards, Some(2));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /api/broadcast HTTP/1.1\r\n"));
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["room"], "room-0");
        assert_eq!(body["message"], format!("room:0:{}", a.sent_ns));
    }
}
