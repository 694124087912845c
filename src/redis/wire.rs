//! The Redis wire from a glommio shard: a RESP reader over a connection's
//! [`Stream`] (the `redis` crate's incremental parser), and a connect to
//! one address that authenticates and selects the database.

use std::io::{self, Read};
use std::time::Duration;

use futures_lite::AsyncReadExt;
use redis::Value;

use super::stream::{Stream, Tls};
use super::{RedisAddr, RedisError};

/// A connect, or a reply, later than this means the peer is gone.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Hands the parser what has arrived (`head`, then `data`); says
/// WouldBlock (not EOF) when it runs dry, so the parser keeps its partial
/// state and can be called again.
struct Feed<'a> {
    head: &'a [u8],
    data: &'a [u8],
    /// How far into `head` then `data` the parser has read.
    pos: &'a mut usize,
    dry: bool,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Both parts in one read: the parser parses between reads, and
        // must not see a piece end where `head` does.
        let mut n = 0;
        for (part, start) in [(self.head, 0), (self.data, self.head.len())] {
            let from = (*self.pos + n).saturating_sub(start);
            let left = part.get(from..).unwrap_or_default();
            let take = left.len().min(out.len() - n);
            out[n..n + take].copy_from_slice(&left[..take]);
            n += take;
        }
        if n == 0 && !out.is_empty() {
            self.dry = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        *self.pos += n;
        Ok(n)
    }
}

/// RESP values read from bytes in pieces as they arrive, cut anywhere: the
/// crate's incremental parser keeps a value's partial state between
/// pieces. What reads Redis's replies and pushes; public for the fuzz
/// targets, which feed it arbitrary bytes in arbitrary pieces.
///
/// Bytes where a value may start are held back from the parser until a
/// byte comes after them: the crate's parser, given a byte that is not a
/// RESP type as the last byte it has where a value starts, takes it for a
/// value still to come and drops it, so garbage cut just so was skipped and
/// what followed it read as the reply (the resp fuzz target found it). A
/// value starts only at the stream's first byte or after a `\n`, and none
/// ends there (every one ends with `\r\n`), so holding them delays no
/// value.
pub struct RespStream {
    parser: redis::Parser,
    /// Held back: each byte in it follows a `\n` (the first: follows
    /// `last`, or starts the stream).
    held: Vec<u8>,
    /// The last byte the parser was given; None before the first.
    last: Option<u8>,
}

impl Default for RespStream {
    fn default() -> Self {
        Self::new()
    }
}

impl RespStream {
    pub fn new() -> Self {
        Self {
            parser: redis::Parser::new(),
            held: Vec::new(),
            last: None,
        }
    }

    /// The next complete value in `data[*pos..]`, with `pos` moved past
    /// the bytes it took. `Ok(None)`: the bytes ran out inside a value,
    /// all of them are taken, and the value goes on in the next piece. An
    /// error is bytes that are not RESP: the connection is done.
    pub fn next(&mut self, data: &[u8], pos: &mut usize) -> Result<Option<Value>, RedisError> {
        let rest = data.get(*pos..).unwrap_or_default();
        let h = self.held.len();
        // The input is `held` then `rest`; it is given up to `k`, whose
        // last byte must not be one where a value may start. Each held
        // byte still is one, so the scan stops at `held`.
        let mut k = h + rest.len();
        while k > h {
            let before = match k {
                1 => self.last,
                _ if k - 2 < h => Some(self.held[k - 2]),
                _ => Some(rest[k - 2 - h]),
            };
            if before.is_some_and(|b| b != b'\n') {
                break;
            }
            k -= 1;
        }
        if k == h {
            k = 0;
        }
        let (head, given) = if k == 0 {
            (&[][..], &[][..])
        } else {
            (&self.held[..], &rest[..k - h])
        };
        let mut used = 0;
        let mut feed = Feed {
            head,
            data: given,
            pos: &mut used,
            dry: false,
        };
        let result = self.parser.parse_value(&mut feed);
        let dry = feed.dry;
        if let Some(i) = used.checked_sub(1) {
            self.last = Some(if i < head.len() {
                head[i]
            } else {
                given[i - head.len()]
            });
        }
        if k == 0 {
            self.held.extend_from_slice(rest);
            *pos = data.len();
        } else if used < h {
            // The parser answered from what it had before the held bytes.
            self.held.drain(..used);
        } else {
            self.held.clear();
            let taken = used - h;
            if taken == given.len() {
                self.held.extend_from_slice(&rest[taken..]);
                *pos = data.len();
            } else {
                *pos += taken;
            }
        }
        match result {
            Ok(v) => Ok(Some(v)),
            // Only the feed's WouldBlock means "more to come".
            Err(e) if dry && e.is_io_error() => Ok(None),
            Err(e) => Err(RedisError::Reply(e.to_string())),
        }
    }
}

/// Reads RESP values off a glommio stream with the crate's incremental parser.
pub(crate) struct RespReader {
    parser: RespStream,
    buf: Box<[u8]>,
    len: usize,
    pos: usize,
}

impl RespReader {
    pub(crate) fn new() -> Self {
        Self {
            parser: RespStream::new(),
            buf: vec![0u8; 16 << 10].into_boxed_slice(),
            len: 0,
            pos: 0,
        }
    }

