//! Broadcast history: offsets, each channel's Redis Stream, the script that
//! appends a broadcast and publishes it in one step, the script that reads
//! what a reconnecting socket missed, and the shard's bridge between that
//! read and live delivery.
//!
//! A channel's stream is the key of the channel's own name. Offsets are
//! stream ids (`ms-seq`), taken from one counter key per Redis
//! (`shardcast:offset`) rather than from each stream, so that a socket's
//! channels (the global one and its room) share one order and a client
//! needs one `since`, not one per channel. On a Redis Cluster a script's
//! keys must share a slot, so there every history key carries one hash tag
//! ([`Keys`]): history lives on one node, and its one order stays.
//!
//! The seam between history and live: a recovering socket is not in the
//! plane yet, so live messages pass it by. While any recovery runs, the
//! shard keeps every live message it receives ([`Bridge`]). A message that
//! reached the shard before the read was sent was published before the read
//! ran, so the read has it; one that reached it after is in the bridge. The
//! socket gets the read, then the bridge's messages with a higher offset
//! than the read's last, and joins the plane in the same loop turn: nothing
//! twice, nothing missing.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::protocol;
use crate::redis::replicas::Replicas;
use crate::redis::{self as rds, RedisError, Slot, Value};

/// The key that holds the last offset given out on this Redis.
pub const OFFSET_KEY: &str = "shardcast:offset";
/// On a cluster, every history key starts with this: one slot for all.
const CLUSTER_TAG: &str = "{shardcast:history}:";

/// Where history lives: the offset key and each channel's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    cluster: bool,
}

impl Keys {
    pub fn new(cluster: bool) -> Keys {
        Keys { cluster }
    }

    pub fn offset(&self) -> Cow<'static, str> {
        self.stream(OFFSET_KEY)
    }

    /// A channel's stream: the channel's own name on one Redis (no copy).
    pub fn stream<'a>(&self, channel: &'a str) -> Cow<'a, str> {
        if self.cluster {
            Cow::Owned(format!("{CLUSTER_TAG}{channel}"))
        } else {
            Cow::Borrowed(channel)
        }
    }

    /// The slot every history request goes to.
    pub fn slot(&self) -> Slot {
        Slot::of(self.offset().as_bytes())
    }
}
/// Live messages a shard keeps while recoveries run. A recovery that
/// outlives this many arrivals reports `recovered: false`, never a gap.
const BRIDGE_MAX: usize = 8192;
/// How long a recovered socket's floor is kept waiting for a live copy of
/// what it recovered: far above a pub/sub delivery's latency.
const FLOOR_TTL: Duration = Duration::from_secs(30);
/// Floors kept at most, whatever the rate of recoveries.
const MAX_FLOORS: usize = 16_384;

/// A broadcast's place in the order every node agrees on: its stream id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a `since` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("since must be an offset as the server sent it: <milliseconds>-<sequence>, e.g. 1767225600000-0")]
pub struct OffsetError;

impl FromStr for Offset {
    type Err = OffsetError;

    /// Digits, a dash, digits; each part fits in 64 bits. Nothing else: an
    /// offset is echoed from a frame, never typed.
    fn from_str(s: &str) -> Result<Self, OffsetError> {
        let (ms, seq) = s.split_once('-').ok_or(OffsetError)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OffsetError);
            }
            p.parse::<u64>().map_err(|_| OffsetError)
        };
        Ok(Offset {
            ms: part(ms)?,
            seq: part(seq)?,
        })
    }
}

/// The query parameter that asks for what was missed since an offset.
pub const SINCE_PARAM: &str = "since";

