//! Metrics: one block of cells per shard, written only by that shard, summed
//! into Prometheus text exposition (0.0.4) by the `prometheus` crate when
//! `/metrics` is scraped.
//!
//! Each cell is an `AtomicU64` that only its own shard writes, with a plain
//! load + store (no read-modify-write, so no locked instruction and no cache
//! line ping-pong on the message path). A scrape on another shard reads them
//! with relaxed loads: it never takes a lock the hot path takes, and a value
//! it reads is at worst one increment old.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{self, Bucket, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;

const COUNTER: MetricType = MetricType::COUNTER;
const GAUGE: MetricType = MetricType::GAUGE;

/// A counter or gauge written by one shard only.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Why a caller was refused by an access check, as `auth_denied_total{reason}`
/// labels it: the server API's key, a token's rooms and lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// An API call without a key.
    MissingKey,
    /// An API call with a key that is not configured.
    InvalidKey,
    /// An API call on a listener that does not serve the API.
    ApiDisabled,
    /// An upgrade to, or a join of, a room its token does not name.
    RoomNotAllowed,
    /// A live socket whose token's `exp` passed.
    TokenExpired,
    /// A refresh on a live socket that was refused.
    RefreshRefused,
}

impl Denial {
    pub const ALL: [Denial; 6] = [
        Denial::MissingKey,
        Denial::InvalidKey,
        Denial::ApiDisabled,
        Denial::RoomNotAllowed,
        Denial::TokenExpired,
        Denial::RefreshRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Denial::MissingKey => "missing_key",
            Denial::InvalidKey => "invalid_key",
            Denial::ApiDisabled => "api_disabled",
            Denial::RoomNotAllowed => "room_not_allowed",
            Denial::TokenExpired => "token_expired",
            Denial::RefreshRefused => "refresh_refused",
        }
    }
}

/// Kinds of error counted in `ws_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Protocol,
    Binary,
    InvalidUtf8,
    TooBig,
    RateLimited,
    BadRequest,
    HeaderTooLarge,
    HandshakeTimeout,
    OverCapacity,
    SlowReader,
    Io,
    RedisUnavailable,
    Unconfirmed,
    NotFound,
    ForbiddenOrigin,
    Unauthorized,
    IdleTimeout,
    TooManyRooms,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::Protocol,
        ErrorKind::Binary,
        ErrorKind::InvalidUtf8,
        ErrorKind::TooBig,
        ErrorKind::RateLimited,
        ErrorKind::BadRequest,
        ErrorKind::HeaderTooLarge,
        ErrorKind::HandshakeTimeout,
        ErrorKind::OverCapacity,
        ErrorKind::SlowReader,
        ErrorKind::Io,
        ErrorKind::RedisUnavailable,
        ErrorKind::Unconfirmed,
        ErrorKind::NotFound,
        ErrorKind::ForbiddenOrigin,
        ErrorKind::Unauthorized,
        ErrorKind::IdleTimeout,
        ErrorKind::TooManyRooms,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Binary => "binary",
            ErrorKind::InvalidUtf8 => "invalid_utf8",
            ErrorKind::TooBig => "too_big",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::HandshakeTimeout => "handshake_timeout",
            ErrorKind::OverCapacity => "over_capacity",
            ErrorKind::SlowReader => "slow_reader",
            ErrorKind::Io => "io",
            ErrorKind::RedisUnavailable => "redis_unavailable",
            ErrorKind::Unconfirmed => "unconfirmed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ForbiddenOrigin => "forbidden_origin",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::TooManyRooms => "too_many_rooms",
        }
    }
}

/// Close codes counted one by one in `ws_closes_total{code}`; others are "other".
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 4001];

/// Upper bounds of `ws_message_duration_seconds` and
/// `redis_command_duration_seconds`, 10 µs to 1 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// One histogram, written by one shard.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Cell; DURATION_BUCKETS.len() + 1],
    sum_ns: Cell,
}

impl Histogram {
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].inc();
        self.sum_ns.add(ns);
    }
}