    pub(crate) async fn read_value(&mut self, stream: &mut Stream) -> Result<Value, RedisError> {
        loop {
            if let Some(v) = self.parser.next(&self.buf[..self.len], &mut self.pos)? {
                return Ok(v);
            }
            self.pos = 0;
            self.len = 0;
            let n = stream
                .read(&mut self.buf)
                .await
                .map_err(|e| RedisError::Io(e.to_string()))?;
            if n == 0 {
                return Err(RedisError::Io("connection closed by redis".into()));
            }
            self.len = n;
        }
    }
}

/// Every RESP value in `bytes`, which must end where a value ends.
pub(crate) fn values(bytes: &[u8]) -> Result<Vec<Value>, RedisError> {
    let mut stream = RespStream::new();
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some(v) = stream.next(bytes, &mut pos)? {
        out.push(v);
    }
    Ok(out)
}

/// Connects to `addr` (over TLS when it says so), logs in as its user and
/// selects its database.
pub(crate) async fn connect(
    addr: &RedisAddr,
    tls: &Tls,
) -> Result<(Stream, RespReader), RedisError> {
    let mut stream = Stream::open(addr, tls).await?;
    let mut reader = RespReader::new();
    let mut hello = Vec::new();
    let mut auth = false;
    if let Some(pw) = &addr.password {
        let mut cmd = redis::cmd("AUTH");
        if let Some(user) = &addr.username {
            cmd.arg(user);
        }
        hello.extend(cmd.arg(pw).get_packed_command());
        auth = true;
    }
    if addr.db != 0 {
        hello.extend(redis::cmd("SELECT").arg(addr.db).get_packed_command());
    }
    if !hello.is_empty() {
        stream.send(&hello).await?;
        let selects = usize::from(addr.db != 0);
        if auth {
            if let Value::ServerError(e) = reader.read_value(&mut stream).await? {
                let user = addr.username.as_deref().unwrap_or("default");
                return Err(RedisError::Auth(format!(
                    "{} refused user {user}: {} {}",
                    addr.socket_text(),
                    e.code(),
                    e.details().unwrap_or("")
                )));
            }
        }
        for _ in 0..selects {
            if let Value::ServerError(e) = reader.read_value(&mut stream).await? {
                return Err(RedisError::Server(format!("{e:?}")));
            }
        }
    }
    Ok((stream, reader))
}

/// Asks the server its `ROLE`: writes must go to a master, never to a
/// replica or to a master that was demoted while we were away.
pub(crate) async fn expect_master(
    stream: &mut Stream,
    reader: &mut RespReader,
    addr: &RedisAddr,
) -> Result<(), RedisError> {
    stream
        .send(&redis::cmd("ROLE").get_packed_command())
        .await?;
    match reader.read_value(stream).await? {
        Value::Array(items) => match items.first().and_then(text).as_deref() {
            Some("master") => Ok(()),
            Some(role) => Err(RedisError::Topology(format!(
                "{} is a {role}, not a master",
                addr.socket_text()
            ))),
            None => Err(RedisError::Reply(format!("ROLE answered {items:?}"))),
        },
        Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
        other => Err(RedisError::Reply(format!("ROLE answered {other:?}"))),
    }
}

/// A string-like reply as text.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A bulk string reply, for tests of reply readers.
#[cfg(test)]
pub(crate) fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// Sum of an integer reply, or of an array of integer-like replies.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole of a piece of bytes, value by value: the values, and
    /// whether they were refused.
    fn read_in_pieces(bytes: &[u8], size: usize) -> (Vec<Value>, bool) {
        let mut stream = RespStream::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(size) {
            let mut pos = 0;
            loop {
                match stream.next(piece, &mut pos) {
                    Ok(Some(v)) => out.push(v),
                    Ok(None) => break,
                    Err(_) => return (out, true),
                }
            }
        }
        (out, false)
    }

    /// Found by the resp fuzz target: bytes that are not RESP, arriving a
    /// few at a time, were taken for a reply still to come, forever.
    #[test]
    fn bytes_that_are_not_resp_are_refused_however_they_arrive() {
        for bytes in [
            &b"hello\r\n"[..],
            b"hello\r\n:1\r\n",
            b"*1\r\n:x\r\n",
            b"*2\r\n:1\r\nh:2\r\n",
            b":1\r\n?\r\n:2\r\n",
        ] {
            let whole = read_in_pieces(bytes, bytes.len());
            assert!(whole.1, "{bytes:?} is not RESP");
            for size in 1..bytes.len() {
                assert_eq!(read_in_pieces(bytes, size), whole, "{bytes:?} in {size}s");
            }
        }
        let good = b"*2\r\n:1\r\n$3\r\nabc\r\n+OK\r\n";
        for size in 1..=good.len() {
            let (values, refused) = read_in_pieces(good, size);
            assert!(!refused && values.len() == 2, "in pieces of {size}");
        }
    }

    #[test]
    fn feed_says_would_block_when_dry_and_parser_resumes() {
        let mut parser = redis::Parser::new();
        let mut pos = 0;
        let first = b"*2\r\n:1\r\n$3\r\nab";
        let mut feed = Feed {
            head: &[],
            data: first,
            pos: &mut pos,
            dry: false,
        };
        assert!(parser.parse_value(&mut feed).is_err());
        assert!(feed.dry);
        let mut pos = 0;
        let mut feed = Feed {
            head: &[],
            data: b"c\r\n:7\r\n",
            pos: &mut pos,
            dry: false,
        };
        let v = parser.parse_value(&mut feed).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![Value::Int(1), Value::BulkString(b"abc".to_vec())])
        );
        let v = parser.parse_value(&mut feed).unwrap();
        assert_eq!(v, Value::Int(7));
    }
}
