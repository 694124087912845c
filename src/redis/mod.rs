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
//!
//! - `wire`: the RESP reader, a connect to one address, `ROLE`;
//! - [`sentinel`]: asking Sentinels for the master, and word of a switch;
//! - [`replicas`]: the `WAIT` after a write, for `--redis-min-replicas`;
//! - `connect_master`: a connection to whichever server is master now.

pub mod backoff;
pub mod replicas;
pub mod sentinel;
pub(crate) mod wire;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
pub use redis::Value;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::config::{RedisAddr, RedisTarget};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use backoff::Backoff;
use sentinel::Switch;
pub use wire::as_u64;
pub(crate) use wire::RespReader;
use wire::REPLY_TIMEOUT;

/// Requests queued or in flight, per shard. A caller past this waits for a
/// slot (a storm of 10,000 resumes is a burst, not an outage) for at most
/// `REPLY_TIMEOUT`, then fails as if Redis were down: a stalled Redis must
/// not grow memory, and it is reconnected within that time anyway.
const QUEUE: usize = 4096;
/// Requests written to Redis in one batch.
const BATCH: usize = 512;
/// How long a command connection may sit idle before it is checked.
const IDLE_PING: Duration = Duration::from_secs(1);

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
    /// Where the master is could not be told, or the server is not it.
    #[error("redis topology: {0}")]
    Topology(String),
    /// The write reached the master, but fewer replicas confirmed it than
    /// `redis_min_replicas` asks for: it may vanish with the master.
    #[error("only {acked} of {wanted} replicas confirmed the write")]
    Replicas { acked: u32, wanted: u32 },
}

impl RedisError {
    /// The master took the write but too few replicas confirmed it.
    pub fn unconfirmed(&self) -> bool {
        matches!(self, RedisError::Replicas { .. })
    }
}

/// Opens a connection to the server that is master now: the one `target`
/// names, or the one its Sentinels name (asked from the `turn`th on), after
/// it said `ROLE` master. Returns the address it reached, for logs.
pub(crate) async fn connect_master(
    target: &RedisTarget,
    turn: usize,
) -> Result<(TcpStream, RespReader, RedisAddr), RedisError> {
    let addr = match target {
        RedisTarget::Single(a) => a.clone(),
        RedisTarget::Sentinel {
            sentinels,
            master,
            password,
            db,
        } => RedisAddr {
            password: password.clone(),
            db: *db,
            ..sentinel::master_addr(sentinels, master, turn).await?
        },
    };
    let (mut stream, mut reader) = wire::connect(&addr).await?;
    wire::expect_master(&mut stream, &mut reader, &addr).await?;
    Ok((stream, reader, addr))
}

/// A reply that says the server became a replica under us.
fn demoted(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "READONLY")
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
    target: RedisTarget,
    /// Bumped when the Sentinels switch the master: drop the connection.
    switch: Rc<Switch>,
    /// The server reached last, for logs.
    reached: RefCell<Option<RedisAddr>>,
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
        target: RedisTarget,
        switch: Rc<Switch>,
        init: Vec<u8>,
        init_replies: usize,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        shard: usize,
    ) -> Self {
        Self {
            inner: Rc::new(Inner {
                target,
                switch,
                reached: RefCell::new(None),
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
        let mut backoff = Backoff::default();
        let mut was_up = true;
        loop {
            match self.open().await {
                Ok((mut stream, mut reader)) => {
                    backoff.reset();
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
            backoff.wait().await;
        }
    }

    fn target(&self) -> String {
        match (&*self.inner.reached.borrow(), &self.inner.target) {
            (Some(a), _) | (None, RedisTarget::Single(a)) => a.socket_text(),
            (None, RedisTarget::Sentinel { master, .. }) => format!("sentinel master {master}"),
        }
    }

    async fn open(&self) -> Result<(TcpStream, RespReader), RedisError> {
        let (mut stream, mut reader, addr) =
            connect_master(&self.inner.target, self.inner.shard).await?;
        self.inner.reached.replace(Some(addr));
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
    Switched,
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
        let switch = &self.inner.switch;
        let generation = switch.generation();
        loop {
            if switch.generation() != generation {
                return RedisError::Topology("the sentinels switched the master".into());
            }
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
                    futures_lite::future::or(
                        async {
                            glommio::timer::sleep(IDLE_PING).await;
                            Idle::Ping
                        },
                        async {
                            switch.after(generation).await;
                            Idle::Switched
                        },
                    ),
                ),
            )
            .await;
            if idle == Idle::Switched {
                continue;
            }
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
            let mut demoted_under_us = false;
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
                        demoted_under_us |= values.iter().any(demoted);
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
            if demoted_under_us {
                // The refused writes were answered as such; the next
                // connect asks again where the master is.
                return RedisError::Topology("the server became a replica (READONLY)".into());
            }
        }
    }
}
