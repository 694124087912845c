//! A shard's subscription connection(s): connect, subscribe, read pushes,
//! write (un)subscribe commands, and reconnect.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::config::{RedisAddr, RedisTarget};
use crate::redis::backoff::Backoff;
use crate::redis::sentinel::Switch;
use crate::redis::stream::Tls;
use crate::redis::{self as rds, Value};

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

/// One subscription connection, to `target`, for the channels of `key`.
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
    let mut backoff = Backoff::default();
    while !lane.stopped.get() {
        let generation = switch.generation();
        // On a cluster: the node of the head key, which the connection
        // reads first (PUBLISH reaches every node, so any node would do
        // for the channels themselves).
        let slot = rds::Slot::of(sub.head_key.as_deref().unwrap_or(EVENTS_CHANNEL));
        if let Ok((mut stream, mut reader, _)) =
            rds::connect_master(&target, &tls, sub.shard, Some(slot)).await
        {
            // Pushes come when they come: liveness is the PING below.
            stream.set_read_timeout(None);
            let first = sub.resubscribe_all(&key);
            lane.outbox.borrow_mut().clear();
            lane.connected.set(true);
            let mut pending = first;
            let mut heard = Instant::now();
            let mut pinged = false;
            let why = loop {
                if lane.stopped.get() {
                    break "its master left the cluster's slot map".to_string();
                }
                if !pending.is_empty() {
                    if let Err(e) = stream.send(&pending).await {
                        break e.to_string();
                    }
                    pending.clear();
                }
                enum Step {
                    Read(Result<Value, rds::RedisError>),
                    Write,
                    Tick,
                    Switched,
                }
                let step = future::or(
                    async { Step::Read(reader.read_value(&mut stream).await) },
                    future::or(
                        async {
                            lane.outgoing().await;
                            Step::Write
                        },
                        future::or(
                            async {
                                glommio::timer::sleep(TICK).await;
                                Step::Tick
                            },
                            async {
                                switch.after(generation).await;
                                Step::Switched
                            },
                        ),
                    ),
                )
                .await;
                // A read that lost the race keeps its partial reply in
                // `reader` and its bytes in the socket (see ws::socket).
                match step {
                    Step::Read(Ok(Value::Array(items) | Value::Push { data: items, .. })) => {
                        heard = Instant::now();
                        pinged = false;
                        backoff.reset();
                        sub.update_up();
                        sub.on_push(&items, &key, on_message.as_ref());
                    }
                    Step::Read(Ok(v @ Value::ServerError(_))) => {
                        // A refused (S)SUBSCRIBE, e.g. a cluster's MOVED
                        // while the map was stale: say so, keep what does
                        // work, and place that slot's channels again.
                        tracing::warn!(error = ?v, "redis refused a subscription command");
                        match sub.cluster.as_ref().map(|c| c.moved(&v)) {
                            Some(Ok(Some(slot))) => sub.unplace(slot, &key),
                            // A redirect to no slot: the connection is reset.
                            Some(Err(e)) => break e.to_string(),
                            Some(Ok(None)) | None => {}
                        }
                        heard = Instant::now();
                        pinged = false;
                    }
                    Step::Read(Ok(Value::BulkString(head))) => {
                        // Only the head key's GET answers with a bulk string.
                        heard = Instant::now();
                        pinged = false;
                        on_message(Target::Head, &head);
                    }
                    // A PONG on a connection with no subscriptions.
                    Step::Read(Ok(_)) => {
                        heard = Instant::now();
                        pinged = false;
                    }
                    Step::Read(Err(e)) => break e.to_string(),
                    Step::Write => pending = std::mem::take(&mut *lane.outbox.borrow_mut()),
                    Step::Switched => break "the sentinels switched the master".to_string(),
                    Step::Tick => {
                        let now = Instant::now();
                        // With lanes, the cluster loop sweeps, once a tick.
                        if sub.cluster.is_none() {
                            sub.sweep(now);
                        }
                        let silent = now.saturating_duration_since(heard);
                        if pinged && silent >= PING_AFTER + REPLY_TIMEOUT {
                            break "no answer to PING".to_string();
                        }
                        if !pinged && silent >= PING_AFTER {
                            pinged = true;
                            pending = redis::cmd("PING").get_packed_command();
                        }
                    }
                }
            };
            lane.connected.set(false);
            sub.update_up();
            if !lane.stopped.get() {
                tracing::warn!(error = %why, "redis subscription lost; resubscribing");
            }
        } else {
            sub.update_up();
        }
        if !lane.stopped.get() {
            backoff.wait().await;
        }
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
