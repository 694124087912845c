//! A shard's rooms: their members, which subscription connection (lane)
//! each channel rides, and what a push from Redis means for them.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::config::PubsubMode;
use crate::metrics::Metrics;
use crate::redis::cluster::Cluster;
use crate::redis::{self as rds, Value};

use super::lane::{Lane, LaneKey};
use super::room::{room_channel, RoomError, EVENTS_CHANNEL, ROOM_PREFIX};
use super::verbs::Verbs;

/// A room left empty keeps its subscription this long, so clients that
/// reconnect in a loop do not cost a SUBSCRIBE and UNSUBSCRIBE each time.
const LINGER: Duration = Duration::from_secs(10);

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
    /// Sockets joining on an open socket: the room's subscription counts
    /// them, its broadcasts pass them by until their recovery hands them
    /// over ([`Subscriber::admit`]).
    pending: Vec<u64>,
    /// The lane its subscription was sent on; None: not sent anywhere yet.
    lane: Option<LaneKey>,
    /// Redis has confirmed the subscription on the current connection.
    confirmed: bool,
    /// When the last member left.
    empty_since: Option<Instant>,
    /// Joins waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

/// A shard's rooms and its subscription connections' state. Shared by the
/// socket tasks (join, leave, fan-out) and the connection tasks ([`run`](super::run)).
///
/// Sharded channels on a Redis Cluster live on their slot's master, so there
/// the shard holds one connection (a lane) per master and each channel
/// rides the lane of its slot, moving when its slot does.
pub struct Subscriber {
    verbs: Verbs,
    max_rooms: usize,
    rooms: RefCell<HashMap<Rc<str>, Room>>,
    pub(super) lanes: RefCell<HashMap<LaneKey, Rc<Lane>>>,
    /// The lane the events channel is subscribed on.
    events_lane: RefCell<Option<LaneKey>>,
    /// Set in sharded mode on a cluster: whose slot map routes channels.
    pub(super) cluster: Option<Rc<Cluster>>,
    pub(super) head_key: Option<String>,
    metrics: Arc<Metrics>,
    pub(super) shard: usize,
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

    pub(super) fn lane(&self, key: &LaneKey) -> Option<Rc<Lane>> {
        self.lanes.borrow().get(key).cloned()
    }

    pub fn verbs(&self) -> Verbs {
        self.verbs
    }

    /// Adds socket `conn` to `room` (already checked with [`check_room`](super::check_room)).
    /// Returns the room's shared name, and a receiver that fires once Redis
    /// has confirmed the room's subscription, when it has not yet: the
    /// caller waits for it before the welcome, so a client that has its
    /// welcome gets every room broadcast published after it.
    pub fn join(
        &self,
        room: &str,
        conn: u64,
    ) -> Result<(Rc<str>, Option<oneshot::Receiver<()>>), RoomError> {
        self.join_as(room, conn, false)
    }

    /// As [`join`](Self::join), for a socket already open: it gets none of
    /// the room's broadcasts until [`admit`](Self::admit), so what it
    /// recovers meanwhile comes first.
    pub fn join_pending(
        &self,
        room: &str,
        conn: u64,
    ) -> Result<(Rc<str>, Option<oneshot::Receiver<()>>), RoomError> {
        self.join_as(room, conn, true)
    }

    /// A pending member becomes a member: the room's broadcasts reach it
    /// from the next one on. False when it is no longer pending (it left).
    pub fn admit(&self, room: &str, conn: u64) -> bool {
        let mut rooms = self.rooms.borrow_mut();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        let Some(i) = r.pending.iter().position(|&c| c == conn) else {
            return false;
        };
        r.pending.swap_remove(i);
        r.members.insert(conn);
        true
    }

    fn join_as(
        &self,
        room: &str,
        conn: u64,
        pending: bool,
    ) -> Result<(Rc<str>, Option<oneshot::Receiver<()>>), RoomError> {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(name) = rooms.get_key_value(room).map(|(k, _)| k.clone()) {
            let r = rooms.get_mut(room).expect("just found");
            if pending {
                r.pending.push(conn);
            } else {
                r.members.insert(conn);
            }
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
                .find(|(_, r)| r.is_empty())
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
                members: if pending {
                    HashSet::new()
                } else {
                    HashSet::from([conn])
                },
                pending: if pending { vec![conn] } else { Vec::new() },
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
            r.pending.retain(|&c| c != conn);
            if r.is_empty() {
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

    /// Calls `f` with each room that has members on this shard.
    pub fn for_each_room(&self, mut f: impl FnMut(&Rc<str>)) {
        for (name, r) in self.rooms.borrow().iter() {
            if !r.members.is_empty() {
                f(name);
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
        if !lane.is_connected() {
            return;
        }
        // One channel per command: a cluster wants every channel of an
        // SSUBSCRIBE in one slot, and rooms are in different slots.
        lane.queue(&redis::cmd(verb).arg(channel).get_packed_command());
    }

    /// Moves every channel whose slot moved to its master's lane (and
    /// places those the map did not know before). Cluster only.
    pub(super) fn rehome(&self) {
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
    pub(super) fn unplace(&self, slot: rds::Slot, lane: &LaneKey) {
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
    pub(super) fn update_up(&self) {
        let lanes = self.lanes.borrow();
        let up = !lanes.is_empty() && lanes.values().all(|l| l.is_connected());
        self.metrics.shards[self.shard].pubsub_up.set(up as u64);
    }

    /// Drops rooms empty for `LINGER`, and unsubscribes them.
    pub(super) fn sweep(&self, now: Instant) {
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

    /// A push from Redis on `lane`: a message for `on_message`, or a
    /// confirmation, or word that Redis dropped a subscription.
    pub(super) fn on_push(
        &self,
        items: &[Value],
        lane: &LaneKey,
        on_message: &impl Fn(Target<'_>, &[u8]),
    ) {
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
    pub(super) fn resubscribe_all(&self, lane: &LaneKey) -> Vec<u8> {
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
    fn a_pending_member_gets_nothing_until_admitted_and_can_leave_before() {
        let s = sub();
        s.join("a", 1).unwrap();
        s.join_pending("a", 2).unwrap();
        let members = |s: &Subscriber| {
            let mut m = Vec::new();
            s.for_each_member("a", |c| m.push(c));
            m.sort_unstable();
            m
        };
        assert_eq!(members(&s), [1]);
        assert!(s.admit("a", 2));
        assert_eq!(members(&s), [1, 2]);
        assert!(!s.admit("a", 2), "admitted once");
        // A pending member that leaves is not admitted later, and a room
        // whose only member is pending is not empty.
        s.join_pending("b", 3).unwrap();
        let now = Instant::now();
        s.sweep(now + LINGER * 2);
        assert_eq!(s.rooms(), 2, "a pending member holds its room");
        s.leave("b", 3);
        assert!(!s.admit("b", 3));
        s.sweep(Instant::now() + LINGER * 2);
        assert_eq!(s.rooms(), 1);
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
