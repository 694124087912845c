//! A node of the cluster as `--node` names it (`http://host:port`): the
//! address to dial, the Host header to send, and the upgrade target of a
//! socket that joins a room and maybe recovers missed broadcasts.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// The WebSocket endpoint on every node.
pub const WS_PATH: &str = "/ws/chat/";
pub const BROADCAST_PATH: &str = "/api/broadcast";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Resolved once, so thousands of connects do not each ask DNS.
    pub addr: SocketAddr,
    /// `host:port` as given, for the Host header.
    pub authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("`{0}`: a node is http://HOST:PORT")]
    Scheme(String),
    #[error("`{0}`: no host")]
    NoHost(String),
    #[error("`{0}`: {1}")]
    Resolve(String, String),
}

/// The address of `host[:port]` (port 80 when none is given), resolved once.
pub fn resolve(authority: &str) -> Result<SocketAddr, String> {
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the host has no address".to_string())
}

/// Takes `http://host:port`, with or without a trailing `/`; `host:port`
/// alone is accepted too.
pub fn parse(s: &str) -> Result<Node, NodeError> {
    let rest = match s.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return Err(NodeError::Scheme(s.into())),
        None => s,
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(NodeError::Scheme(s.into()));
    }
    if authority.is_empty() {
        return Err(NodeError::NoHost(s.into()));
    }
    let addr = resolve(authority).map_err(|e| NodeError::Resolve(s.into(), e))?;
    Ok(Node {
        addr,
        authority: authority.to_string(),
    })
}

/// Writes the upgrade target of a socket of `room` into `out`: the room
/// always, and `since` after a node died. The session id, when resuming, is
/// added by the upgrade request. All are URL-safe as generated (UUIDs,
/// `room-N`, `ms-seq`), so nothing is escaped.
pub fn ws_path(out: &mut String, room: u32, since: Option<(u64, u64)>) {
    out.clear();
    let _ = write!(out, "{WS_PATH}?room={}", super::layout::room_name(room));
    if let Some((ms, seq)) = since {
        let _ = write!(out, "&since={ms}-{seq}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse() {
        let n = parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(n.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(n.authority, "127.0.0.1:8080");
        assert_eq!(parse("http://127.0.0.1:8080/").unwrap(), n);
        assert_eq!(parse("127.0.0.1:8080").unwrap(), n);
        assert_eq!(parse("http://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(
            parse("http://[::1]:9").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert!(matches!(parse("https://x:1"), Err(NodeError::Scheme(_))));
        assert!(matches!(parse("ws://x:1"), Err(NodeError::Scheme(_))));
        assert!(matches!(parse("http://x:1/ws"), Err(NodeError::Scheme(_))));
        assert!(matches!(parse("http://"), Err(NodeError::NoHost(_))));
    }

    #[test]
    fn paths_carry_room_and_since() {
        let mut p = String::from("old");
        ws_path(&mut p, 2, None);
        assert_eq!(p, "/ws/chat/?room=room-2");
        ws_path(&mut p, 0, Some((1_700_000_000_000, 3)));
        assert_eq!(p, "/ws/chat/?room=room-0&since=1700000000000-3");
    }
}
