//! A shard's session store: its cache of live sessions, and their counts'
//! way to Redis (a pipelined flush every `flush_interval`, a direct write on
//! close and in sync mode, and a bounded backlog while Redis is away).
//!
//! Keys (hash-tagged so both keys of a session share a cluster slot):
//! - `shardcast:{<id>}:s`: hash of per-writer absolute counts, TTL
//!   `session_ttl`, and a `rooms` field: the rooms the session's sockets
//!   joined on their open socket, space-separated, which a resume joins again;
//! - `shardcast:{<id>}:del`: tombstone left by DELETE, so a late flush from
//!   another shard cannot bring a deleted session back.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::metrics::Metrics;
use crate::pubsub::Publish;
use crate::readiness::Readiness;
use crate::redis::replicas::Replicas;
use crate::redis::{as_u64, Applied, Redis, RedisError, Slot, Value};
use crate::session::Session;
use crate::table::Table;

/// Writes a batch of sessions in one call. KEYS holds each session's hash and
/// tombstone in turn; ARGV is the writer, the TTL, then one absolute count per
/// session. For each session it sets this writer's field, never lowering it,
/// unless the session was deleted, and refreshes the TTL. Returns one integer
/// per session: the count written, or -1 for a deleted session.
///
/// One call per batch rather than one per session: Redis's per-call cost
/// (argument tables, script lookup, reply conversion) was most of its work at
/// 20,000 counts a second, and its bursts stalled whatever shared its CPU.
pub const FLUSH_SCRIPT: &str = r"
local w, ttl = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS / 2 do
  local s, v = KEYS[2 * i - 1], ARGV[i + 2]
  if redis.call('EXISTS', KEYS[2 * i]) == 1 then
    out[i] = -1
  else
    local cur = tonumber(redis.call('HGET', s, w) or '0')
    if tonumber(v) >= cur then redis.call('HSET', s, w, v) end
    redis.call('PEXPIRE', s, ttl)
    out[i] = tonumber(v)
  end
end
return out
";

/// Sets a session's rooms (KEYS: its hash, its tombstone; ARGV: the rooms,
/// space-separated, empty for none; the TTL), unless it was deleted. A join
/// is activity: the TTL counts from now.
pub const ROOMS_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'rooms')
else
  redis.call('HSET', KEYS[1], 'rooms', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// The session hash's field that holds its rooms, not a writer's count.
const ROOMS_FIELD: &[u8] = b"rooms";

/// Sessions written in one script call, and calls are sent one round trip
/// at a time. Redis runs a call without pause, so a big call keeps it busy
/// for milliseconds, and anything sharing its CPU (in the bench, the load
/// generator) waits a whole scheduler slice behind it: with 128 sessions per
/// call the rate figure's RTT p99 was 3.5-4 ms, with 32 it is 0.4-0.7 ms, for
/// about the same server CPU per reply.
const FLUSH_BATCH: usize = 32;
/// How often queued sessions are written while the replicas asked for
/// cannot confirm writes (each write is then made again until they can).
const SHORT_FLUSH_PERIOD: Duration = Duration::from_millis(250);
/// How often the unflushed gauges are worked out while Redis is away.
const GAUGE_PERIOD_DOWN: Duration = Duration::from_millis(250);

/// Longest key: the prefix, a hyphenated UUID, the suffix.
const KEY_MAX: usize = 64;

/// Writes a session's key into `buf` without allocating; `suffix` is `s` for
/// the count hash, `del` for the tombstone.
fn write_key<'a>(buf: &'a mut [u8; KEY_MAX], id: &Uuid, suffix: &str) -> &'a [u8] {
    const PREFIX: &[u8] = b"shardcast:{";
    let mut n = PREFIX.len();
    buf[..n].copy_from_slice(PREFIX);
    n += id.hyphenated().encode_lower(&mut buf[n..]).len();
    buf[n..n + 2].copy_from_slice(b"}:");
    n += 2;
    buf[n..n + suffix.len()].copy_from_slice(suffix.as_bytes());
    &buf[..n + suffix.len()]
}

fn key(id: &Uuid, suffix: &str) -> String {
    let mut buf = [0; KEY_MAX];
    String::from_utf8_lossy(write_key(&mut buf, id, suffix)).into_owned()
}

