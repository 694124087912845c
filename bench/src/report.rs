//! A finished run: the figures, the summary table people read, the JSON file
//! tools read, and a self-contained HTML page with the latency histogram and
//! the time series drawn as inline SVG (no scripts, no external assets).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

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
    /// From the first connect() to the last welcome.
    pub connect_all_s: f64,
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
        if let Some(st) = &self.storm {
            row(
                "all connected",
                format!(
                    "{:.3} s from the first connect to the last welcome",
                    st.connect_all_s
                ),
            );
            row(
                "all resumed",
                format!(
                    "{:.3} s, {} counts continued exactly",
                    st.resume_all_s, c.resumed
                ),
            );
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

    /// A standalone page: the summary, the RTT histogram, sockets and msgs/s over time.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>shardcast-bench {}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}\
             pre{{background:#f4f4f4;padding:1em}}svg{{background:#fff;border:1px solid #ddd}}\
             </style></head><body><h1>shardcast-bench: {}</h1><pre>{}</pre>",
            self.mode.name(),
            self.mode.name(),
            escape(&self.summary())
        );
        let hist: Vec<(f64, f64)> = log_buckets(&self.rtt_histogram);
        if !hist.is_empty() {
            h.push_str("<h2>Reply round trip (µs, log scale)</h2>");
            h.push_str(&bar_chart(&hist, "µs", "replies"));
        }
        if self.series.len() > 1 {
            let live: Vec<(f64, f64)> =
                self.series.iter().map(|p| (p.t_s, p.live as f64)).collect();
            let rate: Vec<(f64, f64)> = self.series.iter().map(|p| (p.t_s, p.msgs_per_s)).collect();
            h.push_str("<h2>Open sockets</h2>");
            h.push_str(&line_chart(&live, "s", "sockets"));
            h.push_str("<h2>Replies per second</h2>");
            h.push_str(&line_chart(&rate, "s", "msgs/s"));
        }
        h.push_str("</body></html>\n");
        h
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

/// Groups (ns, count) pairs into buckets of µs, four per decade.
pub fn log_buckets(pairs: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
    for &(ns, n) in pairs {
        let us = (ns as f64 / 1e3).max(0.1);
        let b = (us.log10() * 4.0).floor() as i64;
        *buckets.entry(b).or_default() += n;
    }
    buckets
        .into_iter()
        .map(|(b, n)| (10f64.powf(b as f64 / 4.0), n as f64))
        .collect()
}

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD: f64 = 48.0;

fn svg_open(s: &mut String) {
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-size=\"11\">"
    );
}

fn axes(s: &mut String, x_label: &str, y_label: &str, y_max: f64) {
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/>\
         <line x1=\"{PAD}\" y1=\"{t}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#333\"/>\
         <text x=\"{r}\" y=\"{lb}\" text-anchor=\"end\">{x_label}</text>\
         <text x=\"4\" y=\"{t}\">{y_label}</text>\
         <text x=\"{yl}\" y=\"{ty}\" text-anchor=\"end\">{y_max:.0}</text>",
        b = H - PAD,
        r = W - 8.0,
        t = 14.0,
        lb = H - 8.0,
        yl = PAD - 4.0,
        ty = 28.0,
    );
}

/// Bars for histogram buckets, labelled with their lower bound.
fn bar_chart(points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    svg_open(&mut s);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    axes(&mut s, x_label, y_label, y_max);
    let slot = (W - PAD - 16.0) / points.len() as f64;
    for (k, (x, y)) in points.iter().enumerate() {
        let h = (H - PAD - 28.0) * y / y_max;
        let left = PAD + 4.0 + k as f64 * slot;
        let _ = write!(
            s,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7fb5\">\
             <title>≥ {x:.1} µs: {y:.0}</title></rect>",
            H - PAD - h,
            (slot - 2.0).max(1.0)
        );
        if k % 2 == 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                left + slot / 2.0,
                H - PAD + 14.0,
                short(*x)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn line_chart(points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    svg_open(&mut s);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let x_max = points.iter().map(|p| p.0).fold(1e-9, f64::max);
    axes(&mut s, x_label, y_label, y_max);
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{x_max:.0}</text>",
        W - 8.0,
        H - PAD + 14.0
    );
    let mut path = String::new();
    for (k, (x, y)) in points.iter().enumerate() {
        let px = PAD + (W - PAD - 16.0) * x / x_max;
        let py = H - PAD - (H - PAD - 28.0) * y / y_max;
        let _ = write!(path, "{}{px:.1},{py:.1}", if k == 0 { "M" } else { " L" });
    }
    let _ = write!(
        s,
        "<path d=\"{path}\" fill=\"none\" stroke=\"#b5534a\" stroke-width=\"1.5\"/></svg>"
    );
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.0}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}ms", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_four_per_decade_and_keep_every_count() {
        let pairs = [
            (1_000, 3),
            (2_000, 1),
            (10_000, 5),
            (12_000, 2),
            (1_000_000, 1),
        ];
        let b = log_buckets(&pairs);
        assert_eq!(b.iter().map(|p| p.1).sum::<f64>(), 12.0);
        assert_eq!(b[0], (1.0, 3.0));
        assert!((b[1].0 - 10f64.powf(0.25)).abs() < 1e-9);
        assert_eq!(b[2], (10.0, 7.0));
        assert_eq!(b.last().unwrap().0, 1000.0);
    }

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
        let page = escape("a<b>&c");
        assert_eq!(page, "a&lt;b&gt;&amp;c");
        let chart = line_chart(&[(0.0, 0.0), (1.0, 10.0), (2.0, 5.0)], "s", "n");
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert_eq!(chart.matches(" L").count(), 2);
    }
}
