//! Metrics: one block of cells per shard, written only by that shard, summed
//! into Prometheus text exposition (0.0.4) when `/metrics` is scraped.
//!
//! Each cell is an `AtomicU64` that only its own shard writes, with a plain
//! load + store (no read-modify-write, so no locked instruction and no cache
//! line ping-pong on the message path). A scrape on another shard reads them
//! with relaxed loads: it never takes a lock the hot path takes, and a value
//! it reads is at worst one increment old.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

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
    NotFound,
    ForbiddenOrigin,
    Unauthorized,
    IdleTimeout,
    TooManyRooms,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
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
            ErrorKind::NotFound => "not_found",
            ErrorKind::ForbiddenOrigin => "forbidden_origin",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::TooManyRooms => "too_many_rooms",
        }
    }
}

/// Close codes counted one by one in `ws_closes_total{code}`; others are "other".
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011];

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
    pub broadcasts_delivered_total: Cell,
    pub sessions_resumed_total: Cell,
    /// Upgrades that asked for `since`, those that could not get all they
    /// missed, and the messages recovered.
    pub recoveries_total: Cell,
    pub recoveries_incomplete_total: Cell,
    pub recovered_messages_total: Cell,
    pub errors: [Cell; ErrorKind::ALL.len()],
    pub closes: [Cell; CLOSE_CODES.len() + 1],
    pub message_duration: Histogram,
    pub redis_commands_total: Cell,
    pub redis_errors_total: Cell,
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
    #[inline]
    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[i].inc();
    }
}

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
}

/// All shards' metrics plus the process's own.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Box<[ShardMetrics]>,
    pub app: AppMetrics,
    pub version: &'static str,
    pub color: String,
    born: Instant,
}