/// The cluster slot of both of a session's keys.
pub fn session_slot(id: &Uuid) -> Slot {
    let mut buf = [0; KEY_MAX];
    Slot::of(write_key(&mut buf, id, "s"))
}

pub fn session_key(id: &Uuid) -> String {
    key(id, "s")
}

pub fn tombstone_key(id: &Uuid) -> String {
    key(id, "del")
}

/// What a sync write came to, within its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Redis has it, on as many replicas as `redis_min_replicas` asks.
    Confirmed,
    /// The master has it; too few replicas confirmed it in time.
    Unconfirmed,
    /// No try succeeded in time: what the tries did is the session's to
    /// tell ([`Session::undo`]).
    Failed,
}

/// A sync write's first pause before it tries again, and its longest.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A resume needs Redis to check the id; refusing beats adopting it blind
    /// or silently starting the client over at 0.
    #[error("redis is unavailable, cannot resume")]
    RedisUnavailable,
    /// Too many sessions already wait for Redis.
    #[error("too many sessions wait for redis")]
    Backlog,
}

/// What a session lookup in Redis found.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub count: u64,
    pub mine: u64,
    /// The rooms its sockets joined on their open socket, as Redis has them
    /// (unchecked: a reader checks each name).
    pub rooms: Option<String>,
}

/// What [`Store::open`] gives an upgrade.
pub struct Opened {
    /// Attached to the caller.
    pub session: Rc<Session>,
    pub resumed: bool,
    /// A resumed session's rooms, as Redis has them (unchecked).
    pub rooms: Vec<String>,
}

/// Reads an HGETALL reply: the sum of all writers, `writer`'s own field,
/// and the rooms.
pub fn read_fields(v: &Value, writer: &str) -> Option<Stored> {
    let mut count = 0u64;
    let mut mine = 0u64;
    let mut rooms = None;
    let mut any = false;
    let mut add = |k: &[u8], val: &Value| {
        if k == ROOMS_FIELD {
            if let Value::BulkString(b) = val {
                rooms = Some(String::from_utf8_lossy(b).into_owned());
            }
            return;
        }
        let n = as_u64(val).unwrap_or(0);
        // Fields are Redis's to say: their sum saturates, never overflows.
        count = count.saturating_add(n);
        if k == writer.as_bytes() {
            mine = n;
        }
        any = true;
    };
    match v {
        Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [Value::BulkString(k), val] = pair {
                    add(k, val);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, val) in pairs {
                if let Value::BulkString(k) = k {
                    add(k, val);
                }
            }
        }
        _ => return None,
    }
    any.then_some(Stored { count, mine, rooms })
}

/// How often the heartbeat walk refreshes the TTL of a session with an
/// open socket: once half of `ttl`, less one heartbeat, has passed since its
/// last write (on every heartbeat when that is nothing). The walk passes
/// each socket once per `heartbeat`, so a renewal goes out by the time half
/// of `ttl` has passed: the TTL of a session with an open socket stays
/// above half of `ttl`, and a million silent sockets with the defaults (1 h,
/// 30 s) cost Redis 565 writes a second, not 33,000.
pub fn renew_every(ttl: Duration, heartbeat: Duration) -> Duration {
    (ttl / 2).saturating_sub(heartbeat)
}

/// One shard's sessions.
pub struct Store {
    redis: Redis,
    writer: String,
    ttl_ms: u64,
    /// [`renew_every`], in the clock's milliseconds.
    renew_ms: u32,
    /// The start of the store's clock ([`Store::now`]).
    epoch: Instant,
    max_unflushed: usize,
    /// Replicas that must confirm a write (`WAIT`), shared with the
    /// shard's other writers.
    replicas: Rc<Replicas>,
    script: redis::Script,
    rooms_script: redis::Script,
    /// Sessions by id, each found by the id it carries: a slot is one
    /// pointer, where a map by id spends 24 bytes (16 of them a copy of the
    /// id) for every open socket.
    cache: RefCell<Table<Rc<Session>>>,
    queue: RefCell<Vec<Rc<Session>>>,
    /// When the unflushed gauges were last worked out from the queue.
    gauged: Cell<Option<Instant>>,
    /// When the last flush wrote, and whether the master took it all.
    flushed_at: Cell<Option<Instant>>,
    flushed_clean: Cell<bool>,
    metrics: Arc<Metrics>,
    /// Whether every shard has written back what it counted while Redis
    /// was away.
    readiness: Arc<Readiness>,
    shard: usize,
}

