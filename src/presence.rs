//! Presence: who is in a room, across every node. Each socket in a room is
//! one entry of the room's sorted set in Redis (`{shardcast:room:<name>}:p`,
//! in the room's slot on a Cluster), scored by when it expires. A shard
//! adds its sockets' entries as they join, takes them out as they leave,
//! and renews them as the heartbeat walk passes each socket; all of that
//! is gathered per room and sent in batches, never a Redis call per socket.
//! A node that dies stops renewing, so its entries fall out within one
//! `presence_ttl` with nobody cleaning up after it.
//!
//! Rooms that opt in (`presence_events`) also get the changes as frames:
//! each batch's joins and leaves (and the entries it found expired) are
//! published on the room's channel and sent to its members everywhere.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::history::channel_of;
use crate::protocol::{BusEvent, Diff, Member};
use crate::pubsub::{room_channel, Subscriber};
use crate::redis::{self as rds, RedisError, Slot, Value};

/// A batch's joins or leaves at most per published change: a mass connect
/// is told in frames of a bounded size.
const DIFF_MAX: usize = 256;
/// Entries waiting for the next batch at most (Redis away): past it renewals
/// are dropped (the next heartbeat renews them), never joins or leaves.
const PENDING_MAX: usize = 100_000;
/// Entries a read returns at most, whatever its `limit`.
pub const READ_MAX: usize = 10_000;

/// Renews and removes entries of one room, and removes the expired ones,
/// which it returns. KEYS: the room's set. ARGV: the TTL in ms, how many
/// entries to renew, those entries, then those to remove. Scores are
/// Redis's clock, so nodes' clocks need not agree.
pub const REFRESH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
for i = 3, n + 2 do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
for i = n + 3, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end
return expired
";

/// The live entries of a room, at most ARGV[1], and how many there are.
pub const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local list = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
return {n, list}
";

/// A room's presence set.
pub fn presence_key(room: &str) -> String {
    format!("{{{}}}:p", channel_of(Some(room)))
}

/// One socket's entry: its session, its token's subject, and which socket
/// it is (the shard's writer id and the connection id), so two sockets of
/// one session are two entries and one leaving takes out its own.
pub fn entry(session_id: &uuid::Uuid, sub: Option<&str>, writer: &str, conn: u64) -> String {
    serde_json::to_string(&(
        session_id.to_string(),
        sub.unwrap_or_default(),
        format!("{writer}/{conn}"),
    ))
    .unwrap_or_default()
}

/// An entry as a member, if it reads as one (what Redis holds is checked).
pub fn member_of(entry: &[u8]) -> Option<Member> {
    let (session_id, sub, _socket): (String, String, String) =
        serde_json::from_slice(entry).ok()?;
    crate::session::parse_id(&session_id)?;
    Some(Member {
        session_id,
        sub: (!sub.is_empty()).then_some(sub),
    })
}

/// What a room's read found: its members (each session once, in no
/// particular order) and how many sockets are in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub sockets: u64,
    pub members: Vec<Member>,
    /// The read stopped at its limit: more members than `members`.
    pub truncated: bool,
}

/// Reads a READ_SCRIPT reply: the count, and the entries, each session once.
pub fn read_reply(v: &Value, limit: usize) -> Result<Read, RedisError> {
    let bad = || RedisError::Reply(format!("presence read answered {v:?}"));
    let Value::Array(parts) = v else {
        return Err(bad());
    };
    let [n, Value::Array(list)] = parts.as_slice() else {
        return Err(bad());
    };
    let sockets = rds::as_u64(n).ok_or_else(bad)?;
    let mut members: Vec<Member> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in list {
        let Value::BulkString(b) = e else { continue };
        let Some(m) = member_of(b) else { continue };
        if seen.insert(m.session_id.clone()) {
            members.push(m);
        }
    }
    Ok(Read {
        sockets,
        truncated: list.len() >= limit && (list.len() as u64) < sockets,
        members,
    })
}

/// A room's rules for presence frames: a name, or a prefix ending in `*`.
fn opted_in(patterns: &[String], room: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => p == room,
    })
}

/// What one room has waiting for the next batch.
#[derive(Default)]
struct Batch {
    renew: Vec<String>,
    remove: Vec<String>,
    diff: Diff,
}

/// One batch of one room, ready to send.
pub struct Outgoing {
    pub room: Rc<str>,
    pub slot: Slot,
    /// The refresh script's call, packed.
    pub cmd: Vec<u8>,
    /// The room's changes to publish (opted-in rooms), before what the
    /// script finds expired.
    pub diff: Option<Diff>,
}

