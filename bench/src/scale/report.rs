//! A finished scale run: each phase's figures, the assertions passed on
//! them, the table people read and the JSON scripts read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::report::Quantiles;

/// One checked figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assertion {
    /// `phase.what`, e.g. `fanout.missing`.
    pub name: String,
    pub value: u64,
    /// What the value had to be, as people read it: `= 0`, `= 12000`.
    pub expect: String,
    pub pass: bool,
}

impl Assertion {
    pub fn equals(name: &str, value: u64, want: u64) -> Assertion {
        Assertion {
            name: name.to_string(),
            value,
            expect: format!("= {want}"),
            pass: value == want,
        }
    }

    pub fn zero(name: &str, value: u64) -> Assertion {
        Assertion::equals(name, value, 0)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectFigures {
    pub connected: u64,
    pub failures: u64,
    /// From the phase's start to the last socket through its first count.
    pub all_connected_s: f64,
    /// connect() to welcome.
    pub connect_ms: Option<Quantiles>,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BroadcastFigures {
    pub seq: u32,
    /// Index of the node it was posted to.
    pub node: u32,
    pub accepted: bool,
    /// Shards that held the channel, from the 202.
    pub shards: Option<u64>,
    /// Sockets that had it when the wait ended.
    pub got: u64,
    /// From the stamp to the last socket's receipt.
    pub last_ms: Option<f64>,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutFigures {
    pub broadcasts: u32,
    pub expected: u64,
    pub deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub latency_ms: Option<Quantiles>,
    /// The slowest broadcast's time until its last socket had it.
    pub worst_last_ms: Option<f64>,
    pub per_broadcast: Vec<BroadcastFigures>,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomFigures {
    pub room: String,
    pub accepted: bool,
    /// Shards that held the room, from the 202.
    pub shards: Option<u64>,
    pub members: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Members that got the barrier before the room broadcast, against the
    /// order Redis and the server promise.
    pub late: u64,
    /// Non-members that got the room broadcast.
    pub strays: u64,
    pub barrier_expected: u64,
    pub barrier_got: u64,
    pub barrier_duplicates: u64,
    pub latency_ms: Option<Quantiles>,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ResumeFigures {
    pub movers: u64,
    pub moved: u64,
    pub hops: u64,
    pub expected_hops: u64,
    pub mismatches: u64,
    pub time_s: f64,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KillFigures {
    pub node: u32,
    pub pid: u32,
    pub victims: u64,
    pub dropped: u64,
    pub recovered: u64,
    /// Recovered victims that had a message unanswered when their node
    /// died, and how many of those the resumed count included.
    pub in_flight: u64,
    pub in_flight_counted: u64,
    /// Victims whose resumed count was below their last acknowledged one.
    pub lost: u64,
    /// Victims whose resumed count was above everything they had sent.
    pub ahead: u64,
    /// Victims whose connection ended before the kill.
    pub early_drops: u64,
    pub survivors_disconnected: u64,
    pub kill_to_last_recovery_s: Option<f64>,
    /// Connection end to resumed welcome.
    pub reconnect_ms: Option<Quantiles>,
    /// Messages answered from the start of traffic to its end.
    pub acked: u64,
    /// Global broadcasts posted through the survivors while the node died,
    /// those accepted, and each socket's receipts of them: in order, again,
    /// and past a gap. Victims get the ones they missed through `since`.
    pub stream_posted: u64,
    pub stream_accepted: u64,
    pub stream_expected: u64,
    pub stream_deliveries: u64,
    pub stream_duplicates: u64,
    pub stream_gaps: u64,
    /// Victims' welcomes after a `since` that did not say recovered:true.
    pub not_recovered: u64,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CloseFigures {
    pub expected: u64,
    pub closed: u64,
    pub bye_mismatches: u64,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub connect: Option<ConnectFigures>,
    pub fanout: Option<FanoutFigures>,
    pub room: Option<RoomFigures>,
    pub resume: Option<ResumeFigures>,
    pub kill: Option<KillFigures>,
    pub close: Option<CloseFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub nodes: Vec<String>,
    pub sockets: u32,
    pub procs: u32,
    pub rooms: u32,
    pub broadcasts: u32,
    pub kill_node: Option<u32>,
    pub duration_s: f64,
    pub ok: bool,
    pub phases: Phases,
    /// Phase waits that ended on --timeout rather than on completion.
    pub timeouts: Vec<String>,
    pub faults: BTreeMap<String, u64>,
    pub fault_total: u64,
    pub assertions: Vec<Assertion>,
}

impl ScaleReport {
    pub fn passed(&self) -> usize {
        self.assertions.iter().filter(|a| a.pass).count()
    }

    /// Fills `ok` from the assertions; a report without any proves nothing.
    pub fn settle(&mut self) {
        self.ok = !self.assertions.is_empty() && self.assertions.iter().all(|a| a.pass);
    }

    /// The table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scale: {} nodes, {} sockets, {} workers, {} rooms, {} broadcasts, {:.1} s",
            self.nodes.len(),
            self.sockets,
            self.procs,
            self.rooms,
            self.broadcasts,
            self.duration_s
        );
        let p = &self.phases;
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<8} {v}");
        };
        if let Some(c) = &p.connect {
            row(
                "connect",
                format!(
                    "{} connected in {:.2} s; welcome {}",
                    c.connected,
                    c.all_connected_s,
                    quantiles(&c.connect_ms)
                ),
            );
        }
        if let Some(f) = &p.fanout {
            row(
                "fanout",
                format!(
                    "{} of {} deliveries; latency {}; last socket {}",
                    f.deliveries,
                    f.expected,
                    quantiles(&f.latency_ms),
                    f.worst_last_ms
                        .map_or("-".into(), |v| format!("{v:.1} ms (worst)"))
                ),
            );
        }
        if let Some(r) = &p.room {
            row(
                "room",
                format!(
                    "{}: {} of {} members; latency {}",
                    r.room,
                    r.delivered,
                    r.members,
                    quantiles(&r.latency_ms)
                ),
            );
        }
        if let Some(r) = &p.resume {
            row(
                "resume",
                format!(
                    "{} of {} sockets toured, {} hops in {:.2} s",
                    r.moved, r.movers, r.hops, r.time_s
                ),
            );
        }
        if let Some(k) = &p.kill {
            row(
                "kill",
                format!(
                    "node {} (pid {}): {} of {} victims back, the last {} after the kill; \
                     {} messages acked",
                    k.node,
                    k.pid,
                    k.recovered,
                    k.victims,
                    k.kill_to_last_recovery_s
                        .map_or("-".into(), |v| format!("{v:.2} s")),
                    k.acked
                ),
            );
            row(
                "",
                format!(
                    "reconnect {}; {} had a message in flight, {} of those counted",
                    quantiles(&k.reconnect_ms),
                    k.in_flight,
                    k.in_flight_counted
                ),
            );
            row(
                "",
                format!(
                    "{} broadcasts during the kill: {} of {} deliveries in order, \
                     {} repeated, {} gaps, {} not recovered",
                    k.stream_accepted,
                    k.stream_deliveries,
                    k.stream_expected,
                    k.stream_duplicates,
                    k.stream_gaps,
                    k.not_recovered
                ),
            );
        }
        if let Some(c) = &p.close {
            row(
                "close",
                format!("{} of {} goodbyes right", c.closed, c.expected),
            );
        }
        if !self.timeouts.is_empty() {
            row("timeouts", self.timeouts.join(", "));
        }
        if !self.faults.is_empty() {
            let kinds: Vec<String> = self
                .faults
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            row("faults", kinds.join(", "));
        }
        let width = self
            .assertions
            .iter()
            .map(|a| a.name.len())
            .max()
            .unwrap_or(0)
            .max("assertion".len());
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<width$}  {:>10}  {:<10}  result",
            "assertion", "value", "expected"
        );
        for a in &self.assertions {
            let _ = writeln!(
                s,
                "  {:<width$}  {:>10}  {:<10}  {}",
                a.name,
                a.value,
                a.expect,
                if a.pass { "PASS" } else { "FAIL" }
            );
        }
        let _ = writeln!(
            s,
            "\n{}: {} of {} assertions held",
            if self.ok { "PASS" } else { "FAIL" },
            self.passed(),
            self.assertions.len()
        );
        s
    }
}

fn quantiles(q: &Option<Quantiles>) -> String {
    match q {
        Some(q) => format!(
            "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            q.p50, q.p99, q.max
        ),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ScaleReport {
        let mut r = ScaleReport {
            nodes: vec!["http://a:1".into(), "http://b:1".into()],
            sockets: 10,
            procs: 2,
            rooms: 2,
            broadcasts: 1,
            duration_s: 3.25,
            ..ScaleReport::default()
        };
        r.phases.connect = Some(ConnectFigures {
            connected: 10,
            all_connected_s: 0.5,
            ..ConnectFigures::default()
        });
        r.assertions.push(Assertion::zero("connect.failures", 0));
        r.assertions
            .push(Assertion::equals("fanout.deliveries", 10, 10));
        r
    }

    #[test]
    fn assertions_judge_their_value() {
        assert!(Assertion::zero("x", 0).pass);
        assert!(!Assertion::zero("x", 1).pass);
        let a = Assertion::equals("fanout.deliveries", 59_999, 60_000);
        assert!(!a.pass);
        assert_eq!(a.expect, "= 60000");
    }

    #[test]
    fn the_summary_shows_every_assertion_and_the_verdict() {
        let mut r = sample();
        r.settle();
        assert!(r.ok);
        let s = r.summary();
        assert!(
            s.starts_with("scale: 2 nodes, 10 sockets, 2 workers"),
            "{s}"
        );
        assert!(
            s.contains("  connect  10 connected in 0.50 s; welcome -\n"),
            "{s}"
        );
        let row = s.lines().find(|l| l.contains("fanout.deliveries")).unwrap();
        assert!(row.ends_with("PASS"), "{row}");
        assert!(s.ends_with("PASS: 2 of 2 assertions held\n"), "{s}");

        r.assertions.push(Assertion::zero("kill.lost", 3));
        r.faults.insert("count_mismatch".into(), 2);
        r.settle();
        assert!(!r.ok);
        let s = r.summary();
        let row = s.lines().find(|l| l.contains("kill.lost")).unwrap();
        assert!(row.contains(" 3  = 0") && row.ends_with("FAIL"), "{row}");
        assert!(s.contains("  faults   count_mismatch 2\n"), "{s}");
        assert!(s.ends_with("FAIL: 2 of 3 assertions held\n"), "{s}");
    }

    #[test]
    fn no_assertions_is_no_pass() {
        let mut r = ScaleReport::default();
        r.settle();
        assert!(!r.ok);
    }

    #[test]
    fn the_json_names_its_figures() {
        let mut r = sample();
        r.settle();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["sockets"], 10);
        assert_eq!(v["phases"]["connect"]["connected"], 10);
        assert!(v["phases"]["kill"].is_null());
        assert_eq!(v["assertions"][0]["name"], "connect.failures");
        assert_eq!(v["assertions"][0]["pass"], true);
        assert_eq!(v["ok"], true);
    }
}