impl Store {
    /// `metrics` takes the store's counts; `readiness` says whether the
    /// other shards have written back what they counted.
    pub fn new(
        redis: Redis,
        run_id: &str,
        shard: usize,
        (ttl, heartbeat): (Duration, Duration),
        max_unflushed: usize,
        replicas: Rc<Replicas>,
        (metrics, readiness): (Arc<Metrics>, Arc<Readiness>),
    ) -> Self {
        Self {
            redis,
            writer: format!("w:{run_id}:{shard}"),
            ttl_ms: ttl.as_millis() as u64,
            renew_ms: renew_every(ttl, heartbeat)
                .as_millis()
                .min(u128::from(u32::MAX / 2)) as u32,
            epoch: Instant::now(),
            max_unflushed,
            replicas,
            script: redis::Script::new(FLUSH_SCRIPT),
            rooms_script: redis::Script::new(ROOMS_SCRIPT),
            cache: RefCell::new(Table::default()),
            queue: RefCell::new(Vec::new()),
            gauged: Cell::new(None),
            flushed_at: Cell::new(None),
            flushed_clean: Cell::new(true),
            metrics,
            readiness,
            shard,
        }
    }

    /// The scripts loaded on every Redis (re)connect.
    pub const SCRIPTS: &'static [&'static str] = &[FLUSH_SCRIPT, ROOMS_SCRIPT];

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Opens the session a client asked for, or a new one.
    pub async fn open(&self, requested: Option<Uuid>) -> Result<Opened, OpenError> {
        if let Some(id) = requested {
            if let Some((session, rooms)) = self.resume(id).await? {
                session.attach();
                // Touch it, so its TTL counts from now.
                self.enqueue(&session);
                self.gauge_cached();
                let rooms = rooms
                    .map(|r| {
                        r.split(' ')
                            .filter(|r| !r.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Opened {
                    session,
                    resumed: true,
                    rooms,
                });
            }
        }
        if self.queue.borrow().len() >= self.max_unflushed {
            return Err(OpenError::Backlog);
        }
        let s = self.unwritten(Uuid::new_v4(), 0, 0);
        self.cache.borrow_mut().insert(s.clone());
        s.attach();
        // Written before the welcome goes out, so a resume on any shard finds
        // it at once. While Redis is away it waits in the flush queue.
        if self.redis.is_up() {
            let _ = self.persist(&s).await;
        } else {
            self.enqueue(&s);
        }
        self.gauge_cached();
        Ok(Opened {
            session: s,
            resumed: false,
            rooms: Vec::new(),
        })
    }

    /// Writes the rooms session `id`'s sockets joined on their open socket
    /// (the last socket to join or leave one sets them), for the next
    /// resume to join again. One try: a lost write costs a resume its rooms,
    /// which the client joins again by itself.
    pub async fn set_rooms(&self, id: &Uuid, rooms: &[Rc<str>]) -> Result<(), RedisError> {
        let list = rooms.iter().map(|r| &**r).collect::<Vec<_>>().join(" ");
        let cmd = redis::cmd("EVALSHA")
            .arg(self.rooms_script.get_hash())
            .arg(2)
            .arg(session_key(id))
            .arg(tombstone_key(id))
            .arg(list)
            .arg(self.ttl_ms)
            .clone();
        self.redis
            .query(Some(session_slot(id)), &cmd)
            .await
            .map(|_| ())
    }

    /// Looks a requested id up, with its rooms as Redis has them: Ok(None)
    /// means unknown (the client gets a new session), Err means it cannot
    /// be told now.
    async fn resume(&self, id: Uuid) -> Result<Option<(Rc<Session>, Option<String>)>, OpenError> {
        let cached = self.cached(&id).map(|s| (s, None));
        if !self.redis.is_up() || !self.all_synced() {
            // Redis cannot be asked; a session this shard holds is still
            // known (its rooms are not: the client joins them itself).
            return cached.map(Some).ok_or(OpenError::RedisUnavailable);
        }
        let cmd = redis::cmd("HGETALL").arg(session_key(&id)).clone();
        let reply = match self.redis.query(Some(session_slot(&id)), &cmd).await {
            Ok(v) => v,
            Err(_) => return cached.map(Some).ok_or(OpenError::RedisUnavailable),
        };
        let Some(found) = read_fields(&reply, &self.writer) else {
            // Known here but not written yet, or unknown everywhere.
            return Ok(self.cached(&id).map(|s| (s, None)));
        };
        let others = found.count.saturating_sub(found.mine);
        // Another connection may have loaded it while we waited.
        let s = match self.cached(&id) {
            Some(s) => {
                // Other writers may have counted since this shard loaded it.
                s.raise_base(others);
                s
            }
            None => {
                let s = self.unwritten(id, others, found.mine);
                self.cache.borrow_mut().insert(s.clone());
                s
            }
        };
        Ok(Some((s, found.rooms)))
    }

    /// Whether every shard has written what it buffered while Redis was away.
    fn all_synced(&self) -> bool {
        self.readiness.all_synced()
    }

    fn cached(&self, id: &Uuid) -> Option<Rc<Session>> {
        self.cache
            .borrow()
            .get(id)
            .filter(|c| !c.is_deleted())
            .cloned()
    }

    /// Marks the session for the next flush.
    pub fn enqueue(&self, s: &Rc<Session>) {
        if !s.queued() {
            s.set_queued(true);
            self.queue.borrow_mut().push(s.clone());
        }
    }

    /// The store's clock: milliseconds since it started, wrapping, the
    /// width a session keeps of it.
    pub fn now(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// A session this shard has not written yet: its renewal is due.
    fn unwritten(&self, id: Uuid, base: u64, mine: u64) -> Rc<Session> {
        let s = Session::new(id, base, mine);
        s.renewed_at(self.now().wrapping_sub(self.renew_ms));
        Rc::new(s)
    }

    /// The heartbeat walk passed an open socket of `s` at `now`: its TTL is
    /// refreshed (a write queued) once [`renew_every`] has passed since the
    /// last write of it reached Redis.
    pub fn renew(&self, s: &Rc<Session>, now: u32) {
        if s.renewal_due(now, self.renew_ms) {
            self.enqueue(s);
        }
    }

    /// A connection let go of the session. It leaves the cache once no
    /// connection holds it and Redis has its count.
    pub fn release(&self, s: &Rc<Session>) {
        s.detach();
        self.maybe_evict(s);
    }

    fn maybe_evict(&self, s: &Rc<Session>) {
        if s.conns() == 0 && (s.unflushed() == 0 || s.is_deleted()) && !s.queued() {
            let mut cache = self.cache.borrow_mut();
            if cache.get(&s.id).is_some_and(|c| Rc::ptr_eq(c, s)) {
                cache.remove(&s.id);
            }
        }
    }

    /// One script call writing `batch`, each session with its count.
    fn flush_cmd(&self, batch: &[(Rc<Session>, u64)]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(batch.len() * 2);
        let mut buf = [0; KEY_MAX];
        for (s, _) in batch {
            cmd.arg(write_key(&mut buf, &s.id, "s"));
            cmd.arg(write_key(&mut buf, &s.id, "del"));
        }
        cmd.arg(&self.writer).arg(self.ttl_ms);
        for (_, value) in batch {
            cmd.arg(*value);
        }
        cmd
    }

    /// Writes `batch` in one script call and applies each session's answer.
    /// Returns each session's outcome; a failed call, or an error reply,
    /// fails the whole batch. A batch too few replicas confirmed fails
    /// whole too: nothing in it counts as written, so it is written again.
    ///
    /// Each session of the batch must have been told [`Session::sending`]
    /// when its value was taken; this tells each [`Session::sent`], with
    /// what the write did.
    async fn write(
        &self,
        batch: &[(Rc<Session>, u64)],
    ) -> Result<Vec<Result<(), RedisError>>, RedisError> {
        // The TTL counts from when Redis ran the write, which is after it
        // was sent: renewals are timed from the send, never later.
        let at = self.now();
        let result = self.write_once(batch).await;
        for (i, (s, value)) in batch.iter().enumerate() {
            let applied = match &result {
                Ok(each) => each[i].as_ref().err().map(RedisError::applied),
                Err(e) => Some(e.applied()),
            };
            if applied.is_none() {
                s.renewed_at(at);
            }
            s.sent(*value, applied);
        }
        result
    }

    async fn write_once(
        &self,
        batch: &[(Rc<Session>, u64)],
    ) -> Result<Vec<Result<(), RedisError>>, RedisError> {
        let cmd = self.flush_cmd(batch).get_packed_command();
        let slot = batch.first().map(|(s, _)| session_slot(&s.id));
        let replies = self.replicas.write(&self.redis, slot, cmd, 1).await?;
        match replies.first().unwrap_or(&Value::Nil) {
            Value::Array(items) if items.len() == batch.len() => Ok(batch
                .iter()
                .zip(items)
                .map(|((s, value), r)| self.apply_reply(s, *value, r))
                .collect()),
            Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
            other => Err(RedisError::Reply(format!("{other:?}"))),
        }
    }

    fn apply_reply(&self, s: &Session, value: u64, reply: &Value) -> Result<(), RedisError> {
        match reply {
            Value::Int(-1) => {
                s.mark_deleted();
                Ok(())
            }
            Value::Int(_) => {
                s.acked(value);
                Ok(())
            }
            Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
            other => Err(RedisError::Reply(format!("{other:?}"))),
        }
    }

    /// What Redis holds for session `id` (the session API): its count and
    /// rooms, and the milliseconds left of its TTL; None when Redis has no
    /// such session.
    pub async fn lookup(&self, id: &Uuid) -> Result<Option<(Stored, u64)>, RedisError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL")
            .arg(session_key(id))
            .cmd("PTTL")
            .arg(session_key(id));
        let v = self
            .redis
            .exec(Some(session_slot(id)), p.get_packed_pipeline(), 2)
            .await?;
        let [fields, ttl] = v.as_slice() else {
            return Err(RedisError::Reply(format!(
                "HGETALL and PTTL answered {v:?}"
            )));
        };
        let ttl_ms = match ttl {
            Value::Int(ms) if *ms > 0 => *ms as u64,
            _ => 0,
        };
        Ok(read_fields(fields, &self.writer).map(|found| (found, ttl_ms)))
    }

    /// Deletes session `id` for good: a tombstone for one TTL (so no writer
    /// brings it back) and the hash gone, done once the replicas asked for
    /// hold the tombstone, so a failover cannot bring the session back;
    /// then `kick` (which closes its live sockets), to its own slot: on a
    /// cluster the kick's channel is not in the session's slot.
    pub async fn delete(&self, id: &Uuid, kick: Publish) -> Result<(), RedisError> {
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(tombstone_key(id))
            .arg(1)
            .arg("PX")
            .arg(self.ttl_ms)
            .cmd("DEL")
            .arg(session_key(id));
        self.replicas
            .write(
                &self.redis,
                Some(session_slot(id)),
                p.get_packed_pipeline(),
                2,
            )
            .await?;
        self.redis.query(kick.slot, &kick.cmd).await.map(|_| ())
    }

    /// Writes this session's count now and waits for Redis (a new session,
    /// a close). One try; a failed write leaves the session queued.
    pub async fn persist(&self, s: &Rc<Session>) -> Result<(), RedisError> {
        if s.is_deleted() {
            return Ok(());
        }
        s.sending();
        let result = self
            .write(&[(s.clone(), s.mine())])
            .await
            .and_then(|mut each| each.remove(0));
        if result.is_err() {
            self.enqueue(s);
        }
        result
    }

    /// Makes sure Redis holds `s`'s count before its socket is told
    /// goodbye: a write ([`Store::persist`]), unless Redis acknowledged
    /// every increment and the TTL is not due a renewal. A drain of silent
    /// sockets, or of ones whose counts the flush already wrote, costs Redis
    /// nothing.
    pub async fn settle(&self, s: &Rc<Session>) -> Result<(), RedisError> {
        if s.is_deleted() || s.unflushed() == 0 && !s.renewal_due(self.now(), self.renew_ms) {
            return Ok(());
        }
        self.persist(s).await
    }

    /// Writes this session's count for a sync reply, trying again until
    /// Redis answers or `wait` has passed: a failover is waited through,
    /// not answered with an error. A try whose outcome is unknown is made
    /// again, harmlessly, since the value written is absolute.
    pub async fn commit(&self, s: &Rc<Session>, wait: Duration) -> Commit {
        let deadline = Instant::now() + wait;
        let mut pause = RETRY_FIRST;
        loop {
            match self.persist(s).await {
                Ok(()) => return Commit::Confirmed,
                Err(e) if e.applied() == Applied::Unconfirmed => return Commit::Unconfirmed,
                Err(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Commit::Failed;
            }
            glommio::timer::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Writes every queued session, `FLUSH_BATCH` per script call. Sessions whose write fails
    /// stay queued; that queue is the bounded backlog while Redis is away.
    /// Returns true when every write it attempted succeeded (false when
    /// Redis is down).
    pub async fn flush(&self) -> bool {
        if !self.redis.is_up() {
            // Called every flush interval through an outage, while the queue
            // may hold the whole backlog: the gauges need not be that fresh.
            if self
                .gauged
                .get()
                .is_none_or(|at| at.elapsed() >= GAUGE_PERIOD_DOWN)
            {
                self.update_gauges();
            }
            return false;
        }
        if self.queue.borrow().is_empty() {
            self.update_gauges();
            return true;
        }
        // Writes the replicas cannot confirm stay queued to be written again
        // until they are; while they cannot be, that is not every interval.
        if self.replicas.short()
            && self
                .flushed_at
                .get()
                .is_some_and(|at| at.elapsed() < SHORT_FLUSH_PERIOD)
        {
            return self.flushed_clean.get();
        }
        self.flushed_at.set(Some(Instant::now()));
        let clean = self.flush_queue().await;
        self.flushed_clean.set(clean);
        clean
    }

    /// [`Store::flush`]'s writes: true when each one reached the master.
    async fn flush_queue(&self) -> bool {
        let mut clean = true;
        // Each value is in flight from the moment it is taken: a later
        // batch's write still carries it.
        let mut pending: Vec<(Rc<Session>, u64)> = std::mem::take(&mut *self.queue.borrow_mut())
            .into_iter()
            .map(|s| {
                s.set_queued(false);
                s.sending();
                let value = s.mine();
                (s, value)
            })
            .collect();
        // On a cluster a script's keys share a slot: a batch is one slot's.
        let batches: Vec<&[(Rc<Session>, u64)]> = if self.redis.is_cluster() {
            pending.sort_by_cached_key(|(s, _)| session_slot(&s.id).number());
            pending
                .chunk_by(|a, b| session_slot(&a.0.id) == session_slot(&b.0.id))
                .flat_map(|same| same.chunks(FLUSH_BATCH))
                .collect()
        } else {
            pending.chunks(FLUSH_BATCH).collect()
        };
        for batch in batches {
            // Per session: whether the master has it, and whether the
            // replicas asked for do too.
            let outcomes: Vec<(bool, bool)> = match self.write(batch).await {
                Ok(each) => each.iter().map(|r| (r.is_ok(), r.is_ok())).collect(),
                Err(e) => {
                    // Too few replicas is logged on its own, once.
                    if matches!(e, RedisError::Server(_) | RedisError::Reply(_)) {
                        tracing::warn!(error = %e, "redis refused a flush");
                    }
                    let applied = e.applied() == Applied::Unconfirmed;
                    vec![(applied, false); batch.len()]
                }
            };
            for ((s, _), (applied, confirmed)) in batch.iter().zip(outcomes) {
                // Applied is enough for a resume elsewhere to find it.
                clean &= applied;
                if !confirmed || s.unflushed() > 0 && !s.is_deleted() {
                    self.enqueue(s);
                }
                self.maybe_evict(s);
            }
        }
        self.update_gauges();
        clean
    }

    /// Redis came back empty: every live session's field must be written again.
    pub fn rewrite_all(&self) {
        let live: Vec<Rc<Session>> = self.cache.borrow().iter().cloned().collect();
        for s in live {
            s.forget_flushed();
            self.enqueue(&s);
        }
    }

    /// A DELETE reached this shard: the session stops existing here.
    pub fn forget(&self, id: &Uuid) -> Option<Rc<Session>> {
        let s = self.cache.borrow_mut().remove(id)?;
        s.mark_deleted();
        self.update_gauges();
        Some(s)
    }

    /// The cache's size, all an open changes. The queue's gauges are the
    /// flush's to work out: walking the queue at every open made a connect
    /// storm quadratic while Redis lagged and the queue grew.
    fn gauge_cached(&self) {
        let m = &self.metrics.shards[self.shard];
        m.sessions_cached.set(self.cache.borrow().len() as u64);
    }

    fn update_gauges(&self) {
        let m = &self.metrics.shards[self.shard];
        let (sessions, increments) = self
            .queue
            .borrow()
            .iter()
            .map(|s| s.unflushed())
            .filter(|&n| n > 0)
            .fold((0u64, 0u64), |(s, i), n| (s + 1, i.saturating_add(n)));
        m.redis_unflushed_sessions.set(sessions);
        m.redis_unflushed_increments.set(increments);
        m.sessions_cached.set(self.cache.borrow().len() as u64);
        self.gauged.set(Some(Instant::now()));
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::wire::bulk;

    #[test]
    fn an_open_sessions_ttl_is_renewed_before_half_of_it_is_gone() {
        let s = Duration::from_secs;
        assert_eq!(renew_every(s(3600), s(30)), s(1770));
        // Heartbeats as long as half the TTL: every heartbeat renews.
        assert_eq!(renew_every(s(60), s(30)), Duration::ZERO);
        assert_eq!(renew_every(s(1), s(30)), Duration::ZERO);
        // The wait and one walk's period come to half the TTL.
        for (ttl, beat) in [(3600, 30), (100, 7), (61, 30)] {
            assert_eq!(renew_every(s(ttl), s(beat)) + s(beat), s(ttl) / 2);
        }
    }

    #[test]
    fn fields_sum_and_find_our_own() {
        let v = Value::Array(vec![bulk("w:a:0"), bulk("3"), bulk("w:b:1"), bulk("4")]);
        let stored = |count, mine, rooms: Option<&str>| {
            Some(Stored {
                count,
                mine,
                rooms: rooms.map(String::from),
            })
        };
        assert_eq!(read_fields(&v, "w:b:1"), stored(7, 4, None));
        assert_eq!(read_fields(&v, "w:c:0"), stored(7, 0, None));
        assert_eq!(read_fields(&Value::Array(vec![]), "w:a:0"), None);
        // The rooms field is not a count, however it reads.
        let v = Value::Array(vec![bulk("w:a:0"), bulk("3"), bulk("rooms"), bulk("5")]);
        assert_eq!(read_fields(&v, "w:a:0"), stored(3, 3, Some("5")));
    }

    /// Two fields near the top of u64 overflowed the sum (a panic in
    /// debug builds, a wrap to a small count in release).
    #[test]
    fn fields_from_redis_cannot_overflow_the_sum() {
        let max = u64::MAX.to_string();
        let v = Value::Array(vec![bulk("w:a:0"), bulk(&max), bulk("w:b:1"), bulk(&max)]);
        assert_eq!(
            read_fields(&v, "w:b:1"),
            Some(Stored {
                count: u64::MAX,
                mine: u64::MAX,
                rooms: None
            })
        );
    }

    #[test]
    fn keys_spell_the_documented_names() {
        let id = Uuid::new_v4();
        assert_eq!(session_key(&id), format!("shardcast:{{{id}}}:s"));
        assert_eq!(tombstone_key(&id), format!("shardcast:{{{id}}}:del"));
    }

    #[test]
    fn keys_share_a_cluster_slot() {
        let id = Uuid::new_v4();
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        assert_eq!(tag(&session_key(&id)), tag(&tombstone_key(&id)));
    }
}
