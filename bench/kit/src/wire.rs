//! The client side of RFC 6455, hand-rolled for the generator's hot path: the
//! upgrade request and its answer, masked frames out, unmasked frames in. No
//! call here allocates; callers hand in the buffers they reuse. Tests use
//! the same calls with buffers of their own.

use std::fmt::Write as _;

/// The key every connection sends. RFC 6455 asks for a random nonce so that
/// caches cannot replay an answer; a load generator on loopback has no cache
/// to fool, and one fixed key lets the expected accept value be computed once.
pub const KEY: &str = "c2hhcmRjYXN0LWJlbmNoIQ==";

/// Largest server frame the generator accepts. The contract's replies are tens
/// of bytes and a broadcast is bounded by the server's body limit (64 KiB).
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the upgrade was answered {0}")]
    Status(u16),
    #[error("the upgrade answer is not valid HTTP")]
    BadHttp,
    #[error("the upgrade answer has a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("the server sent a masked frame")]
    Masked,
    #[error("the server sent a fragmented frame")]
    Fragmented,
    #[error("the server sent a frame with reserved bits or opcode")]
    Reserved,
    #[error("the server sent a frame over {MAX_FRAME} bytes")]
    TooBig,
}

/// Writes the upgrade request for `path` (which may carry a query).
pub fn upgrade_request(out: &mut Vec<u8>, host: &str, path: &str, session: Option<&str>) {
    upgrade_request_with(out, host, path, session, "");
}

/// [`upgrade_request`] with more header lines (each ending in CRLF), such
/// as an extension offer.
pub fn upgrade_request_with(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    session: Option<&str>,
    extra: &str,
) {
    let mut s = String::with_capacity(256);
    s.push_str("GET ");
    s.push_str(path);
    if let Some(id) = session {
        s.push(if path.contains('?') { '&' } else { '?' });
        s.push_str("session_id=");
        s.push_str(id);
    }
    let _ = write!(
        s,
        " HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    out.extend_from_slice(s.as_bytes());
}

/// The accept value a correct server answers to [`KEY`].
pub fn expected_accept() -> String {
    tungstenite::handshake::derive_accept_key(KEY.as_bytes())
}

/// Parses the upgrade answer at the front of `buf`: `Ok(None)` until the head
/// is complete, then the length of the head (frames may follow in the same read).
pub fn parse_upgrade(buf: &[u8], accept: &str) -> Result<Option<usize>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError::BadHttp),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(WireError::Status(code));
    }
    let ok = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
    });
    if !ok {
        return Err(WireError::BadAccept);
    }
    Ok(Some(len))
}

/// Appends one masked, final text frame carrying `payload`.
pub fn text_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    masked(out, 0x81, payload, mask);
}

/// Appends a masked refresh control frame: a binary message holding
/// `{"refresh":"<token>"}`, which replaces the socket's token (binary, so it
/// is never counted as a text message).
pub fn refresh_frame(out: &mut Vec<u8>, token: &str, mask: [u8; 4]) {
    command_frame(out, &serde_json::json!({ "refresh": token }), mask);
}

/// Appends a masked control frame: a binary message holding `command`
/// (`{"join":"lobby"}`, `{"leave":"lobby"}`, ...).
pub fn command_frame(out: &mut Vec<u8>, command: &serde_json::Value, mask: [u8; 4]) {
    masked(out, 0x82, command.to_string().as_bytes(), mask);
}

/// Appends a masked Close frame with `code` and no reason.
pub fn close_frame(out: &mut Vec<u8>, code: u16, mask: [u8; 4]) {
    masked(out, 0x88, &code.to_be_bytes(), mask);
}

/// Appends a masked Pong echoing `payload`.
pub fn pong_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    masked(out, 0x8A, payload, mask);
}

/// Appends a masked frame with the first byte `first` (FIN, reserved bits,
/// opcode: whatever the caller wants the server to see) and the shortest
/// length encoding.
pub fn masked(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(first);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// One frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary,
    /// The close code, when the frame had one.
    Close(Option<u16>),
    Ping(&'a [u8]),
    Pong,
}

/// A server frame as it came: its first byte (FIN, reserved bits, opcode)
/// and its payload.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub first: u8,
    pub payload: &'a [u8],
}

/// The unmasked frame at the front of `buf`, whatever its first byte:
/// `Ok(None)` until it is complete, then the frame and the bytes it used.
pub fn raw_frame(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(WireError::Masked);
    }
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n > MAX_FRAME as u64 {
                return Err(WireError::TooBig);
            }
            (n as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        return Err(WireError::TooBig);
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    let frame = RawFrame {
        first: buf[0],
        payload: &buf[head..head + len],
    };
    Ok(Some((frame, head + len)))
}