/// A shard's presence: its settings and what waits for the next batch.
pub struct Presence {
    enabled: bool,
    ttl_ms: u64,
    events: Vec<String>,
    script: redis::Script,
    read: redis::Script,
    pending: RefCell<HashMap<Rc<str>, Batch>>,
    /// Entries in `pending`, against PENDING_MAX.
    held: std::cell::Cell<usize>,
}

impl Presence {
    pub fn new(enabled: bool, ttl_ms: u64, events: Vec<String>) -> Self {
        Self {
            enabled,
            ttl_ms,
            events,
            script: redis::Script::new(REFRESH_SCRIPT),
            read: redis::Script::new(READ_SCRIPT),
            pending: RefCell::new(HashMap::new()),
            held: std::cell::Cell::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The scripts loaded on every Redis (re)connect.
    pub const SCRIPTS: &'static [&'static str] = &[REFRESH_SCRIPT, READ_SCRIPT];

    /// Whether a room's members are sent its changes.
    pub fn announces(&self, room: &str) -> bool {
        opted_in(&self.events, room)
    }

    fn with_batch(&self, room: &Rc<str>, f: impl FnOnce(&mut Batch)) {
        let mut pending = self.pending.borrow_mut();
        f(pending.entry(room.clone()).or_default());
        self.held.set(self.held.get() + 1);
    }

    /// A socket joined `room` (its entry, and the member it is).
    pub fn joined(&self, room: &Rc<str>, entry: String, member: impl FnOnce() -> Member) {
        if !self.enabled {
            return;
        }
        let announce = self.announces(room);
        self.with_batch(room, |b| {
            b.renew.push(entry);
            if announce {
                b.diff.joins.push(member());
            }
        });
    }

    /// A socket left `room`.
    pub fn left(&self, room: &Rc<str>, entry: String, member: impl FnOnce() -> Member) {
        if !self.enabled {
            return;
        }
        let announce = self.announces(room);
        self.with_batch(room, |b| {
            b.remove.push(entry);
            if announce {
                b.diff.leaves.push(member());
            }
        });
    }

    /// A socket is still in `room` (the heartbeat walk passed it).
    pub fn renew(&self, room: &Rc<str>, entry: impl FnOnce() -> String) {
        if !self.enabled || self.held.get() >= PENDING_MAX {
            return;
        }
        self.with_batch(room, |b| b.renew.push(entry()));
    }

    /// Whether anything waits for a batch.
    pub fn is_idle(&self) -> bool {
        self.held.get() == 0
    }

    /// Takes what waits, as one script call per room.
    pub fn take(&self) -> Vec<Outgoing> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        self.held.set(0);
        pending
            .into_iter()
            .map(|(room, b)| {
                let key = presence_key(&room);
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.script.get_hash())
                    .arg(1)
                    .arg(&key)
                    .arg(self.ttl_ms)
                    .arg(b.renew.len())
                    .arg(&b.renew)
                    .arg(&b.remove);
                let diff = self.announces(&room).then_some(b.diff);
                Outgoing {
                    slot: Slot::of(&key),
                    room,
                    cmd: cmd.get_packed_command(),
                    diff,
                }
            })
            .collect()
    }

    /// A READ_SCRIPT call for `room`, at most `limit` entries.
    pub fn read_cmd(&self, room: &str, limit: usize) -> (Slot, redis::Cmd) {
        let key = presence_key(room);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.read.get_hash()).arg(1).arg(&key).arg(limit);
        (Slot::of(&key), cmd)
    }
}

/// What one send did: script calls Redis took, and those it did not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub written: u64,
    pub failed: u64,
}

/// Sends what waits: one script call per room, then each opted-in room's
/// changes published on its channel. A failed call's renewals come again
/// with the next heartbeat; its other entries expire.
pub async fn send(presence: &Presence, redis: &rds::Redis, pubsub: &Subscriber) -> Sent {
    let mut sent = Sent::default();
    for out in presence.take() {
        let expired = match redis.exec(Some(out.slot), out.cmd, 1).await {
            Ok(mut v) => match v.pop() {
                Some(Value::ServerError(e)) => {
                    sent.failed += 1;
                    tracing::debug!(room = &*out.room, error = ?e, "presence batch refused");
                    continue;
                }
                v => {
                    sent.written += 1;
                    v.unwrap_or(Value::Nil)
                }
            },
            Err(e) => {
                sent.failed += 1;
                tracing::debug!(room = &*out.room, error = %e, "presence batch not written");
                continue;
            }
        };
        let Some(diff) = out.diff else { continue };
        let channel = room_channel(&out.room);
        for d in diffs(diff, &expired) {
            let event = BusEvent {
                presence: Some(d),
                ..BusEvent::default()
            };
            let payload = serde_json::to_string(&event).unwrap_or_default();
            if let Err(e) = pubsub.publish(redis, &channel, &payload).await {
                tracing::debug!(room = &*out.room, error = %e, "presence change not published");
            }
        }
    }
    sent
}

