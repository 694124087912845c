//! A shard's subscription connection(s): connect, subscribe, read pushes,
//! write (un)subscribe commands, and reconnect.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::redis::backoff::Backoff;
use crate::redis::sentinel::Switch;
use crate::redis::stream::{Stream, Tls};
use crate::redis::{self as rds, RespReader, Value};
use crate::redis::{RedisAddr, RedisTarget};

use super::room::EVENTS_CHANNEL;
use super::subscriber::{Subscriber, Target};

/// How often the connection loop wakes for the sweep and the liveness check.
const TICK: Duration = Duration::from_secs(1);
/// A subscription silent this long gets a PING; one still silent a
/// `REPLY_TIMEOUT` later is reconnected. Without it a half-open connection
/// (Redis host gone, no RST) would swallow broadcasts for hours.
const PING_AFTER: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Which subscription connection: the shard's one (`None`), or, in sharded
/// mode on a Redis Cluster, the one to this master.
pub(super) type LaneKey = Option<RedisAddr>;

/// One subscription connection's state, shared with its task.
#[derive(Default)]
pub(super) struct Lane {
    /// Packed commands for the connection task to write.
    outbox: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    connected: Cell<bool>,
    /// Its master left the cluster's slot map: the task ends.
    stopped: Cell<bool>,
}

