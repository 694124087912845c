//! One pipelined command connection to one Redis server (the one a
//! `RedisTarget` names now), reconnecting with backoff. Requests that queue
//! while a batch is in flight go out together as the next batch; Redis
//! answers in order, so replies are matched by position. What the link's
//! state means (readiness of a single Redis, or one node of a cluster) is
//! its owner's business: the link only reports it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_channel::oneshot;

use super::backoff::Backoff;
use super::observe::Observer;
use super::sentinel::Switch;
use super::stream::{Stream, Tls};
use super::wire::{RespReader, REPLY_TIMEOUT};
use super::{connect_master, RedisAddr, RedisError, RedisTarget, Value};

/// Requests queued or in flight, per link. A caller past this waits for a
/// slot (a storm of 10,000 resumes is a burst, not an outage) for at most
/// `REPLY_TIMEOUT`, then fails as if Redis were down: a stalled Redis must
/// not grow memory, and it is reconnected within that time anyway.
const QUEUE: usize = 4096;
/// Requests written to Redis in one batch.
const BATCH: usize = 512;
/// How long a command connection may sit idle before it is checked.
const IDLE_PING: Duration = Duration::from_secs(1);

/// A reply that says the server became a replica under us.
fn demoted(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "READONLY")
}

/// What a link tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected (again), and `ROLE` said master.
    Up,
    /// A connection that was up broke.
    Lost,
    /// A connect failed.
    Unreachable,
}

/// Told of every state change of a link.
pub type OnState = Rc<dyn Fn(LinkState)>;

struct Request {
    bytes: Vec<u8>,
    replies: usize,
    done: oneshot::Sender<Result<Vec<Value>, RedisError>>,
}

/// One command connection of a shard. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Rc<Inner>,
}

struct Inner {
    target: RedisTarget,
    tls: Tls,
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
    /// Set once the owner no longer wants this server (a cluster node
    /// that left the slot map): `run` returns at its next turn.
    stopped: Cell<bool>,
    /// Set when the server broke the protocol: the connection is dropped
    /// at its next turn and made again.
    reset: Cell<bool>,
    init: Rc<[u8]>,
    init_replies: usize,
    on_state: OnState,
    observer: Rc<dyn Observer>,
    shard: usize,
}

impl Link {
    /// A link that is down until [`Link::run`] connects it. `init` is
    /// packed commands run on every (re)connect (e.g. SCRIPT LOAD), with the
    /// number of replies they produce.
    pub fn new(
        target: RedisTarget,
        tls: Tls,
        switch: Rc<Switch>,
        (init, init_replies): (Rc<[u8]>, usize),
        on_state: OnState,
        observer: Rc<dyn Observer>,
        shard: usize,
    ) -> Self {
        Self {
            inner: Rc::new(Inner {
                target,
                tls,
                switch,
                reached: RefCell::new(None),
                up: Cell::new(false),
                epoch: Cell::new(0),
                queue: RefCell::new(VecDeque::new()),
                slots: glommio::sync::Semaphore::new(QUEUE as u64),
                waker: Cell::new(None),
                running: Cell::new(false),
                stopped: Cell::new(false),
                reset: Cell::new(false),
                init,
                init_replies,
                on_state,
                observer,
                shard,
            }),
        }
    }