/// Everything one shard counts.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections_active: Cell,
    pub connections_total: Cell,
    pub messages_total: Cell,
    pub heartbeats_sent_total: Cell,
    /// Idle Pings sent, and those that went in a heartbeat's send.
    pub idle_pings_total: Cell,
    pub idle_pings_with_heartbeat_total: Cell,
    pub broadcasts_delivered_total: Cell,
    pub sessions_resumed_total: Cell,
    /// Upgrades that asked to recover (a position or `since`), those that could not get all they
    /// missed, and the messages recovered.
    pub recoveries_total: Cell,
    pub recoveries_incomplete_total: Cell,
    pub recovered_messages_total: Cell,
    /// Gaps found on live channels (a broadcast whose predecessor never
    /// came, a probe that found the stream ahead), the broadcasts read back
    /// into them, and the gaps history could not fill.
    pub history_gaps_total: Cell,
    pub history_gap_recovered_total: Cell,
    pub history_gaps_unrecoverable_total: Cell,
    pub history_rewound_total: Cell,
    pub presence_writes_total: Cell,
    pub presence_write_errors_total: Cell,
    pub errors: [Cell; ErrorKind::ALL.len()],
    pub denials: [Cell; Denial::ALL.len()],
    pub closes: [Cell; CLOSE_CODES.len() + 1],
    pub message_duration: Histogram,
    /// From a broadcast's append to history to its frames' send here.
    pub broadcast_lag: Histogram,
    pub redis_commands_total: Cell,
    pub redis_errors_total: Cell,
    /// Commands that found the shard's Redis queue full and waited.
    pub redis_queue_waits_total: Cell,
    /// Cluster redirects followed (or refused), by [`REDIRECTS`] kind.
    pub redis_redirects: [Cell; REDIRECTS.len()],
    /// Sessions whose count Redis does not have yet.
    pub redis_unflushed_sessions: Cell,
    /// Increments Redis does not have yet (summed over those sessions).
    pub redis_unflushed_increments: Cell,
    pub sessions_cached: Cell,
    /// How late the shard's event loop last ran a 100 ms timer, ns.
    pub loop_lag_ns: Cell,
    /// Round trip of each Redis request, queue to reply.
    pub redis_duration: Histogram,
    /// Rooms the shard holds a subscription for.
    pub rooms_active: Cell,
    /// 1 while the shard's subscription connection is up.
    pub pubsub_up: Cell,
    /// Messages received on the subscription connection.
    pub pubsub_messages_total: Cell,
}

impl ShardMetrics {
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }
    pub fn denied(&self, why: Denial) {
        self.denials[why as usize].inc();
    }
    #[inline]
    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[i].inc();
    }
}

/// The kinds of cluster redirect, as `redis_redirects_total` labels them.
/// `refused`: one that could not be followed (a slot out of range, no
/// address), a protocol error that resets the link it came on.
pub const REDIRECTS: [&str; 4] = ["moved", "ask", "tryagain", "refused"];
/// The index of `refused` in [`REDIRECTS`].
pub const REFUSED: usize = 3;

/// Process-wide figures, written by the control thread.
#[derive(Debug, Default)]
pub struct AppMetrics {
    pub startup_micros: Cell,
    pub shutdown_micros: Cell,
    /// Connections the process accepts at most (all shards).
    pub connections_limit: Cell,
    /// When the drain began, µs after the metrics were made, plus one;
    /// 0 while not draining.
    pub drain_began: Cell,
    /// Refusals on the admin listener (written by its thread only).
    pub admin_denials: [Cell; Denial::ALL.len()],
}

/// All shards' metrics plus the process's own.
pub struct Metrics {
    pub shards: Box<[ShardMetrics]>,
    pub app: AppMetrics,
    pub version: &'static str,
    pub color: String,
    /// The socket plane's I/O (`uring`, `epoll`).
    pub io: &'static str,
    born: Instant,
    process: Process,
}

impl Metrics {
    pub fn new(shards: usize, color: &str) -> Self {
        Self {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            app: AppMetrics::default(),
            version: env!("CARGO_PKG_VERSION"),
            color: color.to_string(),
            io: crate::config::Io::Auto.name(),
            born: Instant::now(),
            process: Process(ProcessCollector::for_self()),
        }
    }

    /// The socket plane's I/O, as the server resolved it.
    pub fn with_io(mut self, io: crate::config::Io) -> Self {
        self.io = io.name();
        self
    }

    /// Marks the start of the drain (`app_draining`, `app_drain_seconds`).
    pub fn drain_began(&self) {
        if self.app.drain_began.get() == 0 {
            self.app
                .drain_began
                .set(self.born.elapsed().as_micros() as u64 + 1);
        }
    }

