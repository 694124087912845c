//! Broadcast history: each channel's stream and epoch in Redis, the scripts
//! that append a broadcast and publish it in one step and read what a
//! reconnecting socket missed, the shard's heads (the newest piece of each
//! channel it heard of), and the bridge between a recovery's read and live
//! delivery.
//!
//! Each channel (the global one, each room) has its own stream, offsets and
//! epoch ([`scripts`]); a client's place on all of its channels travels as
//! one opaque token ([`position`]). On a Redis Cluster a channel's keys and
//! its sharded pub/sub channel share a slot, so history spreads over the
//! cluster with the rooms.
//!
//! The seam between history and live: a recovering socket is not in the
//! plane yet, so live messages pass it by. While any recovery runs, the
//! shard keeps every live message it receives ([`Bridge`]). A message that
//! reached the shard before the read was sent was published before the read
//! ran, so the read has it; one that reached it after is in the bridge. The
//! socket gets the read, then the bridge's messages of its channels newer
//! than the read's, and joins the plane in the same loop turn: nothing
//! twice, nothing missing.

pub mod gap;
pub mod position;
pub mod scripts;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::protocol;
use crate::pubsub::{room_channel, EVENTS_CHANNEL};
use crate::redis::replicas::Replicas;
use crate::redis::{self as rds, RedisError};

pub use gap::{Arrival, Held};
pub use position::{Epoch, Offset, OffsetError, Piece, Position, PositionError};
pub use position::{POSITION_PARAM, SINCE_PARAM};
pub use scripts::Lost;
use scripts::{head_key, read_publish, read_recovery, slot, stream_key, text};
use scripts::{END_LIFE_SCRIPT, PUBLISH_SCRIPT, RECOVER_SCRIPT};

/// Live messages a shard keeps while recoveries run. A recovery that
/// outlives this many arrivals reports what it could not give, never a gap.
const BRIDGE_MAX: usize = 8192;
/// How long a recovered socket's floor is kept waiting for a live copy of
/// what it recovered: far above a pub/sub delivery's latency.
const FLOOR_TTL: Duration = Duration::from_secs(30);
/// Floors kept at most, whatever the rate of recoveries.
const MAX_FLOORS: usize = 16_384;

/// A channel as history names it: None the global one, Some a room.
pub type Chan = Option<Rc<str>>;

/// The Redis channel of `room` (None: the global channel).
pub fn channel_of(room: Option<&str>) -> String {
    match room {
        None => EVENTS_CHANNEL.to_string(),
        Some(r) => room_channel(r),
    }
}

/// The channels a socket has from its upgrade: the global one, and its
/// room (with its head as read at the join) if it names one.
pub fn channels_of(room: Option<&Rc<str>>, head: Option<Piece>) -> Vec<Channel> {
    let global = Channel::of_upgrade(None, None);
    let room = room.map(|r| Channel::of_upgrade(Some(r.clone()), head));
    std::iter::once(global).chain(room).collect()
}

/// A channel a socket is in, as its recovery and position see it.
#[derive(Debug, Clone)]
pub struct Channel {
    pub chan: Chan,
    /// A room's head as read at the socket's join, when the shard had
    /// delivered nothing there.
    pub head: Option<Piece>,
    /// A room joined on its own (on the open socket, or again with its
    /// session): the positions of its frames name it alone.
    pub alone: bool,
}

impl Channel {
    /// A channel of the socket's upgrade: the global one, or its room.
    pub fn of_upgrade(chan: Chan, head: Option<Piece>) -> Channel {
        Channel {
            chan,
            head,
            alone: false,
        }
    }
}

/// What a client asked to recover from.
#[derive(Debug, Clone)]
pub enum Since {
    /// A position token: a piece per channel, each checked by its epoch.
    Position(Position),
    /// A bare offset, as before positions: the same offset on each of the
    /// socket's channels, with no epoch to check.
    Offset(Offset),
}

