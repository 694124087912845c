//! HTTP/1.1 request heads: read with a size cap (the deadline is the
//! caller's), parsed with httparse; and the plain responses the service sends.

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

/// Headers a request may carry; more is treated like a too-large head.
const MAX_HEADERS: usize = 64;

/// Largest request body read (`POST /api/broadcast`).
pub const MAX_BODY: usize = 64 << 10;

/// A parsed request head.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Bytes after the head that arrived with it (a body, or early frames).
    pub rest: Vec<u8>,
}

impl Request {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter named one of `names`, as sent (not
    /// percent-decoded: every value the service reads is a plain token); a
    /// bare `name` reads as an empty value, which its reader refuses.
    pub fn param(&self, names: &[&str]) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            names.contains(&k).then_some(v)
        })
    }

    /// Every value of a parameter that may be given more than once, in the
    /// order given.
    pub fn params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query.split('&').filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than the limit")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before a complete head")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses a complete head from `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Ok(Some(Request {
                method: req.method.unwrap_or("").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                rest: buf[n..].to_vec(),
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Reads until a complete head arrives or `max` bytes did not hold one.
pub async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Request, HeadError> {
    // One buffer, on the heap (a future is as large as its largest await
    // point), read into directly: 1 KiB holds a usual upgrade request, and it
    // doubles up to `max` only for a head that needs it. Thousands of heads in
    // progress (a slowloris) then cost about 1 KiB each here.
    let mut buf = vec![0u8; 1024.min(max.max(1))];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            let grown = (buf.len() * 2).min(max);
            buf.resize(grown, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        filled += n;
        if let Some(req) = parse_head(&buf[..filled])? {
            return Ok(req);
        }
        if filled >= max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Reads a head, and for a POST its body (up to `MAX_BODY`, by its
/// Content-Length). The deadline is the caller's.
pub async fn read_request(stream: &mut TcpStream, max_head: usize) -> Result<Request, HeadError> {
    let mut req = read_head(stream, max_head).await?;
    if req.method == "POST" {
        let len: usize = match req.header("content-length").map(|v| v.trim().parse()) {
            Some(Ok(n)) => n,
            Some(Err(_)) => return Err(HeadError::Malformed("bad Content-Length".into())),
            None => 0,
        };
        if len > MAX_BODY {
            return Err(HeadError::Malformed("body too large".into()));
        }
        let mut chunk = vec![0u8; 4096];
        while req.rest.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HeadError::Closed);
            }
            req.rest.extend_from_slice(&chunk[..n]);
        }
        req.rest.truncate(len);
    }
    Ok(req)
}

/// The answer to a HEAD request: the same head as GET, without the body.
pub fn head_only(mut answer: Vec<u8>) -> Vec<u8> {
    if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
        answer.truncate(end + 4);
    }
    answer
}

/// A complete response that closes the connection after it.
pub fn response(status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    out.extend_from_slice(
        format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for (k, v) in extra {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\nCache-Control: no-store\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// A JSON response.
pub fn json(status: u16, body: &serde_json::Value) -> Vec<u8> {
    response(status, "application/json", &[], body.to_string().as_bytes())
}

/// A JSON error body `{"error": "..."}` with a short reason.
pub fn error(status: u16, msg: &str) -> Vec<u8> {
    json(status, &serde_json::json!({ "error": msg }))
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_by_name_and_alias() {
        let req = |q: &str| Request {
            query: q.into(),
            ..Request::default()
        };
        let ids = ["session_id", "session_uuid", "session"];
        assert_eq!(req("a=1&session_id=x").param(&ids), Some("x"));
        assert_eq!(req("session_uuid=y&session_id=x").param(&ids), Some("y"));
        assert_eq!(req("session=z&b").param(&ids), Some("z"));
        assert_eq!(req("sessionx=z&xsession=w").param(&ids), None);
        assert_eq!(req("room=").param(&["room"]), Some(""));
        // A bare name is an empty value: its reader refuses it, loudly.
        assert_eq!(req("since&room=a").param(&["since"]), Some(""));
        assert_eq!(req("").param(&["token"]), None);
    }

    #[test]
    fn parses_path_query_headers_and_rest() {
        let raw = b"GET /ws/chat/?session_id=abc HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n\x81\x80";
        let r = parse_head(raw).unwrap().unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/ws/chat/");
        assert_eq!(r.query, "session_id=abc");
        assert_eq!(r.header("upgrade"), Some("WebSocket"));
        assert!(r.header_has_token("connection", "upgrade"));
        assert_eq!(r.rest, b"\x81\x80");
    }

    #[test]
    fn partial_malformed_and_too_many_headers() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(matches!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&many), Err(HeadError::TooLarge)));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(error(404, "not found")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 21\r\n"));
        assert!(r.contains("Connection: close"));
        assert!(r.ends_with("{\"error\":\"not found\"}"));
    }
}