    /// Seconds since the drain began; None while not draining.
    pub fn drain_seconds(&self) -> Option<f64> {
        match self.app.drain_began.get() {
            0 => None,
            began => {
                let now = self.born.elapsed().as_micros() as u64 + 1;
                Some(now.saturating_sub(began) as f64 / 1e6)
            }
        }
    }

    /// The text exposition (0.0.4) of the whole process, drawn by the
    /// `prometheus` crate's encoder; `redis_up` comes from readiness.
    pub fn render(&self, redis_up: bool) -> String {
        let mut families = Scrape {
            metrics: self,
            redis_up,
        }
        .collect();
        families.extend(self.process.collect());
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            // Only a malformed family fails, which the unit tests rule out.
            tracing::error!(error = %e, "metrics not rendered");
        }
        out
    }
}

/// Summed over shards, one series each: name, type, help, the cell.
type Single = (
    &'static str,
    MetricType,
    &'static str,
    fn(&ShardMetrics) -> u64,
);

const SUMMED: [Single; 25] = [
    (
        "ws_connections_active",
        GAUGE,
        "Open WebSocket connections.",
        |s| s.connections_active.get(),
    ),
    (
        "ws_connections_total",
        COUNTER,
        "WebSocket connections accepted.",
        |s| s.connections_total.get(),
    ),
    (
        "ws_messages_total",
        COUNTER,
        "Client text messages counted.",
        |s| s.messages_total.get(),
    ),
    (
        "ws_heartbeats_sent_total",
        COUNTER,
        "Heartbeat frames sent.",
        |s| s.heartbeats_sent_total.get(),
    ),
    (
        "ws_idle_pings_total",
        COUNTER,
        "Pings sent to sockets silent for about half of idle_timeout.",
        |s| s.idle_pings_total.get(),
    ),
    (
        "ws_idle_pings_with_heartbeat_total",
        COUNTER,
        "Idle Pings that went out in the same send as a heartbeat.",
        |s| s.idle_pings_with_heartbeat_total.get(),
    ),
    (
        "ws_broadcasts_delivered_total",
        COUNTER,
        "Broadcast frames delivered to sockets.",
        |s| s.broadcasts_delivered_total.get(),
    ),
    (
        "ws_rooms_active",
        GAUGE,
        "Rooms with a subscription, summed over shards (a room on two shards counts twice).",
        |s| s.rooms_active.get(),
    ),
    (
        "pubsub_messages_total",
        COUNTER,
        "Messages received from Redis pub/sub (broadcasts, room broadcasts, kicks).",
        |s| s.pubsub_messages_total.get(),
    ),
    (
        "ws_sessions_resumed_total",
        COUNTER,
        "Sessions resumed by id.",
        |s| s.sessions_resumed_total.get(),
    ),
    (
        "ws_recoveries_total",
        COUNTER,
        "Upgrades that asked for the broadcasts missed since a position (or a since offset).",
        |s| s.recoveries_total.get(),
    ),
    (
        "ws_recoveries_incomplete_total",
        COUNTER,
        "Recoveries told recovered false: history no longer held all that was missed.",
        |s| s.recoveries_incomplete_total.get(),
    ),
    (
        "ws_recovered_messages_total",
        COUNTER,
        "Broadcasts sent to reconnecting sockets from history.",
        |s| s.recovered_messages_total.get(),
    ),
    (
        "ws_history_gaps_total",
        COUNTER,
        "Gaps found on live channels: a broadcast whose predecessor never came, or a probe that found the stream ahead.",
        |s| s.history_gaps_total.get(),
    ),
    (
        "ws_history_gap_recovered_total",
        COUNTER,
        "Broadcasts read back from history into gaps on live channels.",
        |s| s.history_gap_recovered_total.get(),
    ),
    (
        "ws_history_gaps_unrecoverable_total",
        COUNTER,
        "Times a live channel's sockets were told broadcasts are gone (unrecovered frame).",
        |s| s.history_gaps_unrecoverable_total.get(),
    ),
    (
        "ws_history_rewound_total",
        COUNTER,
        "Streams found to lack broadcasts this shard delivered (Redis lost its newest writes), whose life was ended.",
        |s| s.history_rewound_total.get(),
    ),
    (
        "ws_presence_writes_total",
        COUNTER,
        "Presence batches written: one script call per room per batch, carrying its joins, leaves and renewals.",
        |s| s.presence_writes_total.get(),
    ),
    (
        "ws_presence_write_errors_total",
        COUNTER,
        "Presence batches Redis did not take; their renewals come again with the next heartbeat, their other entries expire.",
        |s| s.presence_write_errors_total.get(),
    ),
    (
        "redis_commands_total",
        COUNTER,
        "Redis commands sent.",
        |s| s.redis_commands_total.get(),
    ),
    (
        "redis_errors_total",
        COUNTER,
        "Redis connection and command errors.",
        |s| s.redis_errors_total.get(),
    ),
    (
        "redis_queue_waits_total",
        COUNTER,
        "Redis commands that found the shard's queue full and waited for room.",
        |s| s.redis_queue_waits_total.get(),
    ),
    (
        "redis_unflushed_sessions",
        GAUGE,
        "Sessions whose latest count Redis does not have yet.",
        |s| s.redis_unflushed_sessions.get(),
    ),
    (
        "redis_unflushed_increments",
        GAUGE,
        "Counted messages Redis does not have yet.",
        |s| s.redis_unflushed_increments.get(),
    ),
    (
        "ws_sessions_cached",
        GAUGE,
        "Sessions held in shard caches.",
        |s| s.sessions_cached.get(),
    ),
];

