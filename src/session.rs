//! A session as one shard holds it: its id and the parts of its count.
//!
//! A session's count in Redis is the sum of per-writer fields, one per shard
//! incarnation that ever counted for it (`w:<run>:<shard>`), each holding that
//! writer's *absolute* contribution. Writing an absolute value is idempotent:
//! a flush retried after a lost reply, or repeated after a reconnect, cannot
//! count twice, and two shards counting for one session never overwrite each
//! other. `base` is what the other writers had when this shard loaded the
//! session; `mine` is this shard's running contribution.
//!
//! An increment may be taken back (a sync write that failed) only while no
//! write that carried it can have reached Redis: [`Session::undo`] asks
//! that no write is in flight and that none whose outcome is unknown, or
//! that the master took without its replicas, carried the value. Then "not
//! counted" is always true.

use std::cell::Cell;

use uuid::Uuid;

use crate::redis::Applied;
use crate::table::Keyed;

/// One session in a shard's cache.
#[derive(Debug)]
pub struct Session {
    pub id: Uuid,
    base: Cell<u64>,
    mine: Cell<u64>,
    flushed: Cell<u64>,
    /// The highest value a write carried that Redis may hold: applied
    /// without its replicas, or with its reply lost.
    maybe: Cell<u64>,
    /// Writes of this session's value sent and not answered yet.
    flying: Cell<u32>,
    conns: Cell<u32>,
    /// When a write of it last reached Redis (which refreshes its TTL), on
    /// the store's millisecond clock; four bytes, which the struct's
    /// padding had spare. Until its first write the session is queued.
    renewed: Cell<u32>,
    queued: Cell<bool>,
    deleted: Cell<bool>,
}

impl Keyed for Session {
    type Key = Uuid;
    fn key(&self) -> &Uuid {
        &self.id
    }
}

impl Session {
    pub fn new(id: Uuid, base: u64, mine: u64) -> Self {
        Self {
            id,
            base: Cell::new(base),
            mine: Cell::new(mine),
            flushed: Cell::new(mine),
            maybe: Cell::new(mine),
            flying: Cell::new(0),
            conns: Cell::new(0),
            renewed: Cell::new(0),
            queued: Cell::new(false),
            deleted: Cell::new(false),
        }
    }

    /// The count as this shard sees it. Both parts come from Redis, so
    /// their sum saturates rather than overflow.
    pub fn count(&self) -> u64 {
        self.base.get().saturating_add(self.mine.get())
    }

    /// Other writers' counts as Redis has them now (they only grow).
    pub fn raise_base(&self, others: u64) {
        if others > self.base.get() {
            self.base.set(others);
        }
    }

    /// This writer's absolute contribution, the value written to Redis.
    pub fn mine(&self) -> u64 {
        self.mine.get()
    }

    /// Counts one message and returns the new count.
    pub fn increment(&self) -> u64 {
        self.mine.set(self.mine.get().saturating_add(1));
        self.count()
    }

    /// Takes back the last increment (a sync write that Redis did not
    /// apply), if no other increment came after it and no write can have
    /// carried it to Redis. Returns whether it did.
    pub fn undo(&self, count: u64) -> bool {
        let written = self.flushed.get().max(self.maybe.get());
        if self.count() == count && self.flying.get() == 0 && self.mine.get() > written {
            self.mine.set(self.mine.get() - 1);
            true
        } else {
            false
        }
    }

    /// A write of this session's value was taken to be sent: until its
    /// [`Session::sent`], nothing is taken back.
    pub fn sending(&self) {
        self.flying.set(self.flying.get() + 1);
    }

    /// A write carrying `value` was answered: `applied` is what it did
    /// (None: the master and its replicas hold it, see [`Session::acked`]).
    pub fn sent(&self, value: u64, applied: Option<Applied>) {
        self.flying.set(self.flying.get().saturating_sub(1));
        if matches!(applied, Some(Applied::Unconfirmed | Applied::Unknown))
            && value > self.maybe.get()
        {
            self.maybe.set(value);
        }
    }

    /// Redis acknowledged `value` for this writer.
    pub fn acked(&self, value: u64) {
        if value > self.flushed.get() {
            self.flushed.set(value);
        }
    }

    /// Increments Redis does not have yet.
    pub fn unflushed(&self) -> u64 {
        self.mine.get().saturating_sub(self.flushed.get())
    }

    pub fn attach(&self) {
        self.conns.set(self.conns.get() + 1);
    }

    pub fn detach(&self) {
        self.conns.set(self.conns.get().saturating_sub(1));
    }

    pub fn conns(&self) -> u32 {
        self.conns.get()
    }

    /// A write of it sent at `at` (the store's clock) reached Redis.
    pub fn renewed_at(&self, at: u32) {
        self.renewed.set(at);
    }

    /// Whether the last write that reached Redis is `every` or more
    /// milliseconds older than `now`. The clock wraps after 49 days: a
    /// session with an open socket is renewed long before.
    pub fn renewal_due(&self, now: u32, every: u32) -> bool {
        now.wrapping_sub(self.renewed.get()) >= every
    }