    /// Counts successful connects; a change means Redis may have restarted.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.get()
    }

    /// Whether the command connection is up now.
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
        let observer = &self.inner.observer;
        let _slot = match self.inner.slots.try_acquire_permit(1) {
            Ok(p) => p,
            Err(_) => {
                observer.queue_full();
                let wait = glommio::timer::timeout(REPLY_TIMEOUT, async {
                    Ok(self.inner.slots.acquire_permit(1).await)
                });
                match wait.await {
                    Ok(Ok(p)) if self.is_up() => p,
                    _ => {
                        observer.error();
                        return Err(RedisError::Unavailable);
                    }
                }
            }
        };
        let (done, wait) = oneshot::channel();
        observer.sent(replies);
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
        // A request dropped unanswered may have been in flight: its
        // outcome is unknown, never taken as not sent.
        let out = wait
            .await
            .unwrap_or_else(|_| Err(RedisError::Io("the request was dropped unanswered".into())));
        observer.answered(queued.elapsed(), out.is_ok());
        out
    }

    /// Asks `run` to return and the connection to close; what is queued
    /// fails as if the server were down.
    pub fn stop(&self) {
        self.inner.stopped.set(true);
        self.inner.switch.bump();
        if let Some(w) = self.inner.waker.take() {
            w.wake();
        }
    }

    /// Drops the connection and makes it again: its server sent what the
    /// protocol does not allow (a redirect to no slot), so nothing more it
    /// says on this connection is trusted. What is queued fails as if the
    /// server were down.
    pub fn reset(&self) {
        self.inner.reset.set(true);
        self.inner.switch.bump();
        if let Some(w) = self.inner.waker.take() {
            w.wake();
        }
    }

    /// Keeps the connection up, reconnecting with backoff; runs until the
    /// shard's executor ends. Run it as a shard task.
    pub async fn run(self) {
        if self.inner.running.replace(true) {
            return;
        }
        let observer = &self.inner.observer;
        let report = &self.inner.on_state;
        let mut backoff = Backoff::default();
        let mut was_up = true;
        while !self.inner.stopped.get() {
            let seen = self.inner.switch.generation();
            match self.open().await {
                Ok((mut stream, mut reader)) => {
                    // A reset asked of the last connection is done.
                    self.inner.reset.set(false);
                    backoff.reset();
                    self.inner.epoch.set(self.inner.epoch.get() + 1);
                    self.inner.up.set(true);
                    report(LinkState::Up);
                    tracing::info!(redis = %self.target(), "redis connected");
                    let err = self.serve(&mut stream, &mut reader).await;
                    self.inner.up.set(false);
                    report(LinkState::Lost);
                    observer.error();
                    tracing::warn!(redis = %self.target(), error = %err, "redis connection lost");
                    // Whatever queued while the connection broke fails fast.
                    for req in self.inner.queue.borrow_mut().drain(..) {
                        let _ = req.done.send(Err(RedisError::Unavailable));
                    }
                    was_up = true;
                }
                Err(e) => {
                    report(LinkState::Unreachable);
                    if was_up {
                        tracing::warn!(redis = %self.target(), error = %e, "redis unreachable; retrying with backoff");
                        was_up = false;
                    }
                    observer.error();
                }
            }
            if self.inner.stopped.get() {
                break;
            }
            // A master the sentinels named since this try began is tried at
            // once: waiting out the backoff (up to 3 s by then) kept replies
            // waiting through a failover long after the new master was up.
            let switched = futures_lite::future::or(
                async {
                    backoff.wait().await;
                    false
                },
                async {
                    self.inner.switch.after(seen).await;
                    true
                },
            )
            .await;
            if switched {
                backoff.reset();
            }
        }
        for req in self.inner.queue.borrow_mut().drain(..) {
            let _ = req.done.send(Err(RedisError::Unavailable));
        }
    }

    fn target(&self) -> String {
        match (&*self.inner.reached.borrow(), &self.inner.target) {
            (Some(a), _) | (None, RedisTarget::Single(a)) => a.socket_text(),
            (None, RedisTarget::Sentinel { master, .. }) => format!("sentinel master {master}"),
            (None, RedisTarget::Cluster { .. }) => "a cluster node".into(),
        }
    }

    async fn open(&self) -> Result<(Stream, RespReader), RedisError> {
        let (mut stream, mut reader, addr) =
            connect_master(&self.inner.target, &self.inner.tls, self.inner.shard, None).await?;
        self.inner.reached.replace(Some(addr));
        if self.inner.init_replies > 0 {
            stream.send(&self.inner.init).await?;
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

impl Link {
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

    /// Sends what is queued and answers it, checks an idle connection,
    /// until the connection must go; returns why.
    async fn serve(&self, stream: &mut Stream, reader: &mut RespReader) -> RedisError {
        let mut batch: Vec<Request> = Vec::with_capacity(BATCH);
        let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
        let generation = self.inner.switch.generation();
        loop {
            if let Some(why) = self.must_close(generation) {
                return why;
            }
            let step = match self.next_step(stream, generation).await {
                // The check at the top of the loop says why.
                Idle::Switched => continue,
                Idle::Readable => return unasked(stream, reader).await,
                Idle::Ping => ping(stream, reader).await,
                Idle::Work => self.exchange(stream, reader, &mut batch, &mut out).await,
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    /// Why the connection must go before its next turn, if it must.
    fn must_close(&self, generation: u64) -> Option<RedisError> {
        if self.inner.stopped.get() {
            return Some(RedisError::Topology(
                "the node left the cluster's slot map".into(),
            ));
        }
        if self.inner.reset.take() {
            return Some(RedisError::Reply(
                "reset after a protocol error from the server".into(),
            ));
        }
        if self.inner.switch.generation() != generation {
            return Some(RedisError::Topology(
                "the sentinels switched the master".into(),
            ));
        }
        None
    }

    /// Whichever comes first: a request queued, the connection readable,
    /// `IDLE_PING` of quiet, or the sentinels naming another master.
    async fn next_step(&self, stream: &Stream, generation: u64) -> Idle {
        // Redis sends nothing unasked on a command connection, so an idle
        // one that turns readable was closed (a restart, a kill): noticed
        // at once, not by the next request, which would fail on it. A
        // PING after IDLE_PING catches a peer that vanished silently.
        // Over TLS too: the only records a server sends unasked (TLS
        // 1.3 session tickets) come before the first reply, which the
        // connect has read.
        futures_lite::future::or(
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
                        self.inner.switch.after(generation).await;
                        Idle::Switched
                    },
                ),
            ),
        )
        .await
    }

    /// Writes up to `BATCH` queued requests as one batch and answers each
    /// from the replies, in order. Err: why the connection must go, once
    /// every request of the batch has its answer.
    async fn exchange(
        &self,
        stream: &mut Stream,
        reader: &mut RespReader,
        batch: &mut Vec<Request>,
        out: &mut Vec<u8>,
    ) -> Result<(), RedisError> {
        {
            let mut q = self.inner.queue.borrow_mut();
            let n = q.len().min(BATCH);
            batch.extend(q.drain(..n));
        }
        out.clear();
        for r in batch.iter() {
            out.extend_from_slice(&r.bytes);
        }
        if let Err(err) = stream.send(out).await {
            for r in batch.drain(..) {
                let _ = r.done.send(Err(err.clone()));
            }
            return Err(err);
        }
        let answered = answer(stream, reader, batch).await;
        give_back(&mut self.inner.queue.borrow_mut(), out);
        if answered? {
            // The refused writes were answered as such; the next
            // connect asks again where the master is.
            return Err(RedisError::Topology(
                "the server became a replica (READONLY)".into(),
            ));
        }
        Ok(())
    }
}

/// A batch buffer past this is given back even in a burst.
const OUT_MOST: usize = 1 << 20;
/// Kept for the quiet after a burst: a batch of typical requests.
const OUT_QUIET: usize = 16 << 10;

/// Gives back what a burst grew (a connect storm's session writes: the
/// queue up to `QUEUE` requests, 160 KiB; the batch buffer some 128 KiB), once
/// the queue is empty after a batch: a socket server spends most of its
/// life quiet, and kept them for good otherwise. During the burst both stay
/// as they are, but a buffer past `OUT_MOST`.
fn give_back<T>(queue: &mut VecDeque<T>, out: &mut Vec<u8>) {
    let quiet = queue.is_empty();
    if quiet && queue.capacity() > 2 * BATCH {
        queue.shrink_to(BATCH);
    }
    if out.capacity() > OUT_MOST || (quiet && out.capacity() > 4 * OUT_QUIET) {
        *out = Vec::with_capacity(OUT_QUIET);
    }
}

/// What an idle connection that turned readable says: that it was closed,
/// or something the protocol does not send unasked.
async fn unasked(stream: &mut Stream, reader: &mut RespReader) -> RedisError {
    match reader.read_value(stream).await {
        Err(e) => e,
        Ok(v) => RedisError::Reply(format!("unasked reply {v:?}")),
    }
}

/// Checks a quiet connection: Err when it does not answer.
async fn ping(stream: &mut Stream, reader: &mut RespReader) -> Result<(), RedisError> {
    let ping = redis::cmd("PING").get_packed_command();
    stream.send(&ping).await?;
    reader.read_value(stream).await?;
    Ok(())
}

/// Reads the replies of a batch sent and hands each request its own; Ok:
/// whether a reply said the server became a replica. After a failed read
/// the rest of the batch gets the same error, as its replies cannot be told
/// apart any more.
async fn answer(
    stream: &mut Stream,
    reader: &mut RespReader,
    batch: &mut Vec<Request>,
) -> Result<bool, RedisError> {
    let mut failed: Option<RedisError> = None;
    let mut demoted_under_us = false;
    for r in batch.drain(..) {
        if let Some(err) = &failed {
            let _ = r.done.send(Err(err.clone()));
            continue;
        }
        match replies(stream, reader, r.replies).await {
            Ok(values) => {
                demoted_under_us |= values.iter().any(demoted);
                let _ = r.done.send(Ok(values));
            }
            Err(e) => {
                let _ = r.done.send(Err(e.clone()));
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(demoted_under_us),
    }
}

/// The next `n` replies.
async fn replies(
    stream: &mut Stream,
    reader: &mut RespReader,
    n: usize,
) -> Result<Vec<Value>, RedisError> {
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(reader.read_value(stream).await?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_keeps_its_memory_until_the_queue_is_empty() {
        let mut queue: VecDeque<u32> = (0..QUEUE as u32).collect();
        let mut out = Vec::with_capacity(128 << 10);
        let grown = queue.capacity();
        // Mid-burst: requests still wait, so nothing is given back.
        give_back(&mut queue, &mut out);
        assert_eq!(queue.capacity(), grown);
        assert_eq!(out.capacity(), 128 << 10);
        // The burst is over: both shrink, the queue to a batch's worth.
        queue.clear();
        give_back(&mut queue, &mut out);
        assert!(queue.capacity() >= BATCH && queue.capacity() < 2 * BATCH);
        assert_eq!(out.capacity(), OUT_QUIET);
        // Quiet sizes are kept as they are.
        let before = (queue.capacity(), out.as_ptr());
        give_back(&mut queue, &mut out);
        assert_eq!((queue.capacity(), out.as_ptr()), before);
    }

    #[test]
    fn a_buffer_past_its_bound_goes_even_in_a_burst() {
        let mut queue: VecDeque<u32> = (0..10).collect();
        let mut out = Vec::with_capacity(OUT_MOST + 1);
        give_back(&mut queue, &mut out);
        assert_eq!(out.capacity(), OUT_QUIET);
        assert_eq!(queue.len(), 10);
    }
}