/// Parses the frame at the front of `buf`: `Ok(None)` until it is complete,
/// then the frame and the bytes it used. Servers never mask (RFC 6455 5.1),
/// and the contract's server never fragments a message.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some((RawFrame { first: b0, payload }, used)) = raw_frame(buf)? else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WireError::Reserved);
    }
    let len = payload.len();
    let fin = b0 & 0x80 != 0;
    let frame = match b0 & 0x0F {
        0x1 if fin => Frame::Text(payload),
        0x2 if fin => Frame::Binary,
        0x0..=0x2 => return Err(WireError::Fragmented),
        0x8 => Frame::Close((len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
        0x9 => Frame::Ping(payload),
        0xA => Frame::Pong,
        _ => return Err(WireError::Reserved),
    };
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, head) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let mask = &frame[head..head + 4];
        let body = &frame[head + 4..];
        assert_eq!(body.len(), len);
        (
            frame[0],
            body.iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect(),
        )
    }

    #[test]
    fn text_frames_are_masked_and_sized_for_every_length_class() {
        for n in [0usize, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let mut out = Vec::new();
            text_frame(&mut out, &payload, [1, 2, 3, 4]);
            let (b0, body) = unmask(&out);
            assert_eq!(b0, 0x81);
            assert_eq!(body, payload, "length {n}");
        }
    }

    #[test]
    fn close_frame_carries_the_code() {
        let mut out = Vec::new();
        close_frame(&mut out, 1000, [9, 8, 7, 6]);
        let (b0, body) = unmask(&out);
        assert_eq!(b0, 0x88);
        assert_eq!(body, 1000u16.to_be_bytes());
    }

    #[test]
    fn server_frames_parse_whole_and_wait_when_partial() {
        let mut buf = vec![0x81, 11];
        buf.extend_from_slice(b"{\"count\":1}");
        buf.extend_from_slice(&[0x88, 2, 0x03, 0xE9]);
        for cut in 0..13 {
            assert_eq!(next_frame(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (f, used) = next_frame(&buf).unwrap().unwrap();
        assert_eq!(f, Frame::Text(b"{\"count\":1}"));
        let (f, used2) = next_frame(&buf[used..]).unwrap().unwrap();
        assert_eq!(f, Frame::Close(Some(1001)));
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn extended_lengths_parse() {
        let mut buf = vec![0x81, 126, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(b'x', 256));
        let (f, used) = next_frame(&buf).unwrap().unwrap();
        assert_eq!(f, Frame::Text(&buf[4..]));
        assert_eq!(used, 260);
        let mut big = vec![0x81, 127];
        big.extend_from_slice(&((MAX_FRAME as u64) + 1).to_be_bytes());
        assert_eq!(next_frame(&big), Err(WireError::TooBig));
    }

    #[test]
    fn bad_server_frames_are_errors() {
        assert_eq!(next_frame(&[0x81, 0x85]), Err(WireError::Masked));
        assert_eq!(next_frame(&[0xC1, 0]), Err(WireError::Reserved));
        assert_eq!(next_frame(&[0x01, 0]), Err(WireError::Fragmented));
        assert_eq!(next_frame(&[0x83, 0]), Err(WireError::Reserved));
        assert_eq!(
            next_frame(&[0x88, 0]).unwrap().unwrap().0,
            Frame::Close(None)
        );
    }

    #[test]
    fn upgrade_request_appends_the_session() {
        let mut out = Vec::new();
        upgrade_request(&mut out, "h:1", "/ws/chat/", Some("abc"));
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /ws/chat/?session_id=abc HTTP/1.1\r\nHost: h:1\r\n"));
        let mut out = Vec::new();
        upgrade_request(&mut out, "h", "/ws/chat/?room=a", Some("abc"));
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("GET /ws/chat/?room=a&session_id=abc "));
    }

    #[test]
    fn upgrade_answer_is_checked() {
        let accept = expected_accept();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let mut good = head.clone().into_bytes();
        good.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade(&good, &accept), Ok(Some(head.len())));
        assert_eq!(parse_upgrade(&good[..20], &accept), Ok(None));
        let wrong = head.replace(&accept, "nope");
        assert_eq!(
            parse_upgrade(wrong.as_bytes(), &accept),
            Err(WireError::BadAccept)
        );
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_upgrade(busy, &accept), Err(WireError::Status(503)));
        assert_eq!(
            parse_upgrade(b"SSH-2.0\r\n\r\n", &accept),
            Err(WireError::BadHttp)
        );
    }
}
