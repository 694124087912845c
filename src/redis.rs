//! Redis from a glommio shard, with no extra threads: the `redis` crate packs
//! commands and parses replies, and the bytes travel over a glommio
//! `TcpStream` the shard owns.
//!
//! The crate's async connections need tokio or smol and `Send` streams, which a
//! glommio stream is not. So each shard runs [`Redis::run`]: one command
//! connection, pipelined (requests that queue while a batch is in flight go
//! out together as the next batch; Redis answers in order, so replies are
//! matched by position), reconnecting with backoff. The shard's pub/sub
//! connection, which rides on the same reader, is [`crate::pubsub`].

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
pub use redis::Value;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::config::RedisAddr;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Requests queued or in flight, per shard. A caller past this waits for a
/// slot (a storm of 10,000 resumes is a burst, not an outage) for at most
/// `REPLY_TIMEOUT`, then fails as if Redis were down: a stalled Redis must
/// not grow memory, and it is reconnected within that time anyway.
const QUEUE: usize = 4096;
/// Requests written to Redis in one batch.
const BATCH: usize = 512;
/// A reply later than this means the connection is broken: reconnect.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a command connection may sit idle before it is checked.
const IDLE_PING: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unavailable")]
    Unavailable,
    #[error("redis connection failed: {0}")]
    Io(String),
    #[error("redis replied with an error: {0}")]
    Server(String),
    #[error("unexpected redis reply: {0}")]
    Reply(String),
}

/// Reads RESP values off a glommio stream with the crate's incremental parser.
pub(crate) struct RespReader {
    parser: redis::Parser,
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
    fn new() -> Self {
        Self {
            parser: redis::Parser::new(),
            buf: vec![0u8; 16 << 10].into_boxed_slice(),
            len: 0,
            pos: 0,
        }
    }

