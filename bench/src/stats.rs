//! What a worker counts and records, in a form that crosses the pipe to the
//! coordinator and merges there: plain counters, a fixed set of fault kinds and
//! HDR histograms sent as their recorded (value, count) pairs; and the spread
//! (median, min, max) that the suite gives each figure over its runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Running totals of one worker (or, merged, of a whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Welcomes received, resumes included.
    pub opened: u64,
    /// Sockets open right now.
    pub live: u64,
    pub sent: u64,
    pub replies: u64,
    /// Resumes whose welcome carried the expected count and `resumed: true`.
    pub resumed: u64,
    /// Drain goodbyes followed by Close 1001.
    pub goodbyes: u64,
    pub heartbeats: u64,
    /// Open-loop sends that found their socket not open.
    pub skipped: u64,
    pub faults: u64,
    /// Broadcast frames received.
    #[serde(default)]
    pub broadcasts: u64,
    /// When the newest of them came (CLOCK_MONOTONIC ns, the same clock in
    /// every process of the machine); merged as the latest.
    #[serde(default)]
    pub last_broadcast_ns: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.opened += o.opened;
        self.live += o.live;
        self.sent += o.sent;
        self.replies += o.replies;
        self.resumed += o.resumed;
        self.goodbyes += o.goodbyes;
        self.heartbeats += o.heartbeats;
        self.skipped += o.skipped;
        self.faults += o.faults;
        self.broadcasts += o.broadcasts;
        self.last_broadcast_ns = self.last_broadcast_ns.max(o.last_broadcast_ns);
    }
}

/// Every way a run can go wrong. Each one fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// connect() failed: refused, reset, no route.
    Connect,
    /// The upgrade was answered with a status other than 101.
    Refused,
    /// The upgrade answer was not HTTP or had a wrong accept key.
    Handshake,
    ConnectTimeout,
    /// A reply's count was not the previous one plus one.
    CountMismatch,
    /// A welcome's count or `resumed` was not what this socket expected.
    WelcomeMismatch,
    /// A goodbye's total was not the last acknowledged count.
    ByeMismatch,
    /// A drain Close without the shutdown goodbye before it, or not 1001.
    BadDrain,
    /// The server closed (TCP or WebSocket) when nothing asked it to.
    UnexpectedClose,
    ReplyTimeout,
    CloseTimeout,
    RateLimited,
    /// A frame the contract does not allow, or text that is not a known reply.
    BadFrame,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::Connect,
        Fault::Refused,
        Fault::Handshake,
        Fault::ConnectTimeout,
        Fault::CountMismatch,
        Fault::WelcomeMismatch,
        Fault::ByeMismatch,
        Fault::BadDrain,
        Fault::UnexpectedClose,
        Fault::ReplyTimeout,
        Fault::CloseTimeout,
        Fault::RateLimited,
        Fault::BadFrame,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Connect => "connect_failed",
            Fault::Refused => "upgrade_refused",
            Fault::Handshake => "bad_handshake",
            Fault::ConnectTimeout => "connect_timeout",
            Fault::CountMismatch => "count_mismatch",
            Fault::WelcomeMismatch => "welcome_mismatch",
            Fault::ByeMismatch => "bye_mismatch",
            Fault::BadDrain => "bad_drain",
            Fault::UnexpectedClose => "unexpected_close",
            Fault::ReplyTimeout => "reply_timeout",
            Fault::CloseTimeout => "close_timeout",
            Fault::RateLimited => "rate_limited",
            Fault::BadFrame => "bad_frame",
        }
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// Fault counts by kind, indexed like [`Fault::ALL`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults(pub Vec<u64>);

impl Faults {
    pub fn bump(&mut self, f: Fault) {
        if self.0.len() < Fault::ALL.len() {
            self.0.resize(Fault::ALL.len(), 0);
        }
        self.0[f.index()] += 1;
    }

    pub fn add(&mut self, o: &Faults) {
        if self.0.len() < o.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (name, count) of every kind that happened.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        Fault::ALL
            .iter()
            .zip(&self.0)
            .filter(|(_, n)| **n > 0)
            .map(|(f, n)| (f.name(), *n))
            .collect()
    }
}

/// A histogram of nanoseconds, 1 ns to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static bounds are valid")
}

/// The recorded (value, count) pairs: small for the pipe, exact to merge.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn merge_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
}

/// The median and the range of one figure's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// None without a finite value: JSON, where a spread ends up, has no NaN.
    /// An even count takes the mean of the middle two as its median.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The end-of-run record of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub counters: Counters,
    pub faults: Faults,
    /// Replies and sends between `go` and `stop`.
    pub window_replies: u64,
    pub window_sent: u64,
    /// Reply round trips, ns; from the scheduled send time in open loop.
    pub rtt: Vec<(u64, u64)>,
    /// Connect to welcome, ns.
    pub connect: Vec<(u64, u64)>,
    /// A drain's Close 1001 to the resumed welcome on the new server, ns.
    pub reconnect: Vec<(u64, u64)>,
    /// Monotonic ns of the first connect() of the run.
    pub first_connect_ns: u64,
    /// Monotonic ns of the last welcome of the first phase, of the last
    /// verified resume, and of the last socket closed.
    pub last_open_ns: u64,
    pub last_resume_ns: u64,
    pub last_close_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_merge_and_name() {
        let mut a = Faults::default();
        a.bump(Fault::CountMismatch);
        a.bump(Fault::CountMismatch);
        let mut b = Faults::default();
        b.bump(Fault::ReplyTimeout);
        a.add(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.named(), vec![("count_mismatch", 2), ("reply_timeout", 1)]);
        let mut empty = Faults::default();
        empty.add(&Faults::default());
        assert_eq!(empty.total(), 0);
    }

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = histogram();
        for v in [12_000u64, 15_000, 15_000, 2_000_000, 9_000_000_000] {
            h.record(v).unwrap();
        }
        let json = serde_json::to_string(&to_pairs(&h)).unwrap();
        let pairs: Vec<(u64, u64)> = serde_json::from_str(&json).unwrap();
        let mut back = histogram();
        merge_pairs(&mut back, &pairs);
        assert_eq!(back.len(), 5);
        for q in [0.5, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
    }

    #[test]
    fn spreads_take_the_middle_and_the_ends() {
        let s = |v: &[f64]| Spread::of(v).map(|s| (s.median, s.min, s.max));
        assert_eq!(s(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(s(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(s(&[7.0]), Some((7.0, 7.0, 7.0)));
        assert_eq!(s(&[f64::NAN, 5.0, f64::INFINITY]), Some((5.0, 5.0, 5.0)));
        assert_eq!(s(&[]), None);
    }

    #[test]
    fn every_fault_has_its_own_name() {
        let mut names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Fault::ALL.len());
    }
}