/// Process series whose HELP predates the crate's collector; the texts stay
/// as dashboards and the monitoring tests know them.
const PROCESS_HELP: [(&str, &str); 5] = [
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
    ),
    (
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds.",
    ),
    ("process_open_fds", "Open file descriptors."),
    ("process_max_fds", "The open file descriptor limit."),
    (
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
    ),
];

/// One scrape of the shards' cells, as a `prometheus` collector: the cells
/// stay plain per-shard atomics on the hot path, and the crate does the
/// families, escaping and encoding.
struct Scrape<'a> {
    metrics: &'a Metrics,
    redis_up: bool,
}

impl Scrape<'_> {
    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.metrics.shards.iter().map(f).sum()
    }

    /// A family summed over shards, per label value: `pick` reads the
    /// cell for the `i`th value.
    fn labelled(
        &self,
        name: &str,
        kind: MetricType,
        help: &str,
        label: &str,
        values: impl Iterator<Item = String>,
        pick: impl Fn(&ShardMetrics, usize) -> u64,
    ) -> MetricFamily {
        let series = values
            .enumerate()
            .map(|(i, v)| sample(kind, &[(label, v)], self.sum(|s| pick(s, i)) as f64))
            .collect();
        family(name, kind, help, series)
    }

    fn per_shard(
        &self,
        name: &str,
        kind: MetricType,
        help: &str,
        read: impl Fn(&ShardMetrics) -> f64,
    ) -> MetricFamily {
        let series = self
            .metrics
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| sample(kind, &[("shard", i.to_string())], read(s)))
            .collect();
        family(name, kind, help, series)
    }

    /// A histogram summed over shards, cumulative as the format wants.
    fn histogram(
        &self,
        name: &str,
        help: &str,
        pick: impl Fn(&ShardMetrics) -> &Histogram,
    ) -> MetricFamily {
        let mut cumulative = 0u64;
        let buckets = DURATION_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, le)| {
                cumulative += self.sum(|s| pick(s).buckets[i].get());
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        cumulative += self.sum(|s| pick(s).buckets[DURATION_BUCKETS.len()].get());
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.sum(|s| pick(s).sum_ns.get()) as f64 / 1e9);
        let mut m = Metric::default();
        m.set_histogram(h);
        family(name, MetricType::HISTOGRAM, help, vec![m])
    }

    /// The families of `SUMMED`, one series each.
    fn summed(&self) -> impl Iterator<Item = MetricFamily> + '_ {
        SUMMED
            .iter()
            .map(|(name, kind, help, read)| single(name, *kind, help, self.sum(read) as f64))
    }

    /// Whether the shards reach Redis, and the cluster redirects they followed.
    fn links(&self) -> [MetricFamily; 3] {
        let pubsub_up = self.metrics.shards.iter().all(|s| s.pubsub_up.get() == 1);
        [
            single(
                "pubsub_up",
                GAUGE,
                "1 when every shard's pub/sub connection is up.",
                pubsub_up as u64 as f64,
            ),
            single(
                "redis_up",
                GAUGE,
                "1 when every shard is connected to Redis.",
                self.redis_up as u64 as f64,
            ),
            self.labelled(
                "redis_redirects_total",
                COUNTER,
                "Redis Cluster redirects followed, by kind; refused: one that could not be followed (the link is reset).",
                "kind",
                REDIRECTS.iter().map(|k| k.to_string()),
                |s, i| s.redis_redirects[i].get(),
            ),
        ]
    }

    /// Callers refused, errors, and the codes sockets closed with.
    fn refusals(&self) -> [MetricFamily; 3] {
        // The admin listener refuses callers too, outside any shard.
        let admin = &self.metrics.app.admin_denials;
        [
            family(
                "auth_denied_total",
                COUNTER,
                "Callers refused by an access check (API key, token rooms, token lifetime), by reason.",
                Denial::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let n = self.sum(|s| s.denials[i].get()) + admin[i].get();
                        sample(COUNTER, &[("reason", d.as_str().to_string())], n as f64)
                    })
                    .collect(),
            ),
            self.labelled(
                "ws_errors_total",
                COUNTER,
                "Errors by kind.",
                "kind",
                ErrorKind::ALL.iter().map(|k| k.as_str().to_string()),
                |s, i| s.errors[i].get(),
            ),
            self.labelled(
                "ws_closes_total",
                COUNTER,
                "Closes by WebSocket close code.",
                "code",
                CLOSE_CODES
                    .iter()
                    .map(|c| c.to_string())
                    .chain(std::iter::once("other".to_string())),
                |s, i| s.closes[i].get(),
            ),
        ]
    }

    /// How the load spreads over the shards, and how late each one runs.
    fn per_shard_load(&self) -> [MetricFamily; 3] {
        [
            self.per_shard(
                "ws_shard_connections_active",
                GAUGE,
                "Open connections per shard.",
                |s| s.connections_active.get() as f64,
            ),
            self.per_shard(
                "ws_shard_messages_total",
                COUNTER,
                "Client text messages counted, per shard.",
                |s| s.messages_total.get() as f64,
            ),
            self.per_shard(
                "ws_shard_loop_lag_seconds",
                GAUGE,
                "How late the shard's event loop last ran a 100 ms timer.",
                |s| s.loop_lag_ns.get() as f64 / 1e9,
            ),
        ]
    }

    fn durations(&self) -> [MetricFamily; 3] {
        [
            self.histogram(
                "ws_message_duration_seconds",
                "Time from a message's arrival to its reply being queued.",
                |s| &s.message_duration,
            ),
            self.histogram(
                "ws_broadcast_lag_seconds",
                "Time from a broadcast's append to history (Redis's clock) to its frames' send (this node's clock).",
                |s| &s.broadcast_lag,
            ),
            self.histogram(
                "redis_command_duration_seconds",
                "Round trip of a Redis request, from its queue to its reply.",
                |s| &s.redis_duration,
            ),
        ]
    }

    /// The process as a whole: its limit, its drain, how long it took to
    /// start and to stop, and its build.
    fn lifecycle(&self) -> [MetricFamily; 6] {
        let m = self.metrics;
        let drain = m.drain_seconds();
        let secs = |c: &Cell| c.get() as f64 / 1e6;
        [
            single(
                "ws_connections_limit",
                GAUGE,
                "Connections the process accepts at most (max_connections per shard, all shards).",
                m.app.connections_limit.get() as f64,
            ),
            single(
                "app_draining",
                GAUGE,
                "1 from the start of a drain until the process exits.",
                drain.is_some() as u64 as f64,
            ),
            single(
                "app_drain_seconds",
                GAUGE,
                "Seconds since the drain began; 0 while not draining.",
                drain.unwrap_or(0.0),
            ),
            single(
                "app_startup_seconds",
                GAUGE,
                "Time from process start to all shards serving.",
                secs(&m.app.startup_micros),
            ),
            single(
                "app_shutdown_seconds",
                GAUGE,
                "Time the last drain took.",
                secs(&m.app.shutdown_micros),
            ),
            family(
                "app_info",
                GAUGE,
                "Build and deployment.",
                vec![sample(
                    GAUGE,
                    &[
                        ("version", m.version.to_string()),
                        ("color", m.color.clone()),
                        ("io", m.io.to_string()),
                    ],
                    1.0,
                )],
            ),
        ]
    }
}

