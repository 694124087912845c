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
use futures_lite::{future, AsyncWriteExt};

use crate::config::PubsubMode;
use crate::config::RedisTarget;
use crate::metrics::Metrics;
use crate::redis::backoff::Backoff;
use crate::redis::sentinel::Switch;
use crate::redis::{self as rds, Value};

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
            },
            PubsubMode::Sharded => Verbs {
                publish: "SPUBLISH",
                subscribe: "SSUBSCRIBE",
                unsubscribe: "SUNSUBSCRIBE",
                message: b"smessage",
                subscribed: b"ssubscribe",
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
    /// Redis has confirmed the subscription on the current connection.
    confirmed: bool,
    /// When the last member left.
    empty_since: Option<Instant>,
    /// Joins waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

/// A shard's rooms and its subscription connection's state. Shared by the
/// socket tasks (join, leave, fan-out) and the connection task ([`run`]).
pub struct Subscriber {
    verbs: Verbs,
    max_rooms: usize,
    rooms: RefCell<HashMap<Rc<str>, Room>>,
    /// Packed commands for the connection task to write.
    outbox: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
    connected: Cell<bool>,
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
        metrics: Arc<Metrics>,
        shard: usize,
    ) -> Rc<Self> {
        Rc::new(Self {
            verbs: Verbs::of(mode),
            max_rooms,
            head_key,
            rooms: RefCell::new(HashMap::new()),
            outbox: RefCell::new(Vec::new()),
            waker: Cell::new(None),
            connected: Cell::new(false),
            metrics,
            shard,
        })
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
            rooms.remove(&empty);
            if self.connected.get() {
                self.send(self.verbs.unsubscribe, &room_channel(&empty));
            }
        }
        let name: Rc<str> = Rc::from(room);
        let (tx, rx) = oneshot::channel();
        rooms.insert(
            name.clone(),
            Room {
                members: HashSet::from([conn]),
                confirmed: false,
                empty_since: None,
                waiters: vec![tx],
            },
        );
        self.gauge(rooms.len());
        drop(rooms);
        // While disconnected, the reconnect subscribes every room there is.
        if self.connected.get() {
            self.send(self.verbs.subscribe, &room_channel(room));
        }
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

    fn send(&self, verb: &str, channel: &str) {
        // One channel per command: a cluster wants every channel of an
        // SSUBSCRIBE in one slot, and rooms are in different slots.
        let cmd = redis::cmd(verb).arg(channel).get_packed_command();
        self.outbox.borrow_mut().extend_from_slice(&cmd);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits until there is something to write.
    async fn outgoing(&self) {
        poll_fn(|cx| {
            if self.outbox.borrow().is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Drops rooms empty for `LINGER`, and unsubscribes them.
    fn sweep(&self, now: Instant) {
        let mut gone = Vec::new();
        self.rooms.borrow_mut().retain(|name, r| {
            let keep = r
                .empty_since
                .is_none_or(|t| now.saturating_duration_since(t) < LINGER);
            if !keep {
                gone.push(name.clone());
            }
            keep
        });
        if gone.is_empty() {
            return;
        }
        self.gauge(self.rooms.borrow().len());
        if self.connected.get() {
            for name in gone {
                self.send(self.verbs.unsubscribe, &room_channel(&name));
            }
        }
    }

    /// A push from Redis: a message for `on_message`, or a confirmation.
    fn on_push(&self, items: &[Value], on_message: &impl Fn(Target<'_>, &[u8])) {
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
        }
    }

    /// The commands a fresh connection starts with: every channel wanted.
    fn resubscribe_all(&self) -> Vec<u8> {
        let mut out = match &self.head_key {
            Some(k) => redis::cmd("GET").arg(k).get_packed_command(),
            None => Vec::new(),
        };
        out.extend(
            redis::cmd(self.verbs.subscribe)
                .arg(EVENTS_CHANNEL)
                .get_packed_command(),
        );
        for (name, r) in self.rooms.borrow_mut().iter_mut() {
            r.confirmed = false;
            out.extend(
                redis::cmd(self.verbs.subscribe)
                    .arg(room_channel(name))
                    .get_packed_command(),
            );
        }
        out
    }
}

/// Holds the shard's subscription connection for the shard's life: connects,
/// subscribes to the events channel and every room, then reads pushes and
/// writes (un)subscribe commands as sockets come and go. Reconnects with
/// backoff; messages published while it is away are lost (pub/sub keeps
/// nothing), which is why kicks also write a tombstone that resumes check.
pub async fn run(
    sub: Rc<Subscriber>,
    target: RedisTarget,
    switch: Rc<Switch>,
    on_message: impl Fn(Target<'_>, &[u8]),
) {
    let up = |v: bool| sub.metrics.shards[sub.shard].pubsub_up.set(v as u64);
    let mut backoff = Backoff::default();
    loop {
        let generation = switch.generation();
        // On a cluster: the node of the head key, which the connection
        // reads first (PUBLISH reaches every node, so any node would do
        // for the channels themselves).
        let slot = rds::Slot::of(sub.head_key.as_deref().unwrap_or(EVENTS_CHANNEL));
        if let Ok((mut stream, mut reader, _)) =
            rds::connect_master(&target, sub.shard, Some(slot)).await
        {
            // Pushes come when they come: liveness is the PING below.
            stream.set_read_timeout(None).ok();
            let first = sub.resubscribe_all();
            sub.outbox.borrow_mut().clear();
            sub.connected.set(true);
            let mut pending = first;
            let mut heard = Instant::now();
            let mut pinged = false;
            let why = loop {
                if !pending.is_empty() {
                    if let Err(e) = stream.write_all(&pending).await {
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
                            sub.outgoing().await;
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
                        up(true);
                        sub.on_push(&items, &on_message);
                    }
                    Step::Read(Ok(Value::ServerError(e))) => {
                        // A refused (S)SUBSCRIBE, e.g. a cluster's MOVED:
                        // say so, and keep what does work.
                        tracing::warn!(error = ?e, "redis refused a subscription command");
                        heard = Instant::now();
                    }
                    Step::Read(Ok(Value::BulkString(head))) => {
                        // Only the head key's GET answers with a bulk string.
                        heard = Instant::now();
                        on_message(Target::Head, &head);
                    }
                    Step::Read(Ok(_)) => heard = Instant::now(),
                    Step::Read(Err(e)) => break e.to_string(),
                    Step::Write => pending = std::mem::take(&mut *sub.outbox.borrow_mut()),
                    Step::Switched => break "the sentinels switched the master".to_string(),
                    Step::Tick => {
                        let now = Instant::now();
                        sub.sweep(now);
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
            sub.connected.set(false);
            up(false);
            tracing::warn!(error = %why, "redis subscription lost; resubscribing");
        } else {
            up(false);
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Rc<Subscriber> {
        Subscriber::new(
            PubsubMode::Plain,
            2,
            None,
            Arc::new(Metrics::new(1, "blue")),
            0,
        )
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
        s.on_push(&push("subscribe", "shardcast:room:lobby", ""), &|_, _| {});
        assert_eq!(wait.try_recv(), Ok(Some(())));
        let (_, wait) = s.join("lobby", 2).unwrap();
        assert!(wait.is_none(), "a confirmed room needs no wait");
        // A subscribe confirmation of the other mode means nothing here.
        let (_, wait) = s.join("other", 3).unwrap();
        s.on_push(&push("ssubscribe", "shardcast:room:other", ""), &|_, _| {});
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
        s.on_push(&push("smessage", "shardcast:events", "e"), &record);
        s.on_push(&push("smessage", "shardcast:room:a", "r"), &record);
        s.on_push(&push("message", "shardcast:room:a", "plain"), &record);
        s.on_push(&push("smessage", "elsewhere", "x"), &record);
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