impl Since {
    /// What the client asks of one channel: its piece and the epoch to
    /// check (`""` none, `"*"` unknown). None: nothing (the position does
    /// not name the channel, so the socket was not in it).
    fn of(&self, room: Option<&str>) -> Option<(Piece, String)> {
        match self {
            Since::Offset(o) => Some((
                Piece {
                    epoch: None,
                    offset: *o,
                },
                "*".into(),
            )),
            Since::Position(p) => {
                let piece = p.of(room)?;
                let want = piece.epoch.map(|e| e.to_string()).unwrap_or_default();
                Some((piece, want))
            }
        }
    }
}

/// A live message as the bridge keeps it.
struct Kept {
    /// Its place in the shard's arrival order.
    seq: u64,
    room: Chan,
    piece: Piece,
    message: Rc<str>,
}

/// Live messages that arrived while recoveries ran.
#[derive(Default)]
struct Bridge {
    recoveries: usize,
    next: u64,
    /// Arrivals before this were dropped at the bound.
    kept_from: u64,
    kept: VecDeque<Kept>,
}

/// What a reconnecting socket gets before it joins the plane.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Broadcast frames' texts, in the order to send them (each channel's
    /// oldest first), each with the position the socket has once it got it.
    pub texts: Vec<String>,
    /// The channels whose missed broadcasts are not all in `texts`, and why.
    pub lost: Vec<(Chan, Lost)>,
    /// Where the socket is on each of its channels before `texts`: what
    /// its welcome says.
    pub start: Vec<(Chan, Piece)>,
    /// And once they are all sent.
    pub has: Vec<(Chan, Piece)>,
}

impl Recovery {
    pub fn complete(&self) -> bool {
        self.lost.is_empty()
    }

    /// A position as a token.
    pub fn token(pieces: &[(Chan, Piece)]) -> String {
        Position {
            channels: pieces
                .iter()
                .map(|(c, p)| (c.as_deref().map(String::from), *p))
                .collect(),
        }
        .token()
    }
}

/// A recovered broadcast before its frame is made.
struct Missed {
    room: Chan,
    piece: Piece,
    message: Rc<str>,
}

/// A shard's history settings, scripts, heads and bridge.
pub struct History {
    /// Entries kept per channel; 0: no history, today's frames.
    size: usize,
    ttl_ms: u64,
    publish_verb: &'static str,
    /// A broadcast is accepted once the replicas asked for hold it, so a
    /// failover cannot hand its offset out again.
    replicas: Rc<Replicas>,
    publish: redis::Script,
    recover: redis::Script,
    end_life: redis::Script,
    bridge: RefCell<Bridge>,
    /// The newest piece this shard heard of on each channel: read from
    /// Redis when it started to hear the channel, then each message
    /// received. A welcome carries them.
    heads: RefCell<HashMap<Chan, Piece>>,
    /// Heads kept at most: rooms come and go, and a head not kept is read
    /// again at the next join.
    max_heads: usize,
    /// Recovered sockets and the newest piece each already has on a
    /// channel. A message published before a recovery read can reach the
    /// shard after it (the reply and the message come on different
    /// connections), and must not reach that socket twice. In the order
    /// they were set, with when.
    floors: RefCell<Vec<(u64, Chan, Piece, Instant)>>,
    /// Channels whose gap is being read back, and what they hold meanwhile.
    repairs: RefCell<HashMap<Chan, gap::Repair>>,
    /// Rooms whose head was read from Redis at a join, not delivered here:
    /// a broadcast published between the room's subscription and that read
    /// may still arrive below it, and is the shard's first, not a repeat.
    tentative: RefCell<std::collections::HashSet<Rc<str>>>,
}