/// Appends a broadcast to its channel's stream and publishes it with its
/// offset, atomically: offsets then follow publish order on every
/// subscriber. KEYS: the channel's stream, the offset key. ARGV: max
/// length, ttl ms, publish verb, the message as a JSON string, the channel.
/// Returns the offset and the subscriber count.
///
/// Trimming is exact (`MAXLEN =`, `MINID =`), not `~`, and the newest entry
/// it removes is written to the stream's `max-deleted-entry-id` (`XSETID`),
/// which Redis itself sets only for `XDEL`: that is what lets a recovery
/// say exactly whether anything after its `since` is gone. In steady state a
/// publish removes one entry, so exactness costs little.
const PUBLISH_SCRIPT: &str = r#"
local key, size, ttl = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[2])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  if lms and tonumber(lms) >= ms then
    ms = tonumber(lms)
    seq = tonumber(lseq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
-- The newest entry this publish will remove, by length or by age.
local gone = nil
local over = redis.call('XLEN', key) + 1 - size
if over > 0 then
  local old = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
  if #old > 0 then gone = old[#old][1] end
end
local cut = string.format('%d-0', math.max(ms - ttl, 0))
local aged = redis.call('XREVRANGE', key, '(' .. cut, '-', 'COUNT', 1)
if #aged > 0 then
  local a, b = aged[1][1], gone
  if not b then
    gone = a
  else
    local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
    local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
    if tonumber(ams) > tonumber(bms) or (ams == bms and tonumber(aseq) > tonumber(bseq)) then
      gone = a
    end
  end
end
local r = redis.pcall('XADD', key, 'MAXLEN', '=', size, id, 'm', ARGV[4])
if type(r) == 'table' and r.err then
  -- The offset key was lost while the stream was not: let the stream pick.
  id = redis.call('XADD', key, 'MAXLEN', '=', size, '*', 'm', ARGV[4])
end
redis.call('SET', KEYS[2], id)
redis.call('XTRIM', key, 'MINID', '=', cut)
if gone then
  redis.call('XSETID', key, id, 'MAXDELETEDID', gone)
end
redis.call('PEXPIRE', key, ttl)
local n = redis.call(ARGV[3], ARGV[5], '{"broadcast":' .. ARGV[4] .. ',"offset":"' .. id .. '"}')
return {id, n}
"#;

/// What a socket missed on its channels since an offset: for each stream,
/// up to ARGV[4] newest entries after it, and whether nothing after it was
/// trimmed, expired or cut by that limit. KEYS: the offset key, then the
/// streams. ARGV: the offset's ms and seq, ttl ms, limit. Returns
/// {complete, the last offset given out, entries...}.
const RECOVER_SCRIPT: &str = r#"
local sms, sseq = tonumber(ARGV[1]), tonumber(ARGV[2])
local since = ARGV[1] .. '-' .. ARGV[2]
local limit = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local complete = 1
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local got = {}
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then
        local dms, dseq = string.match(info[j + 1], '^(%d+)-(%d+)$')
        dms, dseq = tonumber(dms), tonumber(dseq)
        if dms > sms or (dms == sms and dseq > sseq) then complete = 0 end
      end
    end
    local r = redis.pcall('XREVRANGE', key, '+', '(' .. since, 'COUNT', limit + 1)
    if type(r) == 'table' and not r.err then
      got = r
      if #got > limit then
        complete = 0
        got[#got] = nil
      end
    end
  elseif now - sms >= tonumber(ARGV[3]) then
    -- Gone, and a publish after `since` would have kept it alive: it was
    -- trimmed whole or lost with a Redis.
    complete = 0
  end
  out[i + 1] = got
end
out[1] = complete
out[2] = redis.call('GET', KEYS[1]) or '0-0'
return out
"#;

/// A live message as the bridge keeps it.
struct Kept {
    /// Its place in the shard's arrival order.
    seq: u64,
    offset: Offset,
    /// None: the global channel.
    room: Option<Rc<str>>,
    text: Rc<str>,
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
    /// Broadcast frames' texts, oldest first.
    pub texts: Vec<Rc<str>>,
    /// Every message after `since` is in `frames`.
    pub complete: bool,
    /// The newest offset in `frames`, if any.
    pub last: Option<Offset>,
    /// The `since` asked for, or the newest offset given out when that
    /// was older: what the socket has even with no frames.
    pub since: Offset,
}

impl Recovery {
    /// The newest offset the socket has once `frames` are sent.
    pub fn has(&self) -> Offset {
        self.last.unwrap_or(self.since).max(self.since)
    }
}

/// A shard's history settings, scripts and bridge.
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
    keys: Keys,
    bridge: RefCell<Bridge>,
    /// The newest offset this shard has heard of: the counter read before
    /// its subscriptions, then each message received. A welcome carries it.
    head: Cell<Offset>,
    /// Recovered sockets and the newest offset each already has. A message
    /// published before a recovery read can reach the shard after it (the
    /// reply and the message come on different connections), and must not
    /// reach that socket twice. In the order they were set, with when.
    floors: RefCell<Vec<(u64, Offset, Instant)>>,
}

impl History {
    pub fn new(
        size: usize,
        ttl_ms: u64,
        publish_verb: &'static str,
        replicas: Rc<Replicas>,
        keys: Keys,
    ) -> Self {
        Self {
            keys,
            size,
            ttl_ms,
            publish_verb,
            replicas,
            publish: redis::Script::new(PUBLISH_SCRIPT),
            recover: redis::Script::new(RECOVER_SCRIPT),
            bridge: RefCell::new(Bridge::default()),
            head: Cell::new(Offset::default()),
            floors: RefCell::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// Packed `SCRIPT LOAD`s, run on every Redis (re)connect, and how many
    /// replies they produce.
    pub fn init_commands() -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        for s in [PUBLISH_SCRIPT, RECOVER_SCRIPT] {
            out.extend(redis::cmd("SCRIPT").arg("LOAD").arg(s).get_packed_command());
        }
        (out, 2)
    }

    /// The newest offset this shard has heard of.
    pub fn head(&self) -> Offset {
        self.head.get()
    }

    /// Raises the head to `offset` (never lowers it).
    pub fn heard(&self, offset: Offset) {
        if offset > self.head.get() {
            self.head.set(offset);
        }
    }

    /// Socket `conn` has every message up to `floor`: live copies of those
    /// are not for it.
    ///
    /// A floor goes when a later message passes it; with no broadcasts,
    /// recoveries alone would pile floors up, so each lives `FLOOR_TTL` at
    /// most (a live copy later than that is a bus that lost it anyway) and
    /// there are at most `MAX_FLOORS`. A floor dropped early costs at most
    /// one duplicate frame to one socket, never a lost one.
    pub fn set_floor(&self, conn: u64, floor: Offset) {
        self.set_floor_at(conn, floor, Instant::now());
    }

    fn set_floor_at(&self, conn: u64, floor: Offset, now: Instant) {
        let mut floors = self.floors.borrow_mut();
        let stale = floors
            .iter()
            .take_while(|&&(_, _, at)| now.saturating_duration_since(at) >= FLOOR_TTL)
            .count();
        let over = (floors.len() - stale + 1).saturating_sub(MAX_FLOORS);
        floors.drain(..stale + over);
        floors.push((conn, floor, now));
    }

    /// The sockets a live message at `offset` must skip, sorted. Floors
    /// below it are dropped: one Redis delivers in offset order, so nothing
    /// at or below them can still come.
    pub fn skip(&self, offset: Offset) -> Vec<u64> {
        let mut floors = self.floors.borrow_mut();
        if floors.is_empty() {
            return Vec::new();
        }
        floors.retain(|&(_, f, _)| f >= offset);
        let mut skip: Vec<u64> = floors.iter().map(|&(c, _, _)| c).collect();
        skip.sort_unstable();
        skip
    }

    /// Publishes `message` on `channel`: with history, appended to the
    /// channel's stream in the same script; without, a plain publish of
    /// today's frame. Returns the offset (with history) and how many
    /// subscribers hold the channel.
    pub async fn publish(
        &self,
        redis: &rds::Redis,
        channel: &str,
        message: &str,
    ) -> Result<(Option<Offset>, u64), RedisError> {
        let lit = serde_json::to_string(message).unwrap_or_default();
        if !self.enabled() {
            let payload = format!("{{\"broadcast\":{lit}}}");
            let cmd = redis::cmd(self.publish_verb)
                .arg(channel)
                .arg(payload)
                .clone();
            // PUBLISH reaches every node of a cluster from any; a sharded
            // channel lives on its slot's master.
            let slot = (self.publish_verb == "SPUBLISH").then(|| Slot::of(channel));
            let v = redis.query(slot, &cmd).await?;
            return Ok((None, rds::as_u64(&v).unwrap_or(0)));
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.publish.get_hash())
            .arg(2)
            .arg(self.keys.stream(channel).as_ref())
            .arg(self.keys.offset().as_ref())
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(self.publish_verb)
            .arg(lit)
            .arg(channel);
        let mut replies = self
            .replicas
            .write(redis, Some(self.keys.slot()), cmd.get_packed_command(), 1)
            .await?;
        match replies.pop().unwrap_or(Value::Nil) {
            Value::Array(v) if v.len() == 2 => {
                let offset = text(&v[0]).and_then(|s| s.parse().ok());
                let Some(offset) = offset else {
                    return Err(RedisError::Reply(format!("publish offset {:?}", v[0])));
                };
                Ok((Some(offset), rds::as_u64(&v[1]).unwrap_or(0)))
            }
            Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
            other => Err(RedisError::Reply(format!("publish: {other:?}"))),
        }
    }

    /// A live broadcast the shard received: raises the head and, while
    /// recoveries run, keeps its frame's text for them.
    pub fn on_live(&self, offset: Offset, room: Option<&Rc<str>>, text: &str) {
        self.heard(offset);
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
            offset,
            room: room.cloned(),
            text: Rc::from(text),
        });
    }

    /// What a socket on the global channel and `room` missed after `since`,
    /// as frame texts, with the live messages that arrived meanwhile. Call it
    /// after the room's subscription is confirmed, and hand the socket to
    /// the plane in the same loop turn as it returns.
    pub async fn recover(
        &self,
        redis: &rds::Redis,
        since: Offset,
        room: Option<&Rc<str>>,
    ) -> Result<Recovery, RedisError> {
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
        let reply = redis
            .query(Some(self.keys.slot()), &self.recover_command(since, room))
            .await?;
        let (complete, newest, missed) = read_recovery(&reply, room)?;
        // An offset from the future missed nothing, and has nothing yet.
        let since = since.min(newest.unwrap_or_default());
        self.heard(since);
        let mut out = Recovery {
            complete,
            since,
            ..Recovery::default()
        };
        for (offset, on, message) in &missed {
            let text = protocol::broadcast(message, Some(*offset), on.map(|r| &**r));
            out.texts.push(Rc::from(text));
            out.last = Some(*offset);
        }
        self.add_live(start, room, &mut out);
        Ok(out)
    }

    /// The recover script's call: the offset key, then the global
    /// channel's stream and the room's.
    fn recover_command(&self, since: Offset, room: Option<&Rc<str>>) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.recover.get_hash())
            .arg(streams_read(room) + 1)
            .arg(self.keys.offset().as_ref())
            .arg(self.keys.stream(crate::pubsub::EVENTS_CHANNEL).as_ref());
        if let Some(r) = room {
            cmd.arg(self.keys.stream(&crate::pubsub::room_channel(r)).as_ref());
        }
        cmd.arg(since.ms)
            .arg(since.seq)
            .arg(self.ttl_ms)
            .arg(self.size);
        cmd
    }

    /// Adds to `out` the live messages for the socket's channels that
    /// arrived since its recovery began (`start`) and are newer than what
    /// history gave it.
    fn add_live(&self, start: u64, room: Option<&Rc<str>>, out: &mut Recovery) {
        let after = out.has();
        let b = self.bridge.borrow();
        if b.kept_from > start {
            // Live messages this recovery needed were dropped at the bound.
            out.complete = false;
        }
        for k in b.kept.iter().filter(|k| k.seq >= start && k.offset > after) {
            let mine = match (&k.room, room) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            };
            if mine {
                out.texts.push(k.text.clone());
                out.last = Some(k.offset);
            }
        }
    }
}