impl Collector for Scrape<'_> {
    /// None: an unchecked collector, as the Go client calls it. Its
    /// families are made per scrape and never registered; the unit tests
    /// hold their names, types and HELP lines.
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out: Vec<MetricFamily> = self.summed().collect();
        out.extend(self.links());
        out.extend(self.refusals());
        out.extend(self.per_shard_load());
        out.extend(self.durations());
        out.extend(self.lifecycle());
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .field("color", &self.color)
            .finish_non_exhaustive()
    }
}

/// This process as the kernel sees it: the crate's process collector, with
/// CPU time to the clock tick (the crate's counts whole seconds) and the
/// HELP texts of `PROCESS_HELP`.
struct Process(ProcessCollector);

impl Process {
    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = self.0.collect();
        if let Some(cpu) = cpu_seconds() {
            for f in out
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
            {
                f.set_metric(vec![sample(COUNTER, &[], cpu)]);
            }
        }
        for f in &mut out {
            if let Some((_, help)) = PROCESS_HELP.iter().find(|(n, _)| *n == f.name()) {
                f.set_help(help.to_string());
            }
        }
        out
    }
}

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

fn family(name: &str, kind: MetricType, help: &str, series: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(series);
    f
}

/// A family of one series with no labels.
fn single(name: &str, kind: MetricType, help: &str, v: f64) -> MetricFamily {
    family(name, kind, help, vec![sample(kind, &[], v)])
}