impl History {
    pub fn new(
        size: usize,
        ttl_ms: u64,
        publish_verb: &'static str,
        replicas: Rc<Replicas>,
        max_rooms: usize,
    ) -> Self {
        Self {
            size,
            ttl_ms,
            publish_verb,
            replicas,
            publish: redis::Script::new(PUBLISH_SCRIPT),
            recover: redis::Script::new(RECOVER_SCRIPT),
            end_life: redis::Script::new(END_LIFE_SCRIPT),
            bridge: RefCell::new(Bridge::default()),
            heads: RefCell::new(HashMap::new()),
            max_heads: max_rooms.saturating_mul(2).max(16),
            floors: RefCell::new(Vec::new()),
            repairs: RefCell::new(HashMap::new()),
            tentative: RefCell::new(std::collections::HashSet::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// The scripts loaded on every Redis (re)connect.
    pub const SCRIPTS: &'static [&'static str] = &[PUBLISH_SCRIPT, RECOVER_SCRIPT, END_LIFE_SCRIPT];

    /// The key whose value a fresh subscription reads first: the global
    /// channel's head.
    pub fn global_head_key() -> String {
        head_key(EVENTS_CHANNEL)
    }

    /// The newest piece this shard delivered on a channel (or, for the
    /// global one, read before it subscribed); None: unknown.
    pub fn head(&self, room: Option<&Rc<str>>) -> Option<Piece> {
        self.heads.borrow().get(&room.cloned()).copied()
    }

    /// A channel's head as read from Redis (`<epoch>:<offset>`, or nothing:
    /// no stream), which replaces what the shard had.
    pub fn set_head(&self, room: Option<&Rc<str>>, head: Option<Piece>) {
        let mut heads = self.heads.borrow_mut();
        if heads.len() >= self.max_heads && !heads.contains_key(&room.cloned()) {
            heads.retain(|k, _| k.is_none());
            self.tentative.borrow_mut().clear();
        }
        heads.insert(room.cloned(), head.unwrap_or_default());
    }

    /// Forgets what the shard delivered on a room: it is subscribing to it
    /// afresh, and what it delivered before says nothing of what its new
    /// members have.
    pub fn forget_head(&self, room: &Rc<str>) {
        self.heads.borrow_mut().remove(&Some(room.clone()));
        self.tentative.borrow_mut().remove(room);
    }

    /// A room's head as read at a join, when the shard has delivered
    /// nothing there since it subscribed: what the sockets' positions say
    /// until the first broadcast, which replaces it whatever its offset.
    pub fn set_tentative_head(&self, room: &Rc<str>, head: Piece) {
        if self.head(Some(room)).is_none() {
            self.set_head(Some(room), Some(head));
            self.tentative.borrow_mut().insert(room.clone());
        }
    }

    /// Whether `room`'s head is only the one read at a join; it is not
    /// once this returns (the caller delivers the room's first broadcast).
    fn take_tentative(&self, room: Option<&Rc<str>>) -> bool {
        room.is_some_and(|r| self.tentative.borrow_mut().remove(r))
    }

    /// Raises a channel's head to `piece` (a new epoch always wins).
    fn heard(&self, room: Option<&Rc<str>>, piece: Piece) {
        let mut heads = self.heads.borrow_mut();
        match heads.get_mut(&room.cloned()) {
            Some(h) => *h = h.newer(piece),
            None => {
                if heads.len() < self.max_heads {
                    heads.insert(room.cloned(), piece);
                }
            }
        }
    }

    /// A channel's head as Redis has it now (`Piece::default()`: no
    /// stream). Read, not kept: what the shard delivered is another thing
    /// (a broadcast at or under a kept head would be dropped as delivered).
    pub async fn read_head(
        &self,
        redis: &rds::Redis,
        room: Option<&Rc<str>>,
    ) -> Result<Piece, RedisError> {
        let channel = channel_of(room.map(|r| &**r));
        let cmd = redis::cmd("GET").arg(head_key(&channel)).clone();
        let v = redis.query(Some(slot(&channel)), &cmd).await?;
        Ok(text(&v).and_then(Piece::parse_head).unwrap_or_default())
    }

    /// Ends the life of `room`'s stream, found rewound at `epoch` (it lacks
    /// broadcasts this shard delivered), unless a later life began already.
    /// True when this call ended it.
    pub async fn end_life(
        &self,
        redis: &rds::Redis,
        room: Option<&Rc<str>>,
        epoch: Epoch,
    ) -> Result<bool, RedisError> {
        let channel = channel_of(room.map(|r| &**r));
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.end_life.get_hash())
            .arg(2)
            .arg(stream_key(&channel))
            .arg(head_key(&channel))
            .arg(epoch.to_string());
        let v = redis.query(Some(slot(&channel)), &cmd).await?;
        Ok(rds::as_u64(&v) == Some(1))
    }

    /// Where a socket that asked for nothing is on `chans`: the heads, a
    /// room's as read at its join when the shard has delivered nothing
    /// there yet. A channel whose head is unknown is left out, so a
    /// recovery from the token starts it at its head then.
    pub fn position_now(&self, chans: &[Channel]) -> Vec<(Chan, Piece)> {
        chans
            .iter()
            .filter_map(|c| {
                let head = self.head(c.chan.as_ref()).or(c.head);
                head.map(|p| (c.chan.clone(), p))
            })
            .collect()
    }

    /// Socket `conn` has every message of a channel up to `floor`: live
    /// copies of those are not for it.
    ///
    /// A floor goes when a later message passes it; with no broadcasts,
    /// recoveries alone would pile floors up, so each lives `FLOOR_TTL` at
    /// most (a live copy later than that is a bus that lost it anyway) and
    /// there are at most `MAX_FLOORS`. A floor dropped early costs at most
    /// one duplicate frame to one socket, never a lost one.
    pub fn set_floor(&self, conn: u64, room: Chan, floor: Piece) {
        self.set_floor_at(conn, room, floor, Instant::now());
    }

    fn set_floor_at(&self, conn: u64, room: Chan, floor: Piece, now: Instant) {
        let mut floors = self.floors.borrow_mut();
        let stale = floors
            .iter()
            .take_while(|f| now.saturating_duration_since(f.3) >= FLOOR_TTL)
            .count();
        let over = (floors.len() - stale + 1).saturating_sub(MAX_FLOORS);
        floors.drain(..stale + over);
        floors.push((conn, room, floor, now));
    }

    /// The sockets a live message at `piece` on a channel must skip,
    /// sorted. That channel's floors below it are dropped: one stream
    /// delivers in offset order, so nothing at or below them can still
    /// come (and a floor of another epoch is from a life that is over).
    pub fn skip(&self, room: Option<&Rc<str>>, piece: Piece) -> Vec<u64> {
        let mut floors = self.floors.borrow_mut();
        if floors.is_empty() {
            return Vec::new();
        }
        let here = |r: &Chan| r.as_deref() == room.map(|r| &**r);
        floors.retain(|(_, r, f, _)| {
            !here(r) || (f.epoch == piece.epoch && f.offset >= piece.offset)
        });
        let mut skip: Vec<u64> = floors
            .iter()
            .filter(|(_, r, _, _)| here(r))
            .map(|&(c, _, _, _)| c)
            .collect();
        skip.sort_unstable();
        skip
    }

    /// Publishes `message` on `room`'s channel (None: the global one): with
    /// history, appended to the channel's stream in the same script;
    /// without, a plain publish of today's frame. Returns the broadcast's
    /// piece (with history) and how many subscribers hold the channel.
    pub async fn publish(
        &self,
        redis: &rds::Redis,
        room: Option<&str>,
        message: &str,
    ) -> Result<(Option<Piece>, u64), RedisError> {
        let channel = channel_of(room);
        let lit = serde_json::to_string(message).unwrap_or_default();
        // A sharded channel lives on its slot's master, and so do a
        // channel's history keys; PUBLISH reaches every node from any.
        let sharded = self.publish_verb == "SPUBLISH";
        if !self.enabled() {
            let payload = format!("{{\"broadcast\":{lit}}}");
            let cmd = redis::cmd(self.publish_verb)
                .arg(&channel)
                .arg(payload)
                .clone();
            let v = redis.query(sharded.then(|| slot(&channel)), &cmd).await?;
            return Ok((None, rds::as_u64(&v).unwrap_or(0)));
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.publish.get_hash())
            .arg(2)
            .arg(stream_key(&channel))
            .arg(head_key(&channel))
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(self.publish_verb)
            .arg(lit)
            .arg(&channel)
            .arg(Epoch::random().to_string());
        let mut replies = self
            .replicas
            .write(redis, Some(slot(&channel)), cmd.get_packed_command(), 1)
            .await?;
        let (piece, n) = read_publish(replies.pop().unwrap_or(redis::Value::Nil))?;
        Ok((Some(piece), n))
    }

    /// A live broadcast the shard received on a channel: raises its head
    /// and, while recoveries run, keeps it for them.
    pub fn on_live(&self, room: Option<&Rc<str>>, piece: Piece, message: &str) {
        self.heard(room, piece);
        let mut b = self.bridge.borrow_mut();
        if b.recoveries == 0 {
            return;
        }
        let seq = b.next;
        b.next += 1;
        if b.kept.len() == BRIDGE_MAX {
            b.kept.pop_front();
            b.kept_from = b.kept.front().map_or(b.next, |k| k.seq);
        }
        b.kept.push_back(Kept {
            seq,
            room: room.cloned(),
            piece,
            message: Rc::from(message),
        });
    }

    /// The frame of a live broadcast on a channel, for sockets whose other
    /// channel (if any) is `other`: it carries the position they have once
    /// they got it.
    pub fn live_frame(
        &self,
        message: &str,
        room: Option<&Rc<str>>,
        piece: Piece,
        other: Option<&Rc<str>>,
    ) -> String {
        let mut channels = Vec::with_capacity(2);
        let (global, room_piece) = match room {
            Some(_) => (self.head(None), Some(piece)),
            None => (Some(piece), other.and_then(|o| self.head(Some(o)))),
        };
        if let Some(g) = global {
            channels.push((None, g));
        }
        if let (Some(r), Some(p)) = (room.or(other), room_piece) {
            channels.push((Some(r.to_string()), p));
        }
        let position = Position { channels }.token();
        protocol::broadcast(message, Some((piece, &position)), room.map(|r| &**r), false)
    }

    /// The frame of a live broadcast on `room` for the sockets that joined
    /// it on their open socket: its position names that room alone (the
    /// client keeps one per room it joined that way).
    pub fn joined_frame(&self, message: &str, room: &Rc<str>, piece: Piece) -> String {
        let position = Position {
            channels: vec![(Some(room.to_string()), piece)],
        }
        .token();
        protocol::broadcast(message, Some((piece, &position)), Some(room), false)
    }

    /// What a socket missed on `chans` (at an upgrade the global channel,
    /// its room and the rooms its session had; at a join on an open socket,
    /// that room) since what it asked, as frame texts, with the live
    /// messages that arrived meanwhile. Call it after the rooms'
    /// subscriptions are confirmed, and hand the socket its channels in the
    /// same loop turn as it returns.
    pub async fn recover(&self, redis: &rds::Redis, since: &Since, chans: &[Channel]) -> Recovery {
        let start = {
            let mut b = self.bridge.borrow_mut();
            b.recoveries += 1;
            b.next
        };
        let _done = scopeguard(|| {
            let mut b = self.bridge.borrow_mut();
            b.recoveries -= 1;
            if b.recoveries == 0 {
                b.kept.clear();
                b.kept_from = b.next;
            }
        });
        let mut out = Recovery::default();
        let mut missed: Vec<Missed> = Vec::new();
        for c in chans {
            let chan = c.chan.as_ref();
            let name = chan.map(|r| &**r);
            let Some((piece, want)) = since.of(name) else {
                // Not the socket's channel before: it starts at the head.
                let head = self.head(chan).or(c.head).unwrap_or_default();
                out.start.push((chan.cloned(), head));
                continue;
            };
            let start = match self.read(redis, chan, piece, &want).await {
                Ok(read) => {
                    if let Some(why) = read.lost {
                        out.lost.push((chan.cloned(), why));
                    }
                    if matches!(read.lost, Some(Lost::EpochChanged | Lost::Rewound)) {
                        // Another life, or one that lost what the client
                        // had: the client refetches its state, and is at
                        // the stream's head.
                        read.head.unwrap_or_default()
                    } else {
                        let epoch = read.head.and_then(|h| h.epoch);
                        let mut start = Piece {
                            epoch,
                            offset: piece.offset,
                        };
                        // An offset from the future missed nothing, and
                        // has nothing yet; with no stream, whatever comes
                        // is new.
                        match read.head {
                            Some(h) if h.offset < start.offset => start = h,
                            Some(_) => {}
                            None => start = Piece::default(),
                        }
                        for (offset, message) in read.missed {
                            missed.push(Missed {
                                room: chan.cloned(),
                                piece: Piece { epoch, offset },
                                message: Rc::from(message),
                            });
                        }
                        start
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, room = name, "history not read; the socket is told");
                    out.lost.push((chan.cloned(), Lost::Unavailable));
                    self.head(chan).unwrap_or(piece)
                }
            };
            out.start.push((chan.cloned(), start));
        }
        self.add_live(start, &out.start, &mut missed, &mut out.lost);
        out.has = out.start.clone();
        let alone = |chan: &Chan| chans.iter().any(|c| c.alone && c.chan == *chan);
        for m in missed {
            if let Some((_, has)) = out.has.iter_mut().find(|(c, _)| *c == m.room) {
                *has = m.piece;
            }
            // Each frame's position: its room alone, or the upgrade's
            // channels together.
            let token = if alone(&m.room) {
                Recovery::token(&[(m.room.clone(), m.piece)])
            } else {
                let upgrade: Vec<_> = out.has.iter().filter(|(c, _)| !alone(c)).cloned().collect();
                Recovery::token(&upgrade)
            };
            let frame =
                protocol::broadcast(&m.message, Some((m.piece, &token)), m.room.as_deref(), true);
            out.texts.push(frame);
        }
        out
    }

    /// One channel's recover script call: what its stream holds after
    /// `piece` (checked against `want`, the epoch: `""` none, `"*"` any).
    pub async fn read(
        &self,
        redis: &rds::Redis,
        chan: Option<&Rc<str>>,
        piece: Piece,
        want: &str,
    ) -> Result<scripts::Read, RedisError> {
        let channel = channel_of(chan.map(|r| &**r));
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.recover.get_hash())
            .arg(2)
            .arg(stream_key(&channel))
            .arg(head_key(&channel))
            .arg(piece.offset.ms)
            .arg(piece.offset.seq)
            .arg(want)
            .arg(self.ttl_ms)
            .arg(self.size);
        let reply = redis.query(Some(slot(&channel)), &cmd).await?;
        read_recovery(&reply)
    }