/// Holds the shard's subscription connection(s) for the shard's life:
/// connects, subscribes to the events channel and every room, then reads
/// pushes and writes (un)subscribe commands as sockets come and go.
/// Reconnects with backoff; messages published while it is away are lost
/// (pub/sub keeps nothing), which is why kicks also write a tombstone that
/// resumes check. In sharded mode on a cluster, one connection per master.
pub async fn run(
    sub: Rc<Subscriber>,
    target: RedisTarget,
    tls: Tls,
    switch: Rc<Switch>,
    on_message: impl Fn(Target<'_>, &[u8]) + 'static,
) {
    let on_message = Rc::new(on_message);
    match sub.cluster.clone() {
        None => {
            sub.lanes.borrow_mut().insert(None, Rc::default());
            run_lane(sub, None, target, tls, switch, on_message).await
        }
        Some(cluster) => loop {
            let masters = cluster.masters();
            for m in &masters {
                let key = Some(m.clone());
                if sub.lanes.borrow().contains_key(&key) {
                    continue;
                }
                sub.lanes.borrow_mut().insert(key.clone(), Rc::default());
                glommio::spawn_local(run_lane(
                    sub.clone(),
                    key,
                    RedisTarget::Single(m.clone()),
                    tls.clone(),
                    Rc::new(Switch::default()),
                    on_message.clone(),
                ))
                .detach();
            }
            sub.lanes.borrow_mut().retain(|k, lane| {
                let keep = k.as_ref().is_some_and(|a| masters.contains(a));
                if !keep {
                    lane.stop();
                }
                keep
            });
            sub.sweep(Instant::now());
            sub.rehome();
            sub.update_up();
            glommio::timer::sleep(TICK).await;
        },
    }
}

/// One subscription connection, to `target`, for the channels of `key`:
/// connects, reads until the connection is lost, backs off, and connects
/// again, until the lane is stopped.
async fn run_lane(
    sub: Rc<Subscriber>,
    key: LaneKey,
    target: RedisTarget,
    tls: Tls,
    switch: Rc<Switch>,
    on_message: Rc<impl Fn(Target<'_>, &[u8])>,
) {
    let Some(lane) = sub.lane(&key) else {
        return;
    };
    let task = LaneTask {
        sub,
        key,
        lane,
        target,
        tls,
        switch,
        on_message,
    };
    let mut backoff = Backoff::default();
    while !task.lane.stopped.get() {
        let generation = task.switch.generation();
        if let Some((mut stream, mut reader, first)) = task.connect().await {
            let why = task
                .serve(&mut stream, &mut reader, first, generation, &mut backoff)
                .await;
            task.lane.connected.set(false);
            task.sub.update_up();
            if !task.lane.stopped.get() {
                tracing::warn!(error = %why, "redis subscription lost; resubscribing");
            }
        } else {
            task.sub.update_up();
        }
        if !task.lane.stopped.get() {
            backoff.wait().await;
        }
    }
}

/// What one lane's task holds across its reconnects.
struct LaneTask<F> {
    sub: Rc<Subscriber>,
    key: LaneKey,
    lane: Rc<Lane>,
    target: RedisTarget,
    tls: Tls,
    switch: Rc<Switch>,
    on_message: Rc<F>,
}

/// What woke the connection's loop.
enum Step {
    Read(Result<Value, rds::RedisError>),
    Write,
    Tick,
    Switched,
}

impl<F: Fn(Target<'_>, &[u8])> LaneTask<F> {
    /// A fresh connection, marked connected, with the commands it starts
    /// with: the head key's GET and every channel wanted on this lane.
    async fn connect(&self) -> Option<(Stream, RespReader, Vec<u8>)> {
        // On a cluster: the node of the head key, which the connection
        // reads first (PUBLISH reaches every node, so any node would do
        // for the channels themselves).
        let slot = rds::Slot::of(self.sub.head_key.as_deref().unwrap_or(EVENTS_CHANNEL));
        let (stream, reader, _) =
            rds::connect_master(&self.target, &self.tls, self.sub.shard, Some(slot))
                .await
                .ok()?;
        // Pushes come when they come: liveness is the PING of `on_tick`.
        stream.set_read_timeout(None);
        let first = self.sub.resubscribe_all(&self.key);
        self.lane.outbox.borrow_mut().clear();
        self.lane.connected.set(true);
        Some((stream, reader, first))
    }

    /// Writes `pending` and whatever the lane queues, and hands on what
    /// Redis sends, until the connection must go; returns why.
    async fn serve(
        &self,
        stream: &mut Stream,
        reader: &mut RespReader,
        mut pending: Vec<u8>,
        generation: u64,
        backoff: &mut Backoff,
    ) -> String {
        let mut live = Liveness::new();
        loop {
            if self.lane.stopped.get() {
                return "its master left the cluster's slot map".to_string();
            }
            if !pending.is_empty() {
                if let Err(e) = stream.send(&pending).await {
                    return e.to_string();
                }
                pending.clear();
            }
            let step = self.next_step(stream, reader, generation).await;
            // A read that lost the race keeps its partial reply in
            // `reader` and its bytes in the socket (see ws::socket).
            let outcome = match step {
                Step::Read(Ok(v)) => self.on_reply(v, &mut live, backoff),
                Step::Read(Err(e)) => Err(e.to_string()),
                Step::Write => {
                    pending = std::mem::take(&mut *self.lane.outbox.borrow_mut());
                    Ok(())
                }
                Step::Switched => Err("the sentinels switched the master".to_string()),
                Step::Tick => self.on_tick(&mut live).map(|ping| {
                    if let Some(ping) = ping {
                        pending = ping;
                    }
                }),
            };
            if let Err(why) = outcome {
                return why;
            }
        }
    }

    /// Whichever comes first: a reply, commands to write, a tick, or the
    /// sentinels naming another master.
    async fn next_step(
        &self,
        stream: &mut Stream,
        reader: &mut RespReader,
        generation: u64,
    ) -> Step {
        future::or(
            async { Step::Read(reader.read_value(stream).await) },
            future::or(
                async {
                    self.lane.outgoing().await;
                    Step::Write
                },
                future::or(
                    async {
                        glommio::timer::sleep(TICK).await;
                        Step::Tick
                    },
                    async {
                        self.switch.after(generation).await;
                        Step::Switched
                    },
                ),
            ),
        )
        .await
    }

    /// What Redis sent; Err: why the connection must go.
    fn on_reply(&self, v: Value, live: &mut Liveness, backoff: &mut Backoff) -> Result<(), String> {
        match v {
            Value::Array(items) | Value::Push { data: items, .. } => {
                live.heard_now();
                backoff.reset();
                self.sub.update_up();
                self.sub
                    .on_push(&items, &self.key, self.on_message.as_ref());
            }
            v @ Value::ServerError(_) => {
                // A refused (S)SUBSCRIBE, e.g. a cluster's MOVED
                // while the map was stale: say so, keep what does
                // work, and place that slot's channels again.
                tracing::warn!(error = ?v, "redis refused a subscription command");
                match self.sub.cluster.as_ref().map(|c| c.moved(&v)) {
                    Some(Ok(Some(slot))) => self.sub.unplace(slot, &self.key),
                    // A redirect to no slot: the connection is reset.
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(None)) | None => {}
                }
                live.heard_now();
            }
            Value::BulkString(head) => {
                // Only the head key's GET answers with a bulk string.
                live.heard_now();
                (self.on_message)(Target::Head, &head);
            }
            Value::Nil if self.sub.head_key.is_some() => {
                // And only it with nothing: the key does not exist.
                live.heard_now();
                (self.on_message)(Target::Head, b"");
            }
            // A PONG on a connection with no subscriptions.
            _ => live.heard_now(),
        }
        Ok(())
    }

    /// The once-a-tick work: the sweep, and the PING to send when the
    /// connection has been silent; Err: why the connection must go.
    fn on_tick(&self, live: &mut Liveness) -> Result<Option<Vec<u8>>, String> {
        let now = Instant::now();
        // With lanes, the cluster loop sweeps, once a tick.
        if self.sub.cluster.is_none() {
            self.sub.sweep(now);
        }
        let silent = now.saturating_duration_since(live.heard);
        if live.pinged && silent >= PING_AFTER + REPLY_TIMEOUT {
            return Err("no answer to PING".to_string());
        }
        if !live.pinged && silent >= PING_AFTER {
            live.pinged = true;
            return Ok(Some(redis::cmd("PING").get_packed_command()));
        }
        Ok(None)
    }
}

/// When the connection was last heard from, and whether a PING is out.
struct Liveness {
    heard: Instant,
    pinged: bool,
}

impl Liveness {
    fn new() -> Self {
        Liveness {
            heard: Instant::now(),
            pinged: false,
        }
    }

    fn heard_now(&mut self) {
        self.heard = Instant::now();
        self.pinged = false;
    }
}

impl Lane {
    pub(super) fn is_connected(&self) -> bool {
        self.connected.get()
    }

    /// Queues packed commands for the connection task to write.
    pub(super) fn queue(&self, cmd: &[u8]) {
        self.outbox.borrow_mut().extend_from_slice(cmd);
        self.wake();
    }

    /// Ends the lane's task: its master left the cluster's slot map.
    fn stop(&self) {
        self.stopped.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits until there is something to write, or the lane is stopped.
    async fn outgoing(&self) {
        poll_fn(|cx| {
            if self.outbox.borrow().is_empty() && !self.stopped.get() {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}
