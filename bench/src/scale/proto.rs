//! The orchestrator and its workers talk in JSON lines: a worker gets its
//! [`WorkerPlan`] on the command line, then one [`Command`] a line on stdin,
//! and answers every command with exactly one [`Event::Done`] on stdout,
//! with [`Event::Progress`] lines while it waits.

use serde::{Deserialize, Serialize};

use super::node::Node;
use super::tag::Kind;
use crate::stats::Faults;

/// (value, count) pairs of an HDR histogram of nanoseconds, see [`crate::stats`].
pub type Pairs = Vec<(u64, u64)>;

/// One worker's share of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: u32,
    pub nodes: Vec<Node>,
    pub rooms: u32,
    pub broadcasts: u32,
    /// Global index of this worker's first socket, and how many it holds.
    pub first: u32,
    pub count: u32,
    pub connect_concurrency: u32,
    /// Bound on every single wait of a socket: a connect, a reply, a close.
    pub timeout_ms: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open every socket, check its welcome, send one message.
    Connect,
    /// Answer once every live socket holds the broadcast `kind:seq`.
    Await { kind: Kind, seq: u32 },
    /// Every broadcast receipt so far, answered at once.
    Tally,
    /// Node-0 sockets tour every other node and come home.
    Resume,
    /// Start closed-loop traffic, answered at once; the sockets of
    /// `kill_node` will lose their node and must resume elsewhere.
    Traffic {
        interval_ms: u64,
        kill_node: Option<u32>,
    },
    /// The node died at `at_ns`: answer once every victim is back.
    Killed { at_ns: u64 },
    /// Stop sending; answer once every message in flight is answered.
    Quiet,
    /// Close every socket cleanly and check its goodbye.
    Close,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Progress {
        done: u64,
        of: u64,
        faults: u64,
    },
    /// The answer to the last command. `faults` are this worker's totals
    /// since it started; `timed_out` says the wait ended on its bound.
    Done {
        faults: Faults,
        timed_out: bool,
        out: Outcome,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Outcome {
    Connected {
        ok: u64,
        failed: u64,
        /// Monotonic ns of the last socket through its first count.
        last_ns: u64,
        /// connect() to welcome, ns.
        connect: Pairs,
    },
    Delivered {
        got: u64,
        /// Monotonic ns of the last receipt of this broadcast here.
        last_ns: u64,
    },
    Tally(Tally),
    Resumed {
        moved: u64,
        hops: u64,
        mismatches: u64,
        last_ns: u64,
    },
    TrafficOn,
    Recovered(Recovery),
    /// Messages answered since traffic started, and sockets of the nodes
    /// that live on which lost their connection all the same.
    Quieted {
        acked: u64,
        survivors_lost: u64,
    },
    /// Sockets closed with the right goodbye, and those whose goodbye was wrong.
    Closed {
        closed: u64,
        bad_byes: u64,
    },
}

/// Broadcast receipts of one worker, every kind together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// First receipts of fanout broadcasts (one per socket and broadcast).
    pub fanout: u64,
    pub fanout_dups: u64,
    pub fanout_latency: Pairs,
    /// Members of the room that got its broadcast, once.
    pub room: u64,
    pub room_dups: u64,
    /// Non-members that got a room broadcast.
    pub room_strays: u64,
    /// Members that got the barrier before the room broadcast.
    pub room_late: u64,
    pub room_latency: Pairs,
    pub barrier: u64,
    pub barrier_dups: u64,
    /// Stream broadcasts received in order, received again or out of
    /// order, and skipped (each run of skipped ones once).
    pub stream: u64,
    pub stream_dups: u64,
    pub stream_gaps: u64,
    /// Reconnects with `since` whose welcome did not say recovered:true.
    pub not_recovered: u64,
}

impl Tally {
    /// Adds another worker's counts; the latency pairs are merged by the
    /// caller, which owns the histograms. The destructuring is exhaustive so
    /// that a new count cannot be left out of the sum.
    pub fn add_counts(&mut self, o: &Tally) {
        let Tally {
            fanout,
            fanout_dups,
            fanout_latency: _,
            room,
            room_dups,
            room_strays,
            room_late,
            room_latency: _,
            barrier,
            barrier_dups,
            stream,
            stream_dups,
            stream_gaps,
            not_recovered,
        } = o;
        self.fanout += fanout;
        self.fanout_dups += fanout_dups;
        self.room += room;
        self.room_dups += room_dups;
        self.room_strays += room_strays;
        self.room_late += room_late;
        self.barrier += barrier;
        self.barrier_dups += barrier_dups;
        self.stream += stream;
        self.stream_dups += stream_dups;
        self.stream_gaps += stream_gaps;
        self.not_recovered += not_recovered;
    }
}

/// The kill phase as one worker saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Live sockets of the killed node when traffic started.
    pub victims: u64,
    /// Victims whose connection ended.
    pub dropped: u64,
    /// ... and dropped before the kill, which nothing explains.
    pub early: u64,
    pub recovered: u64,
    /// Victims with a message unanswered when their connection ended, and
    /// how many of those messages the resumed count included.
    pub in_flight: u64,
    pub in_flight_counted: u64,
    /// Victims whose resumed count was below their last acknowledged one.
    pub lost: u64,
    /// ... or above everything they had sent.
    pub ahead: u64,
    pub survivors_disconnected: u64,
    pub last_ns: u64,
    /// Connection end to resumed welcome, ns.
    pub reconnect: Pairs,
    /// Messages answered since traffic started.
    pub acked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for c in [
            Command::Connect,
            Command::Await {
                kind: Kind::Fanout,
                seq: 3,
            },
            Command::Traffic {
                interval_ms: 2000,
                kill_node: Some(2),
            },
            Command::Killed { at_ns: 5 },
        ] {
            let line = serde_json::to_string(&c).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Command>(&line).unwrap(), c);
        }
        assert_eq!(
            serde_json::to_string(&Command::Await {
                kind: Kind::Barrier,
                seq: 0
            })
            .unwrap(),
            r#"{"cmd":"await","kind":"barrier","seq":0}"#
        );
        let ev = Event::Done {
            faults: Faults::default(),
            timed_out: false,
            out: Outcome::Tally(Tally {
                fanout: 7,
                fanout_latency: vec![(1000, 7)],
                ..Tally::default()
            }),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
        let ev = Event::Done {
            faults: Faults::default(),
            timed_out: true,
            out: Outcome::TrafficOn,
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
    }
}
