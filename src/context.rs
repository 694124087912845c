//! A shard's context: the state that its connections, routes and sockets are
//! handed (settings, metric cells, session store, rooms, history, the drain, limits),
//! and nothing that runs. The shard's loop (`shard`) builds it and owns the
//! tasks; everything below the loop sees only this.
//!
//! Nothing here is shared with another shard except the process's
//! read-mostly [`Shared`] block (defined here, filled by the process) and
//! this shard's own metric cells, where its Redis client's reports land
//! ([`Shared::redis_observer`]).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apikey::ApiKeys;
use crate::config::Config;
use crate::drain::Drain;
use crate::history::History;
use crate::loggate::LogGate;
use crate::metrics::{ErrorKind, Metrics, ShardMetrics, REFUSED};
use crate::presence::Presence;
use crate::pubsub::Subscriber;
use crate::readiness::Readiness;
use crate::redis::{Observer, RedirectKind, Redis, RedisTarget};
use crate::store::Store;

/// What every shard may read: set at start; only `readiness` changes after.
#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Where every shard's Redis client finds Redis, from the settings.
    pub redis_target: RedisTarget,
    /// The TLS client every shard's Redis links share.
    pub redis_tls: crate::redis::stream::Tls,
    /// Random per process start; names this process's writer fields in Redis.
    pub run_id: String,
    /// The server API's keys, from `cfg.api_key`.
    pub api_keys: ApiKeys,
    pub started: Instant,
}

impl Shared {
    /// What shard `id`'s Redis client reports to: the shard's metric cells
    /// and its readiness.
    pub fn redis_observer(&self, id: usize) -> Rc<dyn Observer> {
        Rc::new(RedisEvents {
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            shard: id,
        })
    }
}

/// A shard's state, shared by its tasks through `Rc`.
pub struct Context {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub store: Store,
    pub pubsub: Rc<Subscriber>,
    pub history: History,
    pub presence: Presence,
    /// TCP connections open on this shard, against `max_connections`.
    open: Cell<usize>,
    next_conn: Cell<u64>,
    drain: Drain,
    /// One log gate per error kind.
    log_gates: [LogGate; ErrorKind::ALL.len()],
}

impl Context {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        store: Store,
        pubsub: Rc<Subscriber>,
        (history, presence): (History, Presence),
    ) -> Self {
        Self {
            id,
            shared,
            store,
            pubsub,
            history,
            presence,
            open: Cell::new(0),
            next_conn: Cell::new(0),
            drain: Drain::default(),
            log_gates: Default::default(),
        }
    }

    /// Whether a limit that acted may write its log line now: at most one
    /// line per kind per second per shard, so a flood cannot flood the logs.
    /// Returns the events left unlogged since the last line.
    pub fn log_gate(&self, kind: ErrorKind) -> Option<u64> {
        self.log_gates[kind as usize].pass()
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    pub fn redis(&self) -> &Redis {
        self.store.redis()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Marks the shard draining; sockets must be gone by `deadline`.
    pub fn begin_drain(&self, deadline: Instant) {
        self.drain.begin(deadline);
    }

    /// When a draining socket must be gone.
    pub fn drain_deadline(&self) -> Instant {
        self.drain
            .deadline()
            .unwrap_or_else(|| Instant::now() + self.cfg().shutdown_grace)
    }

    /// Resolves when no connection of this shard is left in any phase
    /// (request, upgrade, open socket, close): each holds a [`Slot`].
    pub async fn connections_gone(&self) {
        self.drain.until(|| self.open.get() == 0).await
    }

    /// A process-unique connection id, for logs and the socket table.
    pub fn next_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        (self.id as u64) << 48 | n
    }

    /// A random `retry_after_ms`, so drained clients do not all come back at once.
    pub fn retry_after_ms(&self) -> u64 {
        let max = self.cfg().drain_retry_after.as_millis().max(1) as u64;
        rand::random_range(max / 10..=max)
    }

    /// Takes a connection slot, or None when the shard is at
    /// `max_connections`. The slot is given back when it is dropped, however
    /// the connection ends.
    pub fn try_open(self: &Rc<Self>) -> Option<Slot> {
        if self.open.get() >= self.cfg().max_connections {
            return None;
        }
        self.open.set(self.open.get() + 1);
        Some(Slot(self.clone()))
    }
}

/// One connection's place under `max_connections`.
pub struct Slot(Rc<Context>);

impl Slot {
    pub fn ctx(&self) -> &Rc<Context> {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.0.open.get().saturating_sub(1);
        self.0.open.set(left);
        if left == 0 {
            self.0.drain.wake();
        }
    }
}

/// One shard's Redis events, as its metrics and readiness take them.
struct RedisEvents {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shard: usize,
}

impl RedisEvents {
    fn cells(&self) -> &ShardMetrics {
        &self.metrics.shards[self.shard]
    }
}

impl Observer for RedisEvents {
    fn sent(&self, commands: usize) {
        self.cells().redis_commands_total.add(commands as u64);
    }

    fn queue_full(&self) {
        self.cells().redis_queue_waits_total.inc();
    }

    fn answered(&self, elapsed: Duration, ok: bool) {
        let m = self.cells();
        m.redis_duration.observe_ns(elapsed.as_nanos() as u64);
        if !ok {
            m.redis_errors_total.inc();
        }
    }

    fn error(&self) {
        self.cells().redis_errors_total.inc();
    }

    fn redirect(&self, kind: RedirectKind) {
        // In the order of `metrics::REDIRECTS`, the label's.
        let i = match kind {
            RedirectKind::Moved => 0,
            RedirectKind::Ask => 1,
            RedirectKind::TryAgain => 2,
            RedirectKind::Refused => REFUSED,
        };
        self.cells().redis_redirects[i].inc();
    }

    fn up(&self, up: bool) {
        self.readiness.shard(self.shard).set_redis_up(up);
    }

    fn interrupted(&self) {
        // What is counted from now on waits for a replay.
        self.readiness.shard(self.shard).set_redis_synced(false);
    }
}
