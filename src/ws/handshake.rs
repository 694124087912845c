//! Checks an upgrade request and builds the `101` answer.

use crate::http::Request;
use crate::ws::deflate::{self, Agreed};

/// Why an upgrade was refused: the status and a short reason for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
}

fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal {
        status,
        reason,
        headers: &[],
    }
}

/// Validates an upgrade to `/ws/chat/` and returns the accept key.
pub fn validate(req: &Request) -> Result<String, Refusal> {
    if req.method != "GET" {
        return Err(refuse(400, "websocket upgrade needs GET"));
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(Refusal {
            status: 426,
            reason: "this endpoint speaks websocket only",
            headers: &[("Upgrade", "websocket")],
        });
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(refuse(400, "missing Connection: Upgrade"));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal {
            status: 426,
            reason: "unsupported websocket version (13 only)",
            headers: &[("Sec-WebSocket-Version", "13")],
        });
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    // A key is 16 random bytes in base64: 24 characters ending in "==".
    let well_formed = key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return Err(refuse(400, "missing or malformed Sec-WebSocket-Key"));
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// What the upgrade agrees of permessage-deflate, when the server offers
/// it (`enabled`) and the request asks for it.
pub fn deflate(req: &Request, enabled: bool) -> Option<Agreed> {
    if !enabled {
        return None;
    }
    deflate::negotiate(
        req.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.as_str()),
    )
}

/// The `101` response head, with the extension agreed, if any.
pub fn accept_response(accept: &str, agreed: Option<&Agreed>) -> Vec<u8> {
    let ext = agreed
        .map(|a| format!("Sec-WebSocket-Extensions: {}\r\n", a.answer))
        .unwrap_or_default();
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn req(extra: &str) -> Request {
        let raw = format!("GET /ws/chat/ HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        parse_head(raw.as_bytes()).unwrap().unwrap()
    }

    const OK: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn rfc_sample_key() {
        assert_eq!(validate(&req(OK)).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refusals() {
        assert_eq!(validate(&req("")).unwrap_err().status, 426);
        assert_eq!(
            validate(&req(&OK.replace("13", "8"))).unwrap_err().status,
            426
        );
        let no_key = OK.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(validate(&req(&no_key)).unwrap_err().status, 400);
        assert_eq!(
            validate(&req(&OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            validate(&req(&OK.replace("Connection: Upgrade", "Connection: close")))
                .unwrap_err()
                .status,
            400
        );
        let mut post = req(OK);
        post.method = "POST".into();
        assert_eq!(validate(&post).unwrap_err().status, 400);
    }
}
