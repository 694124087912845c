//! A finished run: the figures, the summary table people read, the JSON file
//! tools read, and a self-contained HTML page with the charts of
//! [`crate::chart`] inline as SVG (no scripts, no external assets).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::chart::{self, ChartError};
use crate::run::Mode;
use crate::stats::Counters;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub url: String,
    pub sockets: u32,
    pub procs: u32,
    pub load: String,
    /// The measured window, when the mode has one.
    pub window_s: Option<f64>,
    pub elapsed_s: f64,
    /// Sockets welcomed in the first phase.
    pub connected: u64,
    pub counters: Counters,
    pub faults: BTreeMap<String, u64>,
    pub fault_total: u64,
    pub msgs_per_s: f64,
    pub connect_ms: Option<Quantiles>,
    /// From the first connect() to the last first welcome: how long the
    /// whole set took to get in, the same measure for every server.
    pub connect_all_s: Option<f64>,
    /// A drain's Close 1001 to the resumed welcome (sockets that reconnected).
    pub reconnect_ms: Option<Quantiles>,
    /// Share of those reconnects done within 1 s.
    pub reconnected_within_1s: Option<f64>,
    pub rtt_us: Option<Quantiles>,
    pub server: Option<ProcFigures>,
    pub generator: ProcFigures,
    pub storm: Option<StormFigures>,
    pub drain: Option<DrainFigures>,
    pub series: Vec<Point>,
    /// (ns, count) pairs of every recorded round trip.
    pub rtt_histogram: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Quantiles {
    /// Quantiles of a histogram of nanoseconds, divided by `unit` (1e3: µs).
    pub fn of(h: &Histogram<u64>, unit: f64) -> Option<Quantiles> {
        if h.is_empty() {
            return None;
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / unit;
        Some(Quantiles {
            count: h.len(),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / unit,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    pub pid: Option<u32>,
    pub cpu_s: Option<f64>,
    /// CPU per reply over the measured window (the generator: per message,
    /// its send and its reply together).
    pub cpu_us_per_reply: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_loaded: Option<u64>,
    pub bytes_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormFigures {
    /// From the drop to the last resume proven by a continued count.
    pub resume_all_s: f64,
    #[serde(skip)]
    pub dropped_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainFigures {
    /// Share of the connected sockets that got the goodbye and Close 1001.
    pub goodbye_share: f64,
    /// From SIGTERM to the last socket closed.
    pub last_close_s: f64,
    /// From SIGTERM to the process gone.
    pub exit_s: Option<f64>,
    #[serde(skip)]
    pub signalled_ns: u64,
    /// The broadcast to every socket before the drain, when one was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastFigures>,
}

/// One broadcast to every open socket, timed from its POST.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastFigures {
    /// Sockets that got it, of those open when it was posted.
    pub received: u64,
    pub of: u64,
    /// From the POST to the last socket's receipt.
    pub last_receipt_s: f64,
    /// Why the POST failed, when it did (then nothing was received).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub live: u64,
    pub msgs_per_s: f64,
    pub faults: u64,
    /// The slowest reply in this point's interval, in microseconds.
    #[serde(default)]
    pub rtt_max_us: f64,
    /// The server's CPU over this point's interval, in % of one core (with
    /// `--server-pid`, while the server runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    /// The server's resident memory at this point (with `--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.fault_total == 0
    }

    /// The table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        row("mode", format!("{} ({})", self.mode.name(), self.load));
        row("target", self.url.clone());
        row(
            "sockets",
            format!(
                "{} asked, {} connected, {} worker process(es)",
                self.sockets, self.connected, self.procs
            ),
        );
        row("elapsed", format!("{:.2} s", self.elapsed_s));
        if let Some(w) = self.window_s {
            row("measured window", format!("{w:.2} s"));
        }
        let c = &self.counters;
        row(
            "messages",
            format!(
                "{} sent, {} replies, {:.0} replies/s",
                c.sent, c.replies, self.msgs_per_s
            ),
        );
        if c.skipped > 0 {
            row(
                "skipped sends",
                format!("{} (socket not open at its time)", c.skipped),
            );
        }
        if let Some(q) = &self.connect_ms {
            row(
                "connect (ms)",
                format!("p50 {:.2}  p99 {:.2}  max {:.2}", q.p50, q.p99, q.max),
            );
        }
        if let Some(q) = &self.reconnect_ms {
            row(
                "reconnect after 1001",
                format!(
                    "{} sockets; p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms; {:.1}% within 1 s",
                    q.count,
                    q.p50,
                    q.p99,
                    q.max,
                    self.reconnected_within_1s.unwrap_or(0.0) * 100.0
                ),
            );
        }
        if c.resumed > 0 && self.storm.is_none() {
            row(
                "resumed",
                format!("{} reconnects, each count continued exactly", c.resumed),
            );
        }
        if let Some(q) = &self.rtt_us {
            row(
                "reply RTT (µs)",
                format!(
                    "p50 {:.1}  p95 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                    q.p50, q.p95, q.p99, q.p999, q.max
                ),
            );
        }
        if let Some(sv) = &self.server {
            row("server CPU", cpu_text(sv));
            if let (Some(b), Some(l)) = (sv.rss_before, sv.rss_loaded) {
                row(
                    "server RSS",
                    format!(
                        "{} before, {} loaded, {} per socket",
                        bytes(b as f64),
                        bytes(l as f64),
                        sv.bytes_per_socket.map_or("-".into(), bytes)
                    ),
                );
            }
        }
        row("generator CPU", cpu_text(&self.generator));
        if let Some(t) = self.connect_all_s {
            row(
                "all connected",
                format!("{t:.3} s from the first connect to the last welcome"),
            );
        }
        if let Some(st) = &self.storm {
            row(
                "all resumed",
                format!(
                    "{:.3} s, {} counts continued exactly",
                    st.resume_all_s, c.resumed
                ),
            );
        }
        if let Some(b) = self.drain.as_ref().and_then(|d| d.broadcast.as_ref()) {
            let text = match &b.error {
                Some(e) => format!("the POST failed: {e}"),
                None => format!(
                    "{} of {} got it, the last {:.3} s after the POST",
                    b.received, b.of, b.last_receipt_s
                ),
            };
            row("broadcast to all", text);
        }
        if let Some(d) = &self.drain {
            row(
                "goodbye + 1001",
                format!(
                    "{:.2}% ({} of {})",
                    d.goodbye_share * 100.0,
                    c.goodbyes,
                    self.connected
                ),
            );
            row(
                "last close",
                format!("{:.3} s after SIGTERM", d.last_close_s),
            );
            row(
                "process exit",
                d.exit_s.map_or("not within 60 s".into(), |e| {
                    format!("{e:.3} s after SIGTERM")
                }),
            );
        }
        if c.heartbeats > 0 {
            row("heartbeats", c.heartbeats.to_string());
        }
        if self.ok() {
            row("errors", "0".into());
        } else {
            let list: Vec<String> = self
                .faults
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            row(
                "ERRORS",
                format!("{}: {}", self.fault_total, list.join(", ")),
            );
        }
        s
    }

    /// A standalone page: the summary, then every chart as inline SVG.
    pub fn html(&self) -> Result<String, ChartError> {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>shardcast-bench {}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}\
             pre{{background:#f4f4f4;padding:1em}}\
             svg{{display:block;max-width:100%;height:auto;margin:1em 0;border:1px solid #ddd}}\
             </style></head><body><h1>shardcast-bench: {}</h1><pre>{}</pre>",
            self.mode.name(),
            self.mode.name(),
            escape(&self.summary())
        );
        for svg in chart::svgs(self)? {
            h.push_str(&svg);
        }
        if self.server.is_none() {
            h.push_str("<p>Server CPU and memory over time need <code>--server-pid</code>.</p>");
        }
        h.push_str("</body></html>\n");
        Ok(h)
    }

    /// Every chart in one PNG image, for pasting where HTML does not go.
    pub fn png(&self) -> Result<Vec<u8>, ChartError> {
        chart::png(self)
    }
}

fn cpu_text(p: &ProcFigures) -> String {
    match (p.cpu_s, p.cpu_us_per_reply) {
        (Some(s), Some(per)) => format!("{s:.2} s, {per:.2} µs per reply"),
        (Some(s), None) => format!("{s:.2} s"),
        _ => "-".into(),
    }
}

pub fn bytes(b: f64) -> String {
    let a = b.abs();
    if a >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if a >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A small mix run with every chart's data: a latency spread over three
/// decades and server samples on every point.
#[cfg(test)]
pub(crate) fn example() -> Report {
    let mut h = crate::stats::histogram();
    for k in 0..2_000u64 {
        // 100 µs to 10 ms, most of it near the bottom.
        h.record(100_000 + k * k * 5 / 2).unwrap();
    }
    let series = (0..20u32)
        .map(|k| Point {
            t_s: 0.5 * f64::from(k),
            live: 100.min(u64::from(k) * 20),
            msgs_per_s: 900.0 + f64::from(k % 4) * 50.0,
            faults: 0,
            rtt_max_us: 800.0,
            server_cpu_pct: (k > 0).then(|| 20.0 + f64::from(k)),
            server_rss_bytes: Some(20_000_000 + u64::from(k) * 100_000),
        })
        .collect();
    Report {
        mode: Mode::Mix,
        url: "ws://127.0.0.1:9/ws/chat/?a<b".into(),
        sockets: 100,
        procs: 1,
        load: "80% chatters".into(),
        window_s: Some(8.0),
        elapsed_s: 10.0,
        connected: 100,
        counters: Counters::default(),
        faults: BTreeMap::new(),
        fault_total: 0,
        msgs_per_s: 950.0,
        connect_ms: None,
        connect_all_s: None,
        reconnect_ms: None,
        reconnected_within_1s: None,
        rtt_us: Quantiles::of(&h, 1e3),
        server: Some(ProcFigures {
            pid: Some(1),
            ..ProcFigures::default()
        }),
        generator: ProcFigures::default(),
        storm: None,
        drain: None,
        series,
        rtt_histogram: crate::stats::to_pairs(&h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_in_the_unit_asked() {
        let mut h = crate::stats::histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let q = Quantiles::of(&h, 1e3).unwrap();
        assert_eq!(q.count, 1000);
        assert!((q.p50 - 500.0).abs() < 1.0, "{}", q.p50);
        assert!((q.p99 - 990.0).abs() < 1.0, "{}", q.p99);
        assert!((q.max - 1000.0).abs() < 1.0);
        assert!(Quantiles::of(&crate::stats::histogram(), 1e3).is_none());
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(bytes(272.0), "272 B");
        assert_eq!(bytes(6_900.0), "6.9 KB");
        assert_eq!(bytes(125_000_000.0), "125.0 MB");
        assert_eq!(bytes(-2048.0), "-2.0 KB");
    }

    #[test]
    fn html_escapes_and_draws() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        let page = example().html().unwrap();
        assert!(page.contains("chat/?a&lt;b"), "the summary is escaped");
        assert_eq!(page.matches("<svg").count(), 4, "latency, rate, CPU, RSS");
        assert_eq!(page.matches("</svg>").count(), 4);
        for title in [
            "Reply round trip by percentile",
            "Replies per second and open sockets",
            "Server CPU",
            "Server memory (RSS)",
        ] {
            assert!(page.contains(title), "{title}");
        }
        for outside in ["<script", "src=", "href=", "<link"] {
            assert!(!page.contains(outside), "{outside}");
        }
    }

    #[test]
    fn without_a_server_pid_the_page_says_so() {
        let mut r = example();
        r.server = None;
        for p in &mut r.series {
            p.server_cpu_pct = None;
            p.server_rss_bytes = None;
        }
        let page = r.html().unwrap();
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("need <code>--server-pid</code>"));
    }

    #[test]
    fn points_without_server_samples_keep_their_old_json() {
        let mut p = example().series[3].clone();
        p.server_cpu_pct = None;
        p.server_rss_bytes = None;
        let json = serde_json::to_value(&p).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["faults", "live", "msgs_per_s", "rtt_max_us", "t_s"]);
    }
}