    /// Adds to `missed` the live messages for the socket's channels that
    /// arrived since its recovery began (`start`) and are newer than what
    /// history gave it (`from`, then `missed` itself).
    fn add_live(
        &self,
        start: u64,
        from: &[(Chan, Piece)],
        missed: &mut Vec<Missed>,
        lost: &mut Vec<(Chan, Lost)>,
    ) {
        let b = self.bridge.borrow();
        if b.kept_from > start {
            // Live messages this recovery needed were dropped at the bound.
            for (chan, _) in from {
                lost.push((chan.clone(), Lost::Overflow));
            }
        }
        let mut has: Vec<(Chan, Piece)> = from.to_vec();
        for m in missed.iter() {
            if let Some((_, h)) = has.iter_mut().find(|(c, _)| *c == m.room) {
                *h = m.piece;
            }
        }
        for k in b.kept.iter().filter(|k| k.seq >= start) {
            let Some((_, h)) = has.iter_mut().find(|(c, _)| *c == k.room) else {
                continue;
            };
            if h.epoch != k.piece.epoch || k.piece.offset > h.offset {
                *h = k.piece;
                missed.push(Missed {
                    room: k.room.clone(),
                    piece: k.piece,
                    message: k.message.clone(),
                });
            }
        }
    }
}