impl Metrics {
    pub fn new(shards: usize, color: &str) -> Self {
        Self {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            app: AppMetrics::default(),
            version: env!("CARGO_PKG_VERSION"),
            color: color.to_string(),
            born: Instant::now(),
        }
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

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Prometheus text exposition of the whole process.
    /// The text exposition; `redis_up` comes from the process's readiness.
    pub fn render(&self, redis_up: bool) -> String {
        let mut o = String::with_capacity(8 << 10);
        let single = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        single(
            &mut o,
            "ws_connections_active",
            "gauge",
            "Open WebSocket connections.",
            self.sum(|s| s.connections_active.get()),
        );
        single(
            &mut o,
            "ws_connections_total",
            "counter",
            "WebSocket connections accepted.",
            self.sum(|s| s.connections_total.get()),
        );
        single(
            &mut o,
            "ws_messages_total",
            "counter",
            "Client text messages counted.",
            self.sum(|s| s.messages_total.get()),
        );
        single(
            &mut o,
            "ws_heartbeats_sent_total",
            "counter",
            "Heartbeat frames sent.",
            self.sum(|s| s.heartbeats_sent_total.get()),
        );
        single(
            &mut o,
            "ws_broadcasts_delivered_total",
            "counter",
            "Broadcast frames delivered to sockets.",
            self.sum(|s| s.broadcasts_delivered_total.get()),
        );
        single(
            &mut o,
            "ws_rooms_active",
            "gauge",
            "Rooms with a subscription, summed over shards (a room on two shards counts twice).",
            self.sum(|s| s.rooms_active.get()),
        );
        single(
            &mut o,
            "pubsub_messages_total",
            "counter",
            "Messages received from Redis pub/sub (broadcasts, room broadcasts, kicks).",
            self.sum(|s| s.pubsub_messages_total.get()),
        );
        single(
            &mut o,
            "pubsub_up",
            "gauge",
            "1 when every shard's pub/sub connection is up.",
            self.shards.iter().all(|s| s.pubsub_up.get() == 1) as u64,
        );
        single(
            &mut o,
            "ws_sessions_resumed_total",
            "counter",
            "Sessions resumed by id.",
            self.sum(|s| s.sessions_resumed_total.get()),
        );
        single(
            &mut o,
            "ws_recoveries_total",
            "counter",
            "Upgrades that asked for the broadcasts missed since an offset.",
            self.sum(|s| s.recoveries_total.get()),
        );
        single(
            &mut o,
            "ws_recoveries_incomplete_total",
            "counter",
            "Recoveries told recovered false: history no longer held all that was missed.",
            self.sum(|s| s.recoveries_incomplete_total.get()),
        );
        single(
            &mut o,
            "ws_recovered_messages_total",
            "counter",
            "Broadcasts sent to reconnecting sockets from history.",
            self.sum(|s| s.recovered_messages_total.get()),
        );
        single(
            &mut o,
            "redis_commands_total",
            "counter",
            "Redis commands sent.",
            self.sum(|s| s.redis_commands_total.get()),
        );
        single(
            &mut o,
            "redis_errors_total",
            "counter",
            "Redis connection and command errors.",
            self.sum(|s| s.redis_errors_total.get()),
        );
        // Up only when every shard's command connection is up.
        let up = redis_up as u64;
        single(
            &mut o,
            "redis_up",
            "gauge",
            "1 when every shard is connected to Redis.",
            up,
        );
        single(
            &mut o,
            "redis_unflushed_sessions",
            "gauge",
            "Sessions whose latest count Redis does not have yet.",
            self.sum(|s| s.redis_unflushed_sessions.get()),
        );
        single(
            &mut o,
            "redis_unflushed_increments",
            "gauge",
            "Counted messages Redis does not have yet.",
            self.sum(|s| s.redis_unflushed_increments.get()),
        );
        single(
            &mut o,
            "ws_sessions_cached",
            "gauge",
            "Sessions held in shard caches.",
            self.sum(|s| s.sessions_cached.get()),
        );

        let _ = writeln!(
            o,
            "# HELP ws_errors_total Errors by kind.\n# TYPE ws_errors_total counter"
        );
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "ws_errors_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.sum(|s| s.errors[i].get())
            );
        }
        let _ = writeln!(o, "# HELP ws_closes_total Closes by WebSocket close code.\n# TYPE ws_closes_total counter");
        for i in 0..=CLOSE_CODES.len() {
            let label = CLOSE_CODES
                .get(i)
                .map_or_else(|| "other".to_string(), |c| c.to_string());
            let _ = writeln!(
                o,
                "ws_closes_total{{code=\"{label}\"}} {}",
                self.sum(|s| s.closes[i].get())
            );
        }
        let _ = writeln!(o, "# HELP ws_shard_connections_active Open connections per shard.\n# TYPE ws_shard_connections_active gauge");
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "ws_shard_connections_active{{shard=\"{i}\"}} {}",
                s.connections_active.get()
            );
        }

        self.histogram(
            &mut o,
            "ws_message_duration_seconds",
            "Time from a message's arrival to its reply being queued.",
            |s| &s.message_duration,
        );
        self.histogram(
            &mut o,
            "redis_command_duration_seconds",
            "Round trip of a Redis request, from its queue to its reply.",
            |s| &s.redis_duration,
        );
        let _ = writeln!(o, "# HELP ws_shard_messages_total Client text messages counted, per shard.\n# TYPE ws_shard_messages_total counter");
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "ws_shard_messages_total{{shard=\"{i}\"}} {}",
                s.messages_total.get()
            );
        }
        let _ = writeln!(o, "# HELP ws_shard_loop_lag_seconds How late the shard's event loop last ran a 100 ms timer.\n# TYPE ws_shard_loop_lag_seconds gauge");
        for (i, s) in self.shards.iter().enumerate() {
            let _ = writeln!(
                o,
                "ws_shard_loop_lag_seconds{{shard=\"{i}\"}} {}",
                s.loop_lag_ns.get() as f64 / 1e9
            );
        }
        single(
            &mut o,
            "ws_connections_limit",
            "gauge",
            "Connections the process accepts at most (max_connections per shard, all shards).",
            self.app.connections_limit.get(),
        );
        let drain = self.drain_seconds();
        single(
            &mut o,
            "app_draining",
            "gauge",
            "1 from the start of a drain until the process exits.",
            drain.is_some() as u64,
        );
        let _ = writeln!(o, "# HELP app_drain_seconds Seconds since the drain began; 0 while not draining.\n# TYPE app_drain_seconds gauge\napp_drain_seconds {}", drain.unwrap_or(0.0));
        let p = crate::process::read();
        let _ = writeln!(o, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", p.resident_bytes);
        let _ = writeln!(o, "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}", p.cpu_seconds);
        let _ = writeln!(o, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}", p.open_fds);
        let _ = writeln!(o, "# HELP process_max_fds The open file descriptor limit.\n# TYPE process_max_fds gauge\nprocess_max_fds {}", p.max_fds);
        let _ = writeln!(o, "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}", p.start_time_seconds);

        let secs = |c: &Cell| c.get() as f64 / 1e6;
        let _ = writeln!(o, "# HELP app_startup_seconds Time from process start to all shards serving.\n# TYPE app_startup_seconds gauge\napp_startup_seconds {}", secs(&self.app.startup_micros));
        let _ = writeln!(o, "# HELP app_shutdown_seconds Time the last drain took.\n# TYPE app_shutdown_seconds gauge\napp_shutdown_seconds {}", secs(&self.app.shutdown_micros));
        let _ = writeln!(o, "# HELP app_info Build and deployment.\n# TYPE app_info gauge\napp_info{{version=\"{}\",color=\"{}\"}} 1", self.version, self.color);
        o
    }

    /// A histogram summed over shards, cumulative as the format wants.
    fn histogram(
        &self,
        o: &mut String,
        name: &str,
        help: &str,
        pick: impl Fn(&ShardMetrics) -> &Histogram,
    ) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.sum(|s| pick(s).buckets[i].get());
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.sum(|s| pick(s).buckets[DURATION_BUCKETS.len()].get());
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_ns = self.sum(|s| pick(s).sum_ns.get());
        let _ = writeln!(
            o,
            "{name}_sum {}\n{name}_count {cumulative}",
            sum_ns as f64 / 1e9
        );
    }
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
        assert_eq!(value(&t, "app_info{version=\"0.1.0\",color=\"blue\"}"), 1.0);
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
