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
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 13] = [
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
        }
    }
}

/// Close codes counted one by one in `ws_closes_total{code}`; others are "other".
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011];

/// Upper bounds of `ws_message_duration_seconds`, 10 µs to 1 s.
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
    pub errors: [Cell; ErrorKind::ALL.len()],
    pub closes: [Cell; CLOSE_CODES.len() + 1],
    pub message_duration: Histogram,
    pub redis_commands_total: Cell,
    pub redis_errors_total: Cell,
    pub redis_up: Cell,
    /// 1 once everything counted while Redis was away has been written back;
    /// 0 from a disconnect until then.
    pub redis_synced: Cell,
    /// Sessions whose count Redis does not have yet.
    pub redis_unflushed_sessions: Cell,
    /// Increments Redis does not have yet (summed over those sessions).
    pub redis_unflushed_increments: Cell,
    pub sessions_cached: Cell,
    /// 1 once the shard runs its accept loop.
    pub started: Cell,
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
}

/// All shards' metrics plus the process's own.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Box<[ShardMetrics]>,
    pub app: AppMetrics,
    pub version: &'static str,
    pub color: String,
}

impl Metrics {
    pub fn new(shards: usize, color: &str) -> Self {
        Self {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            app: AppMetrics::default(),
            version: env!("CARGO_PKG_VERSION"),
            color: color.to_string(),
        }
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Prometheus text exposition of the whole process.
    pub fn render(&self) -> String {
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
            "ws_sessions_resumed_total",
            "counter",
            "Sessions resumed by id.",
            self.sum(|s| s.sessions_resumed_total.get()),
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
        let up = self.shards.iter().all(|s| s.redis_up.get() == 1) as u64;
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

        let name = "ws_message_duration_seconds";
        let _ = writeln!(o, "# HELP {name} Time from a message's arrival to its reply being queued.\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.sum(|s| s.message_duration.buckets[i].get());
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.sum(|s| s.message_duration.buckets[DURATION_BUCKETS.len()].get());
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_ns = self.sum(|s| s.message_duration.sum_ns.get());
        let _ = writeln!(
            o,
            "{name}_sum {}\n{name}_count {cumulative}",
            sum_ns as f64 / 1e9
        );

        let secs = |c: &Cell| c.get() as f64 / 1e6;
        let _ = writeln!(o, "# HELP app_startup_seconds Time from process start to all shards serving.\n# TYPE app_startup_seconds gauge\napp_startup_seconds {}", secs(&self.app.startup_micros));
        let _ = writeln!(o, "# HELP app_shutdown_seconds Time the last drain took.\n# TYPE app_shutdown_seconds gauge\napp_shutdown_seconds {}", secs(&self.app.shutdown_micros));
        let _ = writeln!(o, "# HELP app_info Build and deployment.\n# TYPE app_info gauge\napp_info{{version=\"{}\",color=\"{}\"}} 1", self.version, self.color);
        o
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
        let t = m.render();
        assert_eq!(value(&t, "ws_messages_total"), 7.0);
        assert_eq!(value(&t, "ws_closes_total{code=\"1001\"}"), 1.0);
        assert_eq!(value(&t, "ws_closes_total{code=\"other\"}"), 1.0);
        assert_eq!(value(&t, "ws_errors_total{kind=\"binary\"}"), 1.0);
        assert_eq!(value(&t, "app_info{version=\"0.1.0\",color=\"blue\"}"), 1.0);
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new(1, "blue");
        m.shards[0].message_duration.observe_ns(5_000); // 5 µs
        m.shards[0].message_duration.observe_ns(2_000_000); // 2 ms
        m.shards[0].message_duration.observe_ns(5_000_000_000); // 5 s
        let t = m.render();
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
