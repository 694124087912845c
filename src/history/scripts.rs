//! The two Lua scripts of history, run where a channel's keys live, and
//! the readers of their replies.
//!
//! A channel's keys share its name as their hash tag, so on a Redis Cluster
//! they live in the channel's own slot, beside its sharded pub/sub channel:
//! - `{<channel>}:h`: the stream of its broadcasts (ids are offsets);
//! - `{<channel>}:e`: its head, `<epoch>:<newest offset>`, written by every
//!   publish with the same TTL as the stream, so the two live and go
//!   together. A publish that finds one without the other starts a new life
//!   (a new epoch) instead of going on with half of the old.

use redis::Value;

use super::position::{Epoch, Offset, Piece};
use crate::redis::{self as rds, RedisError, Slot};

/// A channel's stream key.
pub fn stream_key(channel: &str) -> String {
    format!("{{{channel}}}:h")
}

/// A channel's head key.
pub fn head_key(channel: &str) -> String {
    format!("{{{channel}}}:e")
}

/// The slot of a channel's keys (and of its sharded channel).
pub fn slot(channel: &str) -> Slot {
    Slot::of(channel)
}

/// Appends a broadcast to its channel's stream and publishes it with its
/// offset, its epoch and the offset before it in the stream (`prev`, empty
/// for the first of a life: what lets a shard see a gap), atomically. KEYS: the stream, the head. ARGV: max
/// length, ttl ms, publish verb, the message as a JSON string, the channel,
/// an epoch to use if the stream starts a new life. Returns the offset, the
/// epoch and the subscriber count.
///
/// Trimming is exact (`MAXLEN =`, `MINID =`), not `~`, and the newest entry
/// it removes is written to the stream's `max-deleted-entry-id` (`XSETID`),
/// which Redis itself sets only for `XDEL`: that is what lets a recovery
/// say exactly whether anything after a position is gone. In steady state a
/// publish removes one entry, so exactness costs little.
pub const PUBLISH_SCRIPT: &str = r#"
local key, headkey = KEYS[1], KEYS[2]
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local head = redis.call('GET', headkey)
local epoch, prev = nil, ''
if head then epoch, prev = string.match(head, '^(%x+):(.+)$') end
if not epoch or redis.call('EXISTS', key) == 0 then
  epoch, prev = ARGV[6], ''
  redis.call('DEL', key)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The newest entry this publish will remove, by length or by age.
local gone = nil
local over = redis.call('XLEN', key) + 1 - size
if over > 0 then
  local old = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
  if #old > 0 then gone = old[#old][1] end
end
local cut = string.format('%d-0', math.max(now - ttl, 0))
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
local id = redis.call('XADD', key, 'MAXLEN', '=', size, '*', 'm', ARGV[4])
redis.call('XTRIM', key, 'MINID', '=', cut)
if gone then
  redis.call('XSETID', key, id, 'MAXDELETEDID', gone)
end
redis.call('PEXPIRE', key, ttl)
redis.call('SET', headkey, epoch .. ':' .. id, 'PX', ttl)
local n = redis.call(ARGV[3], ARGV[5],
  '{"broadcast":' .. ARGV[4] .. ',"offset":"' .. id .. '","epoch":"' .. epoch ..
  '","prev":"' .. prev .. '"}')
return {id, epoch, n}
"#;

/// What a client missed on one channel since a piece of its position: up
/// to ARGV[5] newest entries after it. KEYS: the stream, the head. ARGV:
/// the offset's ms and seq, the client's epoch (`""`: the channel had no
/// stream then; `"*"`: not known, a `since` of before, checked by age as
/// then), ttl ms, limit. Returns {status, head or false, entries}; status
/// is `ok`, `epoch_changed` (the stream is another life than the
/// client's), `trimmed` (entries after the offset were trimmed, expired or
/// lost), `rewound` (the offset is past the head of the client's epoch:
/// the stream lost entries the client had) or `expired` (a `since` older than the ttl,
/// with no stream).
pub const RECOVER_SCRIPT: &str = r#"
local key, headkey = KEYS[1], KEYS[2]
local sms, sseq = tonumber(ARGV[1]), tonumber(ARGV[2])
local since = ARGV[1] .. '-' .. ARGV[2]
local want, ttl, limit = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local head = redis.call('GET', headkey)
local epoch, last = nil, nil
if head then epoch, last = string.match(head, '^(%x+):(.+)$') end
if want ~= '' and want ~= '*' and epoch ~= want then
  return {'epoch_changed', head or false, {}}
end
if not epoch then
  if want == '*' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now - sms >= ttl then return {'expired', false, {}} end
  end
  return {'ok', false, {}}
end
if want ~= '' and want ~= '*' then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(lms), tonumber(lseq)
  if sms > lms or (sms == lms and sseq > lseq) then
    return {'rewound', head, {}}
  end
end
if redis.call('EXISTS', key) == 0 then
  if last == since then return {'ok', head, {}} end
  return {'trimmed', head, {}}
end
local status = 'ok'
local info = redis.call('XINFO', 'STREAM', key)
for j = 1, #info, 2 do
  if info[j] == 'max-deleted-entry-id' then
    local dms, dseq = string.match(info[j + 1], '^(%d+)-(%d+)$')
    dms, dseq = tonumber(dms), tonumber(dseq)
    if dms > sms or (dms == sms and dseq > sseq) then status = 'trimmed' end
  end