    pub(crate) async fn read_value(&mut self, stream: &mut TcpStream) -> Result<Value, RedisError> {
        loop {
            let mut feed = Feed {
                data: &self.buf[..self.len],
                pos: &mut self.pos,
                dry: false,
            };
            match self.parser.parse_value(&mut feed) {
                Ok(v) => return Ok(v),
                Err(_) if feed.dry => {}
                Err(e) => return Err(RedisError::Reply(e.to_string())),
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

pub(crate) async fn connect(addr: &RedisAddr) -> Result<(TcpStream, RespReader), RedisError> {
    let target = format!("{}:{}", addr.host, addr.port);
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

struct Request {
    bytes: Vec<u8>,
    replies: usize,
    done: oneshot::Sender<Result<Vec<Value>, RedisError>>,
}

/// One shard's command connection to Redis. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Rc<Inner>,
}

struct Inner {
    addr: RedisAddr,
    up: Cell<bool>,
    epoch: Cell<u64>,
    queue: RefCell<VecDeque<Request>>,
    /// One permit per request queued or in flight.
    slots: glommio::sync::Semaphore,
    waker: Cell<Option<Waker>>,
    running: Cell<bool>,
    init: Vec<u8>,
    init_replies: usize,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shard: usize,
}

impl Redis {
    /// A client that is down until [`Redis::run`] connects it. `init` is
    /// packed commands run on every (re)connect (e.g. SCRIPT LOAD), with the
    /// number of replies they produce.
    pub fn new(
        addr: RedisAddr,
        init: Vec<u8>,
        init_replies: usize,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        shard: usize,
    ) -> Self {
        Self {
            inner: Rc::new(Inner {
                addr,
                up: Cell::new(false),
                epoch: Cell::new(0),
                queue: RefCell::new(VecDeque::new()),
                slots: glommio::sync::Semaphore::new(QUEUE as u64),
                waker: Cell::new(None),
                running: Cell::new(false),
                init,
                init_replies,
                metrics,
                readiness,
                shard,
            }),
        }
    }

    /// Counts successful connects; a change means Redis may have restarted.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.get()
    }

    /// Whether the command connection is up now.
    /// The process's readiness, which this connection keeps up to date
    /// for its shard.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    pub fn is_up(&self) -> bool {
        self.inner.up.get()
    }

    /// Sends packed commands and returns their `replies` replies in order.
    /// Fails at once with `Unavailable` while the connection is down, so
    /// callers can fall back to their cache instead of waiting.
    pub async fn exec(&self, bytes: Vec<u8>, replies: usize) -> Result<Vec<Value>, RedisError> {
        if !self.is_up() {
            return Err(RedisError::Unavailable);
        }
        let m = &self.inner.metrics.shards[self.inner.shard];
        let _slot = match self.inner.slots.try_acquire_permit(1) {
            Ok(p) => p,
            Err(_) => {
                let wait = glommio::timer::timeout(REPLY_TIMEOUT, async {
                    Ok(self.inner.slots.acquire_permit(1).await)
                });
                match wait.await {
                    Ok(Ok(p)) if self.is_up() => p,
                    _ => {
                        m.redis_errors_total.inc();
                        return Err(RedisError::Unavailable);
                    }
                }
            }
        };
        let (done, wait) = oneshot::channel();
        m.redis_commands_total.add(replies as u64);
        {
            let mut q = self.inner.queue.borrow_mut();
            q.push_back(Request {
                bytes,
                replies,
                done,
            });
        }
        if let Some(w) = self.inner.waker.take() {
            w.wake();
        }
        let queued = std::time::Instant::now();
        let out = wait.await.unwrap_or(Err(RedisError::Unavailable));
        m.redis_duration
            .observe_ns(queued.elapsed().as_nanos() as u64);
        if out.is_err() {
            m.redis_errors_total.inc();
        }
        out
    }

    /// One command, one reply; a Redis error reply becomes `Err(Server)`.
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let mut v = self.exec(cmd.get_packed_command(), 1).await?;
        match v.pop() {
            Some(Value::ServerError(e)) => Err(RedisError::Server(format!("{e:?}"))),
            Some(v) => Ok(v),
            None => Err(RedisError::Reply("no reply".into())),
        }
    }

    /// Keeps the connection up, reconnecting with backoff; runs until the
    /// shard's executor ends. Run it as a shard task.
    pub async fn run(self) {
        if self.inner.running.replace(true) {
            return;
        }
        let m = &self.inner.metrics.shards[self.inner.shard];
        let ready = self.inner.readiness.shard(self.inner.shard);
        let mut backoff = BACKOFF_MIN;
        let mut was_up = true;
        loop {
            match self.open().await {
                Ok((mut stream, mut reader)) => {
                    backoff = BACKOFF_MIN;
                    self.inner.epoch.set(self.inner.epoch.get() + 1);
                    self.inner.up.set(true);
                    ready.set_redis_up(true);
                    tracing::info!(redis = %self.target(), "redis connected");
                    let err = self.serve(&mut stream, &mut reader).await;
                    self.inner.up.set(false);
                    ready.set_redis_up(false);
                    ready.set_redis_synced(false);
                    m.redis_errors_total.inc();
                    tracing::warn!(redis = %self.target(), error = %err, "redis connection lost");
                    // Whatever queued while the connection broke fails fast.
                    for req in self.inner.queue.borrow_mut().drain(..) {
                        let _ = req.done.send(Err(RedisError::Unavailable));
                    }
                    was_up = true;
                }
                Err(e) => {
                    // Whatever is counted from now on waits for a replay.
                    ready.set_redis_synced(false);
                    if was_up {
                        tracing::warn!(redis = %self.target(), error = %e, "redis unreachable; retrying with backoff");
                        was_up = false;
                    }
                    m.redis_errors_total.inc();
                }
            }
            let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
            glommio::timer::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn target(&self) -> String {
        format!("{}:{}", self.inner.addr.host, self.inner.addr.port)
    }

    async fn open(&self) -> Result<(TcpStream, RespReader), RedisError> {
        let (mut stream, mut reader) = connect(&self.inner.addr).await?;
        if self.inner.init_replies > 0 {
            stream
                .write_all(&self.inner.init)
                .await
                .map_err(|e| RedisError::Io(e.to_string()))?;
            for _ in 0..self.inner.init_replies {
                if let Value::ServerError(e) = reader.read_value(&mut stream).await? {
                    return Err(RedisError::Server(format!("{e:?}")));
                }
            }
        }
        Ok((stream, reader))
    }
}

/// What ended a command connection's idle wait.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    Work,
    Readable,
    Ping,
}

impl Redis {
    /// Waits until at least one request is queued.
    async fn wait_for_work(&self) {
        poll_fn(|cx| {
            if self.inner.queue.borrow().is_empty() {
                self.inner.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    async fn serve(&self, stream: &mut TcpStream, reader: &mut RespReader) -> RedisError {
        let mut batch: Vec<Request> = Vec::with_capacity(BATCH);
        let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
        loop {
            // Redis sends nothing unasked on a command connection, so an idle
            // one that turns readable was closed (a restart, a kill): noticed
            // at once, not by the next request, which would fail on it. A
            // PING after IDLE_PING catches a peer that vanished silently.
            let idle = futures_lite::future::or(
                async {
                    self.wait_for_work().await;
                    Idle::Work
                },
                futures_lite::future::or(
                    async {
                        let _ = glommio::net::readable(stream.as_raw_fd()).await;
                        Idle::Readable
                    },
                    async {
                        glommio::timer::sleep(IDLE_PING).await;
                        Idle::Ping
                    },
                ),
            )
            .await;
            if idle == Idle::Readable {
                return match reader.read_value(stream).await {
                    Err(e) => e,
                    Ok(v) => RedisError::Reply(format!("unasked reply {v:?}")),
                };
            }
            if idle == Idle::Ping {
                let ping = redis::cmd("PING").get_packed_command();
                if let Err(e) = stream.write_all(&ping).await {
                    return RedisError::Io(e.to_string());
                }
                if let Err(e) = reader.read_value(stream).await {
                    return e;
                }
                continue;
            }
            {
                let mut q = self.inner.queue.borrow_mut();
                let n = q.len().min(BATCH);
                batch.extend(q.drain(..n));
            }
            out.clear();
            for r in &batch {
                out.extend_from_slice(&r.bytes);
            }
            if let Err(e) = stream.write_all(&out).await {
                let err = RedisError::Io(e.to_string());
                for r in batch.drain(..) {
                    let _ = r.done.send(Err(err.clone()));
                }
                return err;
            }
            let mut failed = None;
            for r in batch.drain(..) {
                if let Some(err) = &failed {
                    let _ = r.done.send(Err(RedisError::clone(err)));
                    continue;
                }
                let mut values = Vec::with_capacity(r.replies);
                for _ in 0..r.replies {
                    match reader.read_value(stream).await {
                        Ok(v) => values.push(v),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match &failed {
                    None => {
                        let _ = r.done.send(Ok(values));
                    }
                    Some(e) => {
                        let _ = r.done.send(Err(e.clone()));
                    }
                }
            }
            if out.capacity() > 1 << 20 {
                out = Vec::with_capacity(16 << 10);
            }
            if let Some(e) = failed {
                return e;
            }
        }
    }
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
