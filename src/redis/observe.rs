//! What a shard's Redis client tells its owner as it works: counts of
//! requests, errors and redirects, whether Redis answers, and when Redis
//! may have missed what it was told. The client only reports; what an
//! event means (a metric, the shard's readiness) is the owner's business.

use std::time::Duration;

/// The kinds of cluster redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    /// `MOVED`: the slot map was stale.
    Moved,
    /// `ASK`: the slot is half-way through a migration.
    Ask,
    /// `TRYAGAIN`: a multi-key request met a migration.
    TryAgain,
    /// One that could not be followed (a slot out of range, no address): a
    /// protocol error that resets the link it came on.
    Refused,
}

/// Told of one shard's Redis events, on that shard. `sent` and `answered`
/// come once per request, so an implementation should only count.
pub trait Observer {
    /// A request of `commands` commands went into a link's queue.
    fn sent(&self, commands: usize);
    /// A request found its link's queue full and waited for room.
    fn queue_full(&self);
    /// A request that was queued came back `elapsed` later; `ok` is false
    /// when it failed.
    fn answered(&self, elapsed: Duration, ok: bool);
    /// A request could not be queued, or a connection broke or could not
    /// be made.
    fn error(&self);
    /// A cluster redirect was followed, or refused.
    fn redirect(&self, kind: RedirectKind);
    /// Whether Redis answers now: the server, or every slot's master of a
    /// cluster. Told when that changes.
    fn up(&self, up: bool);
    /// Redis was, or may have been, out of reach (a connection broke or
    /// could not be made, a cluster's slot map could not be read): what
    /// is written from now on may need writing again once it is back.
    fn interrupted(&self);
}