/// Runs `f` when dropped: a recovery's bookkeeping ends however its future does.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten entries a channel, one Redis, no replicas.
    fn history() -> History {
        History::new(10, 1000, "PUBLISH", Rc::new(Replicas::new(0)), 100)
    }

    fn at(ms: u64) -> Piece {
        Piece {
            epoch: Some(Epoch(1)),
            offset: Offset { ms, seq: 0 },
        }
    }

    #[test]
    fn floors_skip_what_a_socket_has_on_that_channel_and_go_once_passed() {
        let h = history();
        let lobby: Chan = Some(Rc::from("lobby"));
        assert!(h.skip(None, at(1)).is_empty());
        h.set_floor(7, None, at(5));
        h.set_floor(8, None, at(3));
        h.set_floor(9, lobby.clone(), at(9));
        assert_eq!(h.skip(None, at(3)), [7, 8]);
        assert_eq!(h.skip(None, at(4)), [7]);
        assert_eq!(h.skip(None, at(6)), Vec::<u64>::new());
        assert_eq!(h.skip(lobby.as_ref(), at(2)), [9], "the room's floor stays");
        let other_life = Piece {
            epoch: Some(Epoch(2)),
            ..at(1)
        };
        assert!(h.skip(lobby.as_ref(), other_life).is_empty());
        assert!(h.floors.borrow().is_empty());
    }

    #[test]
    fn floors_with_no_broadcast_to_pass_them_expire_and_stay_bounded() {
        let h = history();
        let t0 = Instant::now();
        h.set_floor_at(1, None, at(9), t0);
        h.set_floor_at(2, None, at(9), t0 + FLOOR_TTL / 2);
        // The first is past its time when the third comes; the second not.
        h.set_floor_at(3, None, at(9), t0 + FLOOR_TTL);
        assert_eq!(h.skip(None, at(9)), [2, 3]);
        // Reconnect churn with no broadcast: never more than the bound.
        for conn in 10..10 + MAX_FLOORS as u64 + 100 {
            h.set_floor_at(conn, None, at(9), t0 + FLOOR_TTL);
        }
        assert_eq!(h.floors.borrow().len(), MAX_FLOORS);
        let skip = h.skip(None, at(9));
        assert_eq!(skip.first(), Some(&110), "the oldest went first");
    }

    #[test]
    fn the_bridge_keeps_only_while_recoveries_run_and_drops_at_its_bound() {
        let h = history();
        h.on_live(None, at(5), "x");
        assert_eq!(h.head(None), Some(at(5)));
        assert!(
            h.bridge.borrow().kept.is_empty(),
            "nothing kept with no recovery"
        );
        h.bridge.borrow_mut().recoveries = 1;
        for i in 0..BRIDGE_MAX as u64 + 3 {
            h.on_live(None, at(6 + i), "x");
        }
        let b = h.bridge.borrow();
        assert_eq!(b.kept.len(), BRIDGE_MAX);
        assert_eq!(b.kept_from, 3, "the first three arrivals were dropped");
        drop(b);
        // The head never goes back within a life, and a new life wins.
        h.heard(None, at(1));
        assert_eq!(h.head(None), Some(at(BRIDGE_MAX as u64 + 8)));
        let new = Piece {
            epoch: Some(Epoch(9)),
            ..at(1)
        };
        h.heard(None, new);
        assert_eq!(h.head(None), Some(new));
    }

    /// A socket in no room has one channel, not the global one twice: a
    /// position naming it twice is refused, and its recovery would be
    /// sent twice.
    #[test]
    fn a_socket_in_no_room_has_one_channel() {
        let lobby: Rc<str> = Rc::from("lobby");
        let names = |c: Vec<Channel>| c.into_iter().map(|c| c.chan).collect::<Vec<_>>();
        assert_eq!(names(channels_of(None, None)), [None]);
        assert_eq!(
            names(channels_of(Some(&lobby), None)),
            [None, Some(lobby.clone())]
        );
        let h = history();
        h.set_head(None, Some(at(1)));
        let token = Recovery::token(&h.position_now(&channels_of(None, None)));
        assert_eq!(token.parse::<Position>().unwrap().channels.len(), 1);
    }

    #[test]
    fn live_frames_carry_the_position_of_their_readers() {
        let h = history();
        let lobby: Chan = Some(Rc::from("lobby"));
        h.set_head(None, Some(at(3)));
        h.set_head(lobby.as_ref(), Some(at(4)));
        let pos = |text: &str| -> Position {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            v["position"].as_str().unwrap().parse().unwrap()
        };
        // A room broadcast: the global head, and the message itself.
        let p = pos(&h.live_frame("m", lobby.as_ref(), at(7), None));
        assert_eq!(p.of(None), Some(at(3)));
        assert_eq!(p.of(Some("lobby")), Some(at(7)));
        // A global one, to a socket in the lobby and to one in no room.
        let p = pos(&h.live_frame("m", None, at(8), lobby.as_ref()));
        assert_eq!(
            (p.of(None), p.of(Some("lobby"))),
            (Some(at(8)), Some(at(4)))
        );
        let p = pos(&h.live_frame("m", None, at(8), None));
        assert_eq!(p.channels.len(), 1);
    }
}
