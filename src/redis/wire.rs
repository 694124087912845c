//! The Redis wire from a glommio shard: a RESP reader over a glommio
//! `TcpStream` (the `redis` crate's incremental parser), and a connect to
//! one address that authenticates and selects the database.

use std::io::{self, Read};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use redis::Value;

use super::RedisError;
use crate::config::RedisAddr;

/// A connect, or a reply, later than this means the peer is gone.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// RESP values read from bytes in pieces as they arrive, cut anywhere: the
/// crate's incremental parser keeps a value's partial state between
/// pieces. What reads Redis's replies and pushes; public for the fuzz
/// targets, which feed it arbitrary bytes in arbitrary pieces.
pub struct RespStream {
    parser: redis::Parser,
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
        }
    }

    /// The next complete value in `data[*pos..]`, with `pos` moved past
    /// the bytes it took. `Ok(None)`: the bytes ran out inside a value,
    /// all of them are taken, and the value goes on in the next piece. An
    /// error is bytes that are not RESP: the connection is done.
    pub fn next(&mut self, data: &[u8], pos: &mut usize) -> Result<Option<Value>, RedisError> {
        let mut feed = Feed {
            data,
            pos,
            dry: false,
        };
        match self.parser.parse_value(&mut feed) {
            Ok(v) => Ok(Some(v)),
            Err(_) if feed.dry => Ok(None),
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

/// Hands the parser what has arrived; says WouldBlock (not EOF) when it runs
/// dry, so the parser keeps its partial state and can be called again.
struct Feed<'a> {
    data: &'a [u8],
    pos: &'a mut usize,
    dry: bool,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = &self.data[*self.pos..];
        if left.is_empty() {
            self.dry = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = left.len().min(out.len());
        out[..n].copy_from_slice(&left[..n]);
        *self.pos += n;
        Ok(n)
    }
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

    pub(crate) async fn read_value(&mut self, stream: &mut TcpStream) -> Result<Value, RedisError> {
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

pub(crate) async fn connect(addr: &RedisAddr) -> Result<(TcpStream, RespReader), RedisError> {
    let target = addr.socket_text();
    let mut stream = glommio::timer::timeout(REPLY_TIMEOUT, async {
        TcpStream::connect(target.as_str())
            .await
            .map_err(|e| glommio::GlommioError::IoError(io::Error::other(e.to_string())))
    })
    .await
    .map_err(|e| RedisError::Io(e.to_string()))?;
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
    let mut reader = RespReader::new();
    let mut hello = Vec::new();
    let mut expect = 0;
    if let Some(pw) = &addr.password {
        hello.extend(redis::cmd("AUTH").arg(pw).get_packed_command());
        expect += 1;
    }
    if addr.db != 0 {
        hello.extend(redis::cmd("SELECT").arg(addr.db).get_packed_command());
        expect += 1;
    }
    if expect > 0 {
        stream
            .write_all(&hello)
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        for _ in 0..expect {
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
    stream: &mut TcpStream,
    reader: &mut RespReader,
    addr: &RedisAddr,
) -> Result<(), RedisError> {
    let role = redis::cmd("ROLE").get_packed_command();
    stream
        .write_all(&role)
        .await
        .map_err(|e| RedisError::Io(e.to_string()))?;
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

    #[test]
    fn feed_says_would_block_when_dry_and_parser_resumes() {
        let mut parser = redis::Parser::new();
        let mut pos = 0;
        let first = b"*2\r\n:1\r\n$3\r\nab";
        let mut feed = Feed {
            data: first,
            pos: &mut pos,
            dry: false,
        };
        assert!(parser.parse_value(&mut feed).is_err());
        assert!(feed.dry);
        let mut pos = 0;
        let mut feed = Feed {
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
