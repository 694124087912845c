//! Broadcasts and session kicks between shards, processes and nodes: channel
//! names, room rules, the plain and sharded command sets, and each shard's
//! one subscription connection, which holds the events channel plus one
//! channel per room that the shard's sockets are in.
//!
//! Rooms are channels of their own (`shardcast:room:<name>`), not a field of
//! one shared channel: a shard then receives only the rooms it serves, and in
//! sharded mode a Redis Cluster places each room on its slot's node, which
//! is what spreads the fan-out over the cluster.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::future;

use crate::config::PubsubMode;
use crate::metrics::Metrics;
use crate::redis::backoff::Backoff;
use crate::redis::cluster::Cluster;
use crate::redis::sentinel::Switch;
use crate::redis::stream::Tls;
use crate::redis::{self as rds, RedisAddr, RedisTarget, Value};

/// The channel of whole-service events ([`crate::protocol::BusEvent`]).
pub const EVENTS_CHANNEL: &str = "shardcast:events";
const ROOM_PREFIX: &str = "shardcast:room:";
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// A room left empty keeps its subscription this long, so clients that
/// reconnect in a loop do not cost a SUBSCRIBE and UNSUBSCRIBE each time.
const LINGER: Duration = Duration::from_secs(10);
/// How often the connection loop wakes for the sweep and the liveness check.
const TICK: Duration = Duration::from_secs(1);
/// A subscription silent this long gets a PING; one still silent a
/// `REPLY_TIMEOUT` later is reconnected. Without it a half-open connection
/// (Redis host gone, no RST) would swallow broadcasts for hours.
const PING_AFTER: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a socket cannot be in the room it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    Invalid,
    #[error("too many rooms on this shard")]
    TooMany,
}

/// Checks a room name from a query string or a broadcast body. The set is
/// narrow on purpose: names go into Redis channel names and log lines, and
/// need no escaping or percent-decoding anywhere.
pub fn check_room(name: &str) -> Result<(), RoomError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ROOM_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RoomError::Invalid)
    }
}

/// The query parameter that names a socket's room.
pub const ROOM_PARAM: &str = "room";