    /// Whether the session sits in the shard's flush queue.
    pub fn queued(&self) -> bool {
        self.queued.get()
    }

    pub fn set_queued(&self, q: bool) {
        self.queued.set(q);
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.get()
    }

    pub fn mark_deleted(&self) {
        self.deleted.set(true);
    }

    /// Redis lost everything (restarted empty): our field must be written again.
    pub fn forget_flushed(&self) {
        self.flushed.set(0);
    }
}

/// Reads a client-supplied session id. Only the canonical forms of a v4 UUID
/// count; anything else is treated as no id at all (the client gets a new one).
pub fn parse_id(s: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(s).ok()?;
    (id.get_version_num() == 4 && !id.is_nil()).then_some(id)
}

/// The query parameter that names a session to resume, and its aliases.
pub const ID_PARAMS: [&str; 3] = ["session_id", "session_uuid", "session"];

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached session per open socket: the renewal stamp fitted in the
    /// padding, so the session (with its `Rc` counts, 80 bytes) stays in
    /// the allocator's 80-byte class.
    #[test]
    fn a_session_stays_64_bytes() {
        assert_eq!(std::mem::size_of::<Session>(), 64);
    }

    #[test]
    fn a_renewal_is_due_a_period_after_the_last_write_across_the_wrap() {
        let s = Session::new(Uuid::new_v4(), 0, 0);
        s.renewed_at(1_000);
        assert!(!s.renewal_due(1_000, 500));
        assert!(!s.renewal_due(1_499, 500));
        assert!(s.renewal_due(1_500, 500));
        assert!(s.renewal_due(5_000, 0));
        s.renewed_at(u32::MAX - 100);
        assert!(!s.renewal_due(300, 500), "the clock wrapped 401 ms later");
        assert!(s.renewal_due(400, 500));
    }

    #[test]
    fn counts_add_base_and_mine() {
        let s = Session::new(Uuid::new_v4(), 5, 2);
        assert_eq!(s.count(), 7);
        assert_eq!(s.increment(), 8);
        assert_eq!(s.mine(), 3);
        assert_eq!(s.unflushed(), 1);
        s.acked(3);
        assert_eq!(s.unflushed(), 0);
        s.acked(2); // an old ack never moves it back
        assert_eq!(s.unflushed(), 0);
    }

    /// Redis's fields are read as they are: near the top of u64 the sum
    /// and the increment overflowed (a panic in debug builds).
    #[test]
    fn counts_from_redis_saturate() {
        let s = Session::new(Uuid::new_v4(), u64::MAX - 1, 1);
        assert_eq!(s.count(), u64::MAX);
        assert_eq!(s.increment(), u64::MAX);
        let s = Session::new(Uuid::new_v4(), 0, u64::MAX);
        assert_eq!(s.increment(), u64::MAX);
        assert_eq!(s.mine(), u64::MAX);
    }

    #[test]
    fn undo_only_the_last_unflushed_increment() {
        let s = Session::new(Uuid::new_v4(), 0, 0);
        let c = s.increment();
        s.increment();
        assert!(!s.undo(c), "another increment came after");
        let s = Session::new(Uuid::new_v4(), 0, 0);
        let c = s.increment();
        assert!(s.undo(c));
        assert_eq!(s.count(), 0);
    }

    /// "Not counted" must be true: an increment a write may have carried
    /// to Redis stays, whatever later writes say.
    #[test]
    fn no_undo_of_what_a_write_may_have_carried() {
        let s = Session::new(Uuid::new_v4(), 0, 0);
        let c = s.increment();
        s.sending();
        assert!(!s.undo(c), "a write carrying it is in flight");
        s.sent(c, Some(Applied::No));
        assert!(s.undo(c), "the write was certainly not applied");

        for maybe in [Applied::Unknown, Applied::Unconfirmed] {
            let s = Session::new(Uuid::new_v4(), 0, 0);
            let c = s.increment();
            s.sending();
            s.sent(c, Some(maybe));
            // A later attempt that certainly failed does not change that.
            s.sending();
            s.sent(c, Some(Applied::No));
            assert!(!s.undo(c), "{maybe:?}: Redis may hold it");
            assert_eq!(s.count(), 1);
        }

        // A flush of an older value leaves the newest increment undoable.
        let s = Session::new(Uuid::new_v4(), 0, 0);
        s.increment();
        s.sending();
        s.sent(1, Some(Applied::Unknown));
        let c = s.increment();
        assert!(s.undo(c));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn only_v4_uuids_are_ids() {
        let id = Uuid::new_v4();
        assert_eq!(parse_id(&id.to_string()), Some(id));
        assert_eq!(parse_id("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(parse_id("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), None); // v1
        assert_eq!(parse_id("not-a-uuid"), None);
        assert_eq!(parse_id("../../etc/passwd"), None);
        assert_eq!(parse_id(""), None);
    }
}