/// A batch's changes with what its script found expired, cut into
/// publishable pieces of at most DIFF_MAX joins and leaves each.
pub fn diffs(mut diff: Diff, expired: &Value) -> Vec<Diff> {
    if let Value::Array(list) = expired {
        for e in list {
            if let Value::BulkString(b) = e {
                diff.leaves.extend(member_of(b));
            }
        }
    }
    let mut out = Vec::new();
    let (mut joins, mut leaves) = (diff.joins.into_iter(), diff.leaves.into_iter());
    loop {
        let d = Diff {
            joins: joins.by_ref().take(DIFF_MAX).collect(),
            leaves: leaves.by_ref().take(DIFF_MAX).collect(),
        };
        if d.joins.is_empty() && d.leaves.is_empty() {
            return out;
        }
        out.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::wire::bulk;

    #[test]
    fn an_entry_names_its_socket_and_reads_back_as_its_member() {
        let id = uuid::Uuid::new_v4();
        let e = entry(&id, Some("ana \"x\""), "w:r:0", 7);
        assert_ne!(
            e,
            entry(&id, Some("ana \"x\""), "w:r:0", 8),
            "one per socket"
        );
        assert_eq!(
            member_of(e.as_bytes()),
            Some(Member {
                session_id: id.to_string(),
                sub: Some("ana \"x\"".into())
            })
        );
        let anon = entry(&id, None, "w:r:1", 1);
        assert_eq!(member_of(anon.as_bytes()).unwrap().sub, None);
        for bad in [&b"x"[..], b"[]", br#"["not-a-uuid","",""]"#, b"\xff"] {
            assert_eq!(member_of(bad), None);
        }
    }

    #[test]
    fn a_read_counts_sockets_and_lists_each_session_once() {
        let id = uuid::Uuid::new_v4();
        let v = Value::Array(vec![
            Value::Int(3),
            Value::Array(vec![
                bulk(&entry(&id, None, "w:a:0", 1)),
                bulk(&entry(&id, None, "w:b:0", 1)),
                bulk("garbage"),
            ]),
        ]);
        let r = read_reply(&v, 10).unwrap();
        assert_eq!(r.sockets, 3);
        assert_eq!(r.members.len(), 1);
        assert!(!r.truncated);
        let r = read_reply(&v, 3).unwrap();
        assert!(!r.truncated, "all three read");
        assert!(read_reply(&Value::Int(1), 10).is_err());
    }

    #[test]
    fn rooms_opt_in_by_name_or_prefix() {
        let p = vec!["lobby".to_string(), "chat:*".to_string()];
        assert!(opted_in(&p, "lobby"));
        assert!(opted_in(&p, "chat:general"));
        assert!(!opted_in(&p, "lobby2"));
        assert!(!opted_in(&p, "chat"));
        assert!(opted_in(&["*".to_string()], "anything"));
        assert!(!opted_in(&[], "lobby"));
    }

    #[test]
    fn changes_are_cut_into_bounded_pieces_with_the_expired_as_leaves() {
        let m = |i: usize| Member {
            session_id: format!("s{i}"),
            sub: None,
        };
        let diff = Diff {
            joins: (0..DIFF_MAX + 1).map(m).collect(),
            leaves: vec![],
        };
        let id = uuid::Uuid::new_v4();
        let expired = Value::Array(vec![bulk(&entry(&id, Some("bo"), "w:a:0", 1))]);
        let out = diffs(diff, &expired);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].joins.len(), DIFF_MAX);
        assert_eq!(out[0].leaves.len(), 1);
        assert_eq!(out[1].joins.len(), 1);
        assert!(diffs(Diff::default(), &Value::Nil).is_empty());
    }

    #[test]
    fn a_batch_is_one_call_per_room_and_renewals_are_bounded() {
        let p = Presence::new(true, 60_000, vec!["lobby".into()]);
        let lobby: Rc<str> = Rc::from("lobby");
        let other: Rc<str> = Rc::from("other");
        let member = || Member {
            session_id: "s".into(),
            sub: None,
        };
        p.joined(&lobby, "a".into(), member);
        p.renew(&lobby, || "b".into());
        p.left(&other, "c".into(), member);
        assert!(!p.is_idle());
        let mut out = p.take();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].diff.as_ref().unwrap().joins.len(), 1);
        assert!(out[1].diff.is_none(), "other did not opt in");
        assert!(p.is_idle());
        let off = Presence::new(false, 60_000, vec![]);
        off.joined(&lobby, "a".into(), member);
        assert!(off.is_idle());
    }
}