pub fn room_channel(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// The commands and push kinds of one pub/sub mode.
#[derive(Debug, Clone, Copy)]
pub struct Verbs {
    pub publish: &'static str,
    subscribe: &'static str,
    unsubscribe: &'static str,
    message: &'static [u8],
    subscribed: &'static [u8],
    unsubscribed: &'static [u8],
}

impl Verbs {
    pub fn of(mode: PubsubMode) -> Verbs {
        match mode {
            PubsubMode::Plain => Verbs {
                publish: "PUBLISH",
                subscribe: "SUBSCRIBE",
                unsubscribe: "UNSUBSCRIBE",
                message: b"message",
                subscribed: b"subscribe",
                unsubscribed: b"unsubscribe",
            },
            PubsubMode::Sharded => Verbs {
                publish: "SPUBLISH",
                subscribe: "SSUBSCRIBE",
                unsubscribe: "SUNSUBSCRIBE",
                message: b"smessage",
                subscribed: b"ssubscribe",
                unsubscribed: b"sunsubscribe",
            },
        }
    }

    /// Where a publish on `channel` goes in a cluster: its slot's master
    /// for a sharded channel; any node for a plain one, which PUBLISH
    /// carries to all.
    pub fn slot(&self, channel: &str) -> Option<rds::Slot> {
        (self.publish == "SPUBLISH").then(|| rds::Slot::of(channel))
    }

    /// The publish command for `channel`, ready to queue on the command
    /// connection.
    pub fn publish(&self, channel: &str, payload: &str) -> redis::Cmd {
        redis::cmd(self.publish).arg(channel).arg(payload).clone()
    }

    /// The event that closes session `id`'s sockets on every shard of
    /// every process, and where it must be sent.
    pub fn kick(&self, id: &uuid::Uuid) -> Publish {
        let event = serde_json::to_string(&crate::protocol::BusEvent::kick(id.to_string()))
            .unwrap_or_default();
        Publish {
            cmd: self.publish(EVENTS_CHANNEL, &event),
            slot: self.slot(EVENTS_CHANNEL),
        }
    }
}

/// A publish built by [`Verbs`], with the cluster slot it must go to.
pub struct Publish {
    pub cmd: redis::Cmd,
    pub slot: Option<rds::Slot>,
}

/// Where a received message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every socket of the shard (or a kick, which the event names).
    Events,
    /// The members of this room on this shard.
    Room(&'a str),
    /// The value of the head key, read on a fresh connection before it
    /// subscribes (see [`Subscriber::new`]).
    Head,
}

struct Room {
    members: HashSet<u64>,
    /// The lane its subscription was sent on; None: not sent anywhere yet.
    lane: Option<LaneKey>,
    /// Redis has confirmed the subscription on the current connection.
    confirmed: bool,
    /// When the last member left.
    empty_since: Option<Instant>,
    /// Joins waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

/// Which subscription connection: the shard's one (`None`), or, in sharded
/// mode on a Redis Cluster, the one to this master.
type LaneKey = Option<RedisAddr>;

/// One subscription connection's state, shared with its task.
#[derive(Default)]
struct Lane {
    /// Packed commands for the connection task to write.
    outbox: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    connected: Cell<bool>,
    /// Its master left the cluster's slot map: the task ends.
    stopped: Cell<bool>,
}

/// A shard's rooms and its subscription connections' state. Shared by the
/// socket tasks (join, leave, fan-out) and the connection tasks ([`run`]).
///
/// Sharded channels on a Redis Cluster live on their slot's master, so there
/// the shard holds one connection (a lane) per master and each channel
/// rides the lane of its slot, moving when its slot does.
pub struct Subscriber {
    verbs: Verbs,
    max_rooms: usize,
    rooms: RefCell<HashMap<Rc<str>, Room>>,
    lanes: RefCell<HashMap<LaneKey, Rc<Lane>>>,
    /// The lane the events channel is subscribed on.
    events_lane: RefCell<Option<LaneKey>>,
    /// Set in sharded mode on a cluster: whose slot map routes channels.
    cluster: Option<Rc<Cluster>>,
    head_key: Option<String>,
    metrics: Arc<Metrics>,
    shard: usize,
}

impl Subscriber {
    /// `head_key`: a key whose value each fresh connection reads (`GET`)
    /// before it subscribes, handed on as [`Target::Head`]: whatever it
    /// names was published before any message this connection receives.
    pub fn new(
        mode: PubsubMode,
        max_rooms: usize,
        head_key: Option<String>,
        cluster: Option<Rc<Cluster>>,
        metrics: Arc<Metrics>,
        shard: usize,
    ) -> Rc<Self> {
        // Plain channels reach every node of a cluster: one lane will do.
        let cluster = cluster.filter(|_| mode == PubsubMode::Sharded);
        Rc::new(Self {
            verbs: Verbs::of(mode),
            max_rooms,
            head_key,
            rooms: RefCell::new(HashMap::new()),
            lanes: RefCell::new(HashMap::new()),
            events_lane: RefCell::new(None),
            cluster,
            metrics,
            shard,
        })
    }

    /// The lane `channel` belongs on now; None while the cluster's map
    /// does not know (the next tick places it).
    fn lane_of(&self, channel: &str) -> Option<LaneKey> {
        match &self.cluster {
            None => Some(None),
            Some(c) => c.owner(rds::Slot::of(channel)).map(Some),
        }
    }

    fn lane(&self, key: &LaneKey) -> Option<Rc<Lane>> {
        self.lanes.borrow().get(key).cloned()
    }

    pub fn verbs(&self) -> Verbs {
        self.verbs
    }

    /// Adds socket `conn` to `room` (already checked with [`check_room`]).
    /// Returns the room's shared name, and a receiver that fires once Redis
    /// has confirmed the room's subscription, when it has not yet: the
    /// caller waits for it before the welcome, so a client that has its
    /// welcome gets every room broadcast published after it.
    pub fn join(
        &self,
        room: &str,
        conn: u64,
    ) -> Result<(Rc<str>, Option<oneshot::Receiver<()>>), RoomError> {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(name) = rooms.get_key_value(room).map(|(k, _)| k.clone()) {
            let r = rooms.get_mut(room).expect("just found");
            r.members.insert(conn);
            r.empty_since = None;
            let wait = (!r.confirmed).then(|| {
                let (tx, rx) = oneshot::channel();
                r.waiters.push(tx);
                rx
            });
            return Ok((name, wait));
        }
        if rooms.len() >= self.max_rooms {
            // At the bound, a room nobody is in gives up its lingering
            // subscription before a new room is refused.
            let empty = rooms
                .iter()
                .find(|(_, r)| r.members.is_empty())
                .map(|(name, _)| name.clone());
            let Some(empty) = empty else {
                return Err(RoomError::TooMany);
            };
            if let Some(r) = rooms.remove(&empty) {
                self.send(
                    r.lane.as_ref(),
                    self.verbs.unsubscribe,
                    &room_channel(&empty),
                );
            }
        }
        let name: Rc<str> = Rc::from(room);
        let (tx, rx) = oneshot::channel();
        let channel = room_channel(room);
        let lane = self.lane_of(&channel);
        rooms.insert(
            name.clone(),
            Room {
                members: HashSet::from([conn]),
                lane: lane.clone(),
                confirmed: false,
                empty_since: None,
                waiters: vec![tx],
            },
        );
        self.gauge(rooms.len());
        drop(rooms);
        // While disconnected, the reconnect subscribes every room there is.
        self.send(lane.as_ref(), self.verbs.subscribe, &channel);
        Ok((name, Some(rx)))
    }

    /// Takes socket `conn` out of `room`. The subscription stays for
    /// `LINGER`, then the sweep drops it.
    pub fn leave(&self, room: &str, conn: u64) {
        if let Some(r) = self.rooms.borrow_mut().get_mut(room) {
            r.members.remove(&conn);
            if r.members.is_empty() {
                r.empty_since = Some(Instant::now());
            }
        }
    }

    /// The shared name of `room`, when this shard holds it.
    pub fn room_name(&self, room: &str) -> Option<Rc<str>> {
        self.rooms
            .borrow()
            .get_key_value(room)
            .map(|(k, _)| k.clone())
    }

    /// Calls `f` with the connection id of each member of `room` on this shard.
    pub fn for_each_member(&self, room: &str, mut f: impl FnMut(u64)) {
        if let Some(r) = self.rooms.borrow().get(room) {
            for &conn in &r.members {
                f(conn);
            }
        }
    }

    /// Publishes `payload` on `channel` through the shard's command
    /// connection; returns how many subscribers (shards, of any process)
    /// hold the channel.
    pub async fn publish(
        &self,
        redis: &rds::Redis,
        channel: &str,
        payload: &str,
    ) -> Result<u64, rds::RedisError> {
        let v = redis
            .query(
                self.verbs.slot(channel),
                &self.verbs.publish(channel, payload),
            )
            .await?;
        Ok(rds::as_u64(&v).unwrap_or(0))
    }

    /// Rooms this shard holds a subscription for (with members or lingering).
    pub fn rooms(&self) -> usize {
        self.rooms.borrow().len()
    }

    fn gauge(&self, rooms: usize) {
        self.metrics.shards[self.shard]
            .rooms_active
            .set(rooms as u64);
    }

    /// Queues `verb channel` on `lane` if it is connected (a lane that
    /// connects later subscribes what it should then).
    fn send(&self, lane: Option<&LaneKey>, verb: &str, channel: &str) {
        let Some(lane) = lane.and_then(|k| self.lane(k)) else {
            return;
        };
        if !lane.connected.get() {
            return;
        }
        // One channel per command: a cluster wants every channel of an
        // SSUBSCRIBE in one slot, and rooms are in different slots.
        let cmd = redis::cmd(verb).arg(channel).get_packed_command();
        lane.outbox.borrow_mut().extend_from_slice(&cmd);
        if let Some(w) = lane.waker.take() {
            w.wake();
        }
    }

    /// Moves every channel whose slot moved to its master's lane (and
    /// places those the map did not know before). Cluster only.
    fn rehome(&self) {
        if self.cluster.is_none() {
            return;
        }
        let events = self.lane_of(EVENTS_CHANNEL);
        if events.is_some() && *self.events_lane.borrow() != events {
            let old = self.events_lane.replace(events.clone());
            self.send(old.as_ref(), self.verbs.unsubscribe, EVENTS_CHANNEL);
            self.send(events.as_ref(), self.verbs.subscribe, EVENTS_CHANNEL);
        }
        let mut moves = Vec::new();
        for (name, r) in self.rooms.borrow_mut().iter_mut() {
            let channel = room_channel(name);
            let now = self.lane_of(&channel);
            if now.is_some() && r.lane != now {
                let old = std::mem::replace(&mut r.lane, now.clone());
                r.confirmed = false;
                moves.push((old, now, channel));
            }
        }
        for (old, now, channel) in moves {
            self.send(old.as_ref(), self.verbs.unsubscribe, &channel);
            self.send(now.as_ref(), self.verbs.subscribe, &channel);
        }
    }

    /// The channels in `slot` that were sent to `lane` are not there: the
    /// next tick places them where the map says.
    fn unplace(&self, slot: rds::Slot, lane: &LaneKey) {
        let here = Some(lane.clone());
        if rds::Slot::of(EVENTS_CHANNEL) == slot && *self.events_lane.borrow() == here {
            self.events_lane.replace(None);
        }
        for (name, r) in self.rooms.borrow_mut().iter_mut() {
            if r.lane == here && rds::Slot::of(room_channel(name)) == slot {
                r.lane = None;
                r.confirmed = false;
            }
        }
    }

    /// 1 while every lane is connected.
    fn update_up(&self) {
        let lanes = self.lanes.borrow();
        let up = !lanes.is_empty() && lanes.values().all(|l| l.connected.get());
        self.metrics.shards[self.shard].pubsub_up.set(up as u64);
    }

    /// Drops rooms empty for `LINGER`, and unsubscribes them.
    fn sweep(&self, now: Instant) {
        let mut gone = Vec::new();
        self.rooms.borrow_mut().retain(|name, r| {
            let keep = r
                .empty_since
                .is_none_or(|t| now.saturating_duration_since(t) < LINGER);
            if !keep {
                gone.push((name.clone(), r.lane.clone()));
            }
            keep
        });
        if gone.is_empty() {
            return;
        }
        self.gauge(self.rooms.borrow().len());
        for (name, lane) in gone {
            self.send(lane.as_ref(), self.verbs.unsubscribe, &room_channel(&name));
        }
    }

    /// A push from Redis: a message for `on_message`, or a confirmation.
    /// A push from Redis on `lane`: a message for `on_message`, or a
    /// confirmation, or word that Redis dropped a subscription.
    fn on_push(&self, items: &[Value], lane: &LaneKey, on_message: &impl Fn(Target<'_>, &[u8])) {
        let [Value::BulkString(kind), Value::BulkString(channel), rest] = items else {
            return;
        };
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let target = if channel == EVENTS_CHANNEL {
            Target::Events
        } else if let Some(room) = channel.strip_prefix(ROOM_PREFIX) {
            Target::Room(room)
        } else {
            return;
        };
        if kind.as_slice() == self.verbs.message {
            if let Value::BulkString(payload) = rest {
                self.metrics.shards[self.shard].pubsub_messages_total.inc();
                on_message(target, payload);
            }
        } else if kind.as_slice() == self.verbs.subscribed {
            if let Target::Room(room) = target {
                if let Some(r) = self.rooms.borrow_mut().get_mut(room) {
                    r.confirmed = true;
                    for w in r.waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            }
        } else if kind.as_slice() == self.verbs.unsubscribed {
            // Ours are sent after the channel left the lane; one for a
            // channel still on it is Redis's: its slot moved away (a
            // cluster drops a moved slot's shard channels). The next tick
            // subscribes it where the slot is now.
            let here = Some(lane.clone());
            match target {
                Target::Events if *self.events_lane.borrow() == here => {
                    self.events_lane.replace(None);
                }
                Target::Room(room) => {
                    if let Some(r) = self.rooms.borrow_mut().get_mut(room) {
                        if r.lane == here {
                            r.lane = None;
                            r.confirmed = false;
                        }
                    }
                }
                _ => {}
            }
            if let Some(c) = &self.cluster {
                c.mark_stale();
            }
        }
    }

    /// The commands a fresh connection on `lane` starts with: every channel
    /// wanted there.
    fn resubscribe_all(&self, lane: &LaneKey) -> Vec<u8> {
        let here = Some(lane.clone());
        let mut out = match &self.head_key {
            Some(k) => redis::cmd("GET").arg(k).get_packed_command(),
            None => Vec::new(),
        };
        if self.lane_of(EVENTS_CHANNEL) == here {
            self.events_lane.replace(here.clone());
            out.extend(
                redis::cmd(self.verbs.subscribe)
                    .arg(EVENTS_CHANNEL)
                    .get_packed_command(),
            );
        }
        for (name, r) in self.rooms.borrow_mut().iter_mut() {
            let channel = room_channel(name);
            if self.lane_of(&channel) != here {
                continue;
            }
            r.lane = here.clone();
            r.confirmed = false;
            out.extend(
                redis::cmd(self.verbs.subscribe)
                    .arg(channel)
                    .get_packed_command(),
            );
        }
        out
    }
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
                    lane.stopped.set(true);
                    if let Some(w) = lane.waker.take() {
                        w.wake();
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Rc<Subscriber> {
        let s = Subscriber::new(
            PubsubMode::Plain,
            2,
            None,
            None,
            Arc::new(Metrics::new(1, "blue")),
            0,
        );
        s.lanes.borrow_mut().insert(None, Rc::default());
        s
    }

    fn push(kind: &str, channel: &str, payload: &str) -> Vec<Value> {
        vec![
            Value::BulkString(kind.as_bytes().to_vec()),
            Value::BulkString(channel.as_bytes().to_vec()),
            Value::BulkString(payload.as_bytes().to_vec()),
        ]
    }

    #[test]
    fn room_names_are_narrow() {
        for ok in ["lobby", "a", "team-7", "eu.west:1", "x_y", &"r".repeat(64)] {
            assert_eq!(check_room(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a%20b", "é", "a/b", "a*", &"r".repeat(65)] {
            assert_eq!(check_room(bad), Err(RoomError::Invalid), "{bad}");
        }
    }

    #[test]
    fn join_waits_for_the_confirmation_and_later_joins_do_not() {
        let s = sub();
        let (name, wait) = s.join("lobby", 1).unwrap();
        assert_eq!(&*name, "lobby");
        let mut wait = wait.expect("the first join waits");
        assert_eq!(wait.try_recv(), Ok(None));
        s.on_push(
            &push("subscribe", "shardcast:room:lobby", ""),
            &None,
            &|_, _| {},
        );
        assert_eq!(wait.try_recv(), Ok(Some(())));
        let (_, wait) = s.join("lobby", 2).unwrap();
        assert!(wait.is_none(), "a confirmed room needs no wait");
        // A subscribe confirmation of the other mode means nothing here.
        let (_, wait) = s.join("other", 3).unwrap();
        s.on_push(
            &push("ssubscribe", "shardcast:room:other", ""),
            &None,
            &|_, _| {},
        );
        assert_eq!(wait.unwrap().try_recv(), Ok(None));
    }

    #[test]
    fn rooms_are_bounded_and_empty_ones_linger_then_go() {
        let s = sub();
        s.join("a", 1).unwrap();
        s.join("b", 2).unwrap();
        assert_eq!(s.join("c", 3).err(), Some(RoomError::TooMany));
        // An existing room takes more members past the bound.
        assert!(s.join("a", 4).is_ok());
        s.leave("b", 2);
        let now = Instant::now();
        s.sweep(now);
        assert_eq!(s.rooms(), 2, "lingers");
        s.sweep(now + LINGER);
        assert_eq!(s.rooms(), 1);
        assert!(s.join("c", 3).is_ok());
        // At the bound, a lingering room makes way for a new one at once.
        s.leave("c", 3);
        assert!(s.join("d", 6).is_ok());
        assert_eq!(s.rooms(), 2);
        assert_eq!(s.join("e", 7).err(), Some(RoomError::TooMany));
        s.join("c", 3).unwrap_err();
        s.leave("d", 6);
        s.join("c", 3).unwrap();
        // A room re-joined while lingering is not swept.
        s.leave("c", 3);
        s.join("c", 5).unwrap();
        let later = Instant::now();
        s.sweep(later + LINGER * 2);
        assert_eq!(s.rooms(), 2);
    }

    #[test]
    fn messages_reach_their_target_and_members_are_per_room() {
        let s = Subscriber::new(
            PubsubMode::Sharded,
            8,
            None,
            None,
            Arc::new(Metrics::new(1, "blue")),
            0,
        );
        s.join("a", 1).unwrap();
        s.join("a", 2).unwrap();
        s.join("b", 3).unwrap();
        let seen = RefCell::new(Vec::new());
        let record = |t: Target<'_>, p: &[u8]| {
            seen.borrow_mut()
                .push(format!("{t:?} {}", String::from_utf8_lossy(p)))
        };
        s.on_push(&push("smessage", "shardcast:events", "e"), &None, &record);
        s.on_push(&push("smessage", "shardcast:room:a", "r"), &None, &record);
        s.on_push(
            &push("message", "shardcast:room:a", "plain"),
            &None,
            &record,
        );
        s.on_push(&push("smessage", "elsewhere", "x"), &None, &record);
        assert_eq!(*seen.borrow(), ["Events e", "Room(\"a\") r"]);
        let mut n = 0;
        s.for_each_member("a", |_| n += 1);
        assert_eq!(n, 2);
        s.leave("a", 1);
        n = 0;
        s.for_each_member("a", |_| n += 1);
        assert_eq!(n, 1);
    }
}