end
local got = redis.call('XREVRANGE', key, '+', '(' .. since, 'COUNT', limit + 1)
if #got > limit then
  status = 'trimmed'
  got[#got] = nil
end
return {status, head, got}
"#;

/// Ends a stream's life when a shard found it rewound (it lacks entries
/// the shard delivered: Redis lost its newest writes in a failover to a
/// replica that had not got them, or a restart from an older copy). Its
/// offsets now name different broadcasts in different copies, so no
/// position of that epoch can be trusted: the stream and its head go, and
/// the next publish starts a new life that every reader is told of. Only
/// while the head is still of the epoch found rewound (ARGV[1]): a later
/// life is left alone. KEYS: the stream, the head. Returns 1 if it ended
/// the life, else 0.
pub const END_LIFE_SCRIPT: &str = r#"
local head = redis.call('GET', KEYS[2])
if not head or string.match(head, '^(%x+):') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"#;

/// Why a recovery could not give a channel everything it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The stream is another life than the position's: it was lost (a
    /// restart without persistence, a flush, a failover to a replica that
    /// never had it, or no broadcast for `history_ttl`) and made again.
    EpochChanged,
    /// Entries after the position were trimmed (`history_size`) or expired
    /// (`history_ttl`).
    Trimmed,
    /// History could not be read (Redis away).
    Unavailable,
    /// More live broadcasts came during the recovery than the shard keeps
    /// for it.
    Overflow,
    /// The position is past the stream's head: the stream lost broadcasts
    /// the client had (Redis lost its newest writes in a failover or a
    /// restart from an older copy).
    Rewound,
}

impl Lost {
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::EpochChanged => "epoch_changed",
            Lost::Trimmed => "trimmed",
            Lost::Unavailable => "unavailable",
            Lost::Overflow => "overflow",
            Lost::Rewound => "rewound",
        }
    }
}

/// The recover script's reply for one channel.
#[derive(Debug, Default)]
pub struct Read {
    pub lost: Option<Lost>,
    /// The channel's head now; None: it has no stream.
    pub head: Option<Piece>,
    /// Entries after the position, oldest first: offset and message.
    pub missed: Vec<(Offset, String)>,
}

pub fn read_recovery(reply: &Value) -> Result<Read, RedisError> {
    let Value::Array(v) = reply else {
        return match reply {
            Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
            other => Err(RedisError::Reply(format!("recover: {other:?}"))),
        };
    };
    let [status, head, entries] = v.as_slice() else {
        return Err(RedisError::Reply(format!("recover: {v:?}")));
    };
    let lost = match text(status) {
        Some("ok") => None,
        Some("epoch_changed") => Some(Lost::EpochChanged),
        Some("trimmed" | "expired") => Some(Lost::Trimmed),
        Some("rewound") => Some(Lost::Rewound),
        _ => return Err(RedisError::Reply(format!("recover status {status:?}"))),
    };
    let head = text(head).and_then(Piece::parse_head);
    let mut missed: Vec<(Offset, String)> = match entries {
        Value::Array(e) => e.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    };
    missed.reverse();
    Ok(Read { lost, head, missed })
}

/// The publish script's reply: the broadcast's piece and the subscriber count.
pub fn read_publish(reply: Value) -> Result<(Piece, u64), RedisError> {
    match reply {
        Value::Array(v) if v.len() == 3 => {
            let offset = text(&v[0]).and_then(|s| s.parse::<Offset>().ok());
            let epoch = text(&v[1]).and_then(|s| s.parse::<Epoch>().ok());
            let (Some(offset), Some(epoch)) = (offset, epoch) else {
                return Err(RedisError::Reply(format!("publish: {v:?}")));
            };
            let piece = Piece {
                epoch: Some(epoch),
                offset,
            };
            Ok((piece, rds::as_u64(&v[2]).unwrap_or(0)))
        }
        Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
        other => Err(RedisError::Reply(format!("publish: {other:?}"))),
    }
}

pub fn text(v: &Value) -> Option<&str> {
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

    #[test]
    fn a_recovery_reply_reads_oldest_first_and_names_what_was_lost() {
        let e = |id: &str, m: &str| {
            Value::Array(vec![bulk(id), Value::Array(vec![bulk("m"), bulk(m)])])
        };
        let reply = Value::Array(vec![
            bulk("trimmed"),
            bulk("00000000000000aa:9-0"),
            Value::Array(vec![e("9-0", "\"b\""), e("8-0", "\"a\"")]),
        ]);
        let r = read_recovery(&reply).unwrap();
        assert_eq!(r.lost, Some(Lost::Trimmed));
        assert_eq!(r.head.unwrap().epoch, Some(Epoch(0xaa)));
        let got: Vec<&str> = r.missed.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(got, ["a", "b"]);
        let gone = Value::Array(vec![
            bulk("epoch_changed"),
            Value::Nil,
            Value::Array(vec![]),
        ]);
        let r = read_recovery(&gone).unwrap();
        assert_eq!((r.lost, r.head), (Some(Lost::EpochChanged), None));
        assert!(read_recovery(&Value::Array(vec![bulk("what")])).is_err());
    }

    #[test]
    fn keys_carry_the_channel_as_their_hash_tag() {
        assert_eq!(stream_key("shardcast:room:a"), "{shardcast:room:a}:h");
        assert_eq!(head_key("shardcast:room:a"), "{shardcast:room:a}:e");
        let s = slot("shardcast:room:a");
        assert_eq!(Slot::of(stream_key("shardcast:room:a").as_bytes()), s);
        assert_eq!(Slot::of(head_key("shardcast:room:a").as_bytes()), s);
    }
}