fn sample(kind: MetricType, labels: &[(&str, String)], v: f64) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.clone());
                l
            })
            .collect(),
    );
    if kind == COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(v);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing"))
            .parse()
            .unwrap()
    }

    #[test]
    fn scrape_sums_shards() {
        let m = Metrics::new(2, "blue");
        m.shards[0].messages_total.add(3);
        m.shards[1].messages_total.add(4);
        m.shards[1].close(1001);
        m.shards[0].close(4000);
        m.shards[0].error(ErrorKind::Binary);
        let t = m.render(true);
        assert_eq!(value(&t, "ws_messages_total"), 7.0);
        assert_eq!(value(&t, "ws_closes_total{code=\"1001\"}"), 1.0);
        assert_eq!(value(&t, "ws_closes_total{code=\"other\"}"), 1.0);
        assert_eq!(value(&t, "ws_errors_total{kind=\"binary\"}"), 1.0);
        assert_eq!(
            value(&t, "app_info{version=\"0.1.0\",color=\"blue\",io=\"auto\"}"),
            1.0
        );
        assert_eq!(value(&t, "ws_shard_messages_total{shard=\"0\"}"), 3.0);
        assert_eq!(value(&t, "ws_shard_messages_total{shard=\"1\"}"), 4.0);
        assert_eq!(value(&t, "app_draining"), 0.0);
        assert_eq!(value(&t, "app_drain_seconds"), 0.0);
        assert!(value(&t, "process_resident_memory_bytes") > 0.0);
        assert!(value(&t, "process_max_fds") > 0.0);
    }

    #[test]
    fn drain_time_counts_from_the_drain() {
        let m = Metrics::new(1, "green");
        assert_eq!(m.drain_seconds(), None);
        m.drain_began();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let first = m.drain_seconds().unwrap();
        assert!(first >= 0.02, "{first}");
        m.drain_began(); // a second signal does not restart the clock
        assert!(m.drain_seconds().unwrap() >= first);
        let t = m.render(true);
        assert_eq!(value(&t, "app_draining"), 1.0);
        assert!(value(&t, "app_drain_seconds") >= 0.02);
    }

    #[test]
    fn every_series_has_help_and_type() {
        let t = Metrics::new(2, "blue").render(true);
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            }
        }
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(*b)))
                .unwrap_or(name);
            assert!(declared.contains(base), "{name} has no # TYPE");
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new(1, "blue");
        m.shards[0].message_duration.observe_ns(5_000); // 5 µs
        m.shards[0].message_duration.observe_ns(2_000_000); // 2 ms
        m.shards[0].message_duration.observe_ns(5_000_000_000); // 5 s
        let t = m.render(true);
        assert_eq!(
            value(&t, "ws_message_duration_seconds_bucket{le=\"0.00001\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "ws_message_duration_seconds_bucket{le=\"0.0025\"}"),
            2.0
        );
        assert_eq!(
            value(&t, "ws_message_duration_seconds_bucket{le=\"1\"}"),
            2.0
        );
        assert_eq!(
            value(&t, "ws_message_duration_seconds_bucket{le=\"+Inf\"}"),
            3.0
        );
        assert_eq!(value(&t, "ws_message_duration_seconds_count"), 3.0);
    }
}