/// The streams a recovery reads: the global channel's, and the room's.
fn streams_read(room: Option<&Rc<str>>) -> usize {
    if room.is_some() {
        2
    } else {
        1
    }
}

/// Messages history gave a recovery, oldest first, each with its room
/// (None: the global channel).
type Missed<'r> = Vec<(Offset, Option<&'r Rc<str>>, String)>;

/// The recover script's reply: whether history still held all that was
/// missed, the newest offset given out, and the messages.
fn read_recovery<'r>(
    reply: &Value,
    room: Option<&'r Rc<str>>,
) -> Result<(bool, Option<Offset>, Missed<'r>), RedisError> {
    let (complete, newest, streams) = match reply {
        Value::Array(v) if v.len() == streams_read(room) + 2 => (
            rds::as_u64(&v[0]) == Some(1),
            text(&v[1]).and_then(|s| s.parse::<Offset>().ok()),
            &v[2..],
        ),
        Value::ServerError(e) => return Err(RedisError::Server(format!("{e:?}"))),
        other => return Err(RedisError::Reply(format!("recover: {other:?}"))),
    };
    let mut missed = Vec::new();
    for (i, entries) in streams.iter().enumerate() {
        let on = if i == 0 { None } else { room };
        let Value::Array(entries) = entries else {
            continue;
        };
        for e in entries {
            if let Some((offset, message)) = entry(e) {
                missed.push((offset, on, message));
            }
        }
    }
    missed.sort_by_key(|(offset, _, _)| *offset);
    Ok((complete, newest, missed))
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

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// One stream entry, `[id, ["m", "<message as a JSON string>"]]`.
fn entry(v: &Value) -> Option<(Offset, String)> {
    let Value::Array(pair) = v else { return None };
    let [id, Value::Array(fields)] = pair.as_slice() else {
        return None;
    };
    let offset = text(id)?.parse().ok()?;
    let lit = fields
        .chunks(2)
        .find(|f| text(&f[0]) == Some("m"))
        .and_then(|f| f.get(1))
        .and_then(text)?;
    Some((offset, serde_json::from_str(lit).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn offsets_parse_strictly_and_order_numerically() {
        let o: Offset = "1767225600000-3".parse().unwrap();
        assert_eq!(
            o,
            Offset {
                ms: 1767225600000,
                seq: 3
            }
        );
        assert_eq!(o.to_string(), "1767225600000-3");
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1-99999999999999999999",
            "1767225600000-0x1",
            "%31-2",
        ] {
            assert_eq!(bad.parse::<Offset>(), Err(OffsetError), "{bad:?}");
        }
        let a: Offset = "9-10".parse().unwrap();
        let b: Offset = "10-0".parse().unwrap();
        let c: Offset = "10-2".parse().unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn entries_read_as_offset_and_message() {
        let e = Value::Array(vec![
            bulk("12-3"),
            Value::Array(vec![bulk("m"), bulk("\"hi \\\"you\\\"\"")]),
        ]);
        assert_eq!(
            entry(&e),
            Some((Offset { ms: 12, seq: 3 }, "hi \"you\"".into()))
        );
        let no_m = Value::Array(vec![bulk("12-3"), Value::Array(vec![bulk("x"), bulk("1")])]);
        assert_eq!(entry(&no_m), None);
        assert_eq!(entry(&bulk("12-3")), None);
    }

    /// Ten entries a channel, one Redis, no replicas.
    fn history() -> History {
        History::new(
            10,
            1000,
            "PUBLISH",
            Rc::new(Replicas::new(0)),
            Keys::new(false),
        )
    }

    #[test]
    fn floors_skip_what_a_socket_has_and_go_once_passed() {
        let h = history();
        let at = |ms| Offset { ms, seq: 0 };
        assert!(h.skip(at(1)).is_empty());
        h.set_floor(7, at(5));
        h.set_floor(8, at(3));
        assert_eq!(h.skip(at(3)), [7, 8]);
        assert_eq!(h.skip(at(4)), [7]);
        assert_eq!(h.skip(at(6)), Vec::<u64>::new());
        assert!(h.floors.borrow().is_empty());
    }

    #[test]
    fn floors_with_no_broadcast_to_pass_them_expire_and_stay_bounded() {
        let h = history();
        let at = |ms| Offset { ms, seq: 0 };
        let t0 = Instant::now();
        h.set_floor_at(1, at(9), t0);
        h.set_floor_at(2, at(9), t0 + FLOOR_TTL / 2);
        // The first is past its time when the third comes; the second not.
        h.set_floor_at(3, at(9), t0 + FLOOR_TTL);
        assert_eq!(h.skip(at(9)), [2, 3]);
        // Reconnect churn with no broadcast: never more than the bound.
        for conn in 10..10 + MAX_FLOORS as u64 + 100 {
            h.set_floor_at(conn, at(9), t0 + FLOOR_TTL);
        }
        assert_eq!(h.floors.borrow().len(), MAX_FLOORS);
        let skip = h.skip(at(9));
        assert_eq!(skip.first(), Some(&110), "the oldest went first");
    }

    #[test]
    fn the_bridge_keeps_only_while_recoveries_run_and_drops_at_its_bound() {
        let h = history();
        let frame = "x";
        h.on_live(Offset { ms: 5, seq: 0 }, None, frame);
        assert_eq!(h.head(), Offset { ms: 5, seq: 0 });
        assert!(
            h.bridge.borrow().kept.is_empty(),
            "nothing kept with no recovery"
        );
        h.bridge.borrow_mut().recoveries = 1;
        for i in 0..BRIDGE_MAX as u64 + 3 {
            h.on_live(Offset { ms: 6, seq: i }, None, frame);
        }
        let b = h.bridge.borrow();
        assert_eq!(b.kept.len(), BRIDGE_MAX);
        assert_eq!(b.kept_from, 3, "the first three arrivals were dropped");
        drop(b);
        // The head never goes back.
        h.heard(Offset { ms: 1, seq: 0 });
        assert_eq!(
            h.head(),
            Offset {
                ms: 6,
                seq: BRIDGE_MAX as u64 + 2
            }
        );
    }
}
