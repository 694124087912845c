//! The suite's figures and the goals set for them, written once, as data:
//! each goal's text verbatim as the issue that set it says it, and the check
//! of the median that decides it. A missed goal shows as missed; the answer to
//! a miss is new code or a new goal set in an issue, never a goal rewritten
//! here to what was measured.

use serde::{Deserialize, Serialize};

/// One row of the suite's table.
#[derive(Debug, Clone, Copy)]
pub struct FigureDef {
    /// Stable name in `latest.json`, and the key goals are attached by.
    pub id: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub lower_better: bool,
}

const fn lower(id: &'static str, name: &'static str, unit: &'static str) -> FigureDef {
    FigureDef {
        id,
        name,
        unit,
        lower_better: true,
    }
}

const fn higher(id: &'static str, name: &'static str, unit: &'static str) -> FigureDef {
    FigureDef {
        lower_better: false,
        ..lower(id, name, unit)
    }
}

/// Every figure, in the order the suite runs and the table lists them.
pub static FIGURES: &[FigureDef] = &[
    lower(
        "idle_bytes",
        "idle 19K sockets: userspace bytes per socket",
        "B",
    ),
    lower(
        "closed_cpu",
        "closed loop 100 sockets, 1 shard pinned: server µs per reply",
        "µs",
    ),
    higher(
        "closed_rps",
        "closed loop 100 sockets, 1 shard pinned: replies/s",
        "/s",
    ),
    lower(
        "closed_gen",
        "closed loop 100 sockets, 1 shard pinned: generator µs per reply",
        "µs",
    ),
    lower(
        "closed2_cpu",
        "closed loop 100 sockets, 2 shards unpinned: server µs per reply",
        "µs",
    ),
    higher(
        "closed2_rps",
        "closed loop 100 sockets, 2 shards unpinned: replies/s",
        "/s",
    ),
    higher(
        "scale_rps",
        "2 shards vs 1: replies/s ratio on this box (the generator shares the 2 CPUs)",
        "x",
    ),
    higher(
        "scale_cpu",
        "2 shards vs 1: scaling from per-reply CPU (2 × µs on 1 shard ÷ µs on 2)",
        "x",
    ),
    lower(
        "rate_p50",
        "rate 10K sockets, 20K msgs/s, 1 shard pinned: RTT p50",
        "µs",
    ),
    lower(
        "rate_p99",
        "rate 10K sockets, 20K msgs/s, 1 shard pinned: RTT p99",
        "µs",
    ),
    lower(
        "rate_p999",
        "rate 10K sockets, 20K msgs/s, 1 shard pinned: RTT p99.9",
        "µs",
    ),
    lower("rate_cpu", "rate: server µs per reply", "µs"),
    lower("rate_gen", "rate: generator µs per reply", "µs"),
    lower(
        "storm_connect",
        "storm 10K: all upgraded (first connect to last welcome)",
        "s",
    ),
    lower(
        "storm_resume",
        "storm 10K: all resumed from Redis, counts exact",
        "s",
    ),
    lower("drain_close", "drain 10K: SIGTERM to last close", "s"),
    higher("drain_goodbye", "drain 10K: goodbye + 1001 share", "%"),
    lower("drain_exit", "drain 10K: SIGTERM to process exit", "s"),
    lower("mix_p99", "mix 10K for 60 s: reply RTT p99", "µs"),
    higher("mix_rps", "mix 10K for 60 s: replies/s", "/s"),
];

pub fn figure(id: &str) -> Option<&'static FigureDef> {
    FIGURES.iter().find(|f| f.id == id)
}

/// What decides a check, always read off shardcast's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The median, at most this.
    AtMost(f64),
    /// The median, at least this.
    AtLeast(f64),
    /// The median of the round-by-round ratios shardcast ÷ uWebSockets, at
    /// most this: "in the same run" is each round's pair, run back to back.
    UwsRatioAtMost(f64),
}

/// Who set a goal: the goals standing now, or the next round's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Goal,
    NextGoal,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Goal => "goal",
            Source::NextGoal => "next goal",
        }
    }
}

/// One figure held to one goal.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub figure: &'static str,
    pub bound: Bound,
    pub moonshot: Option<Bound>,
    /// The goal also asks that nothing went wrong in the figure's runs
    /// ("every count exact", "all with goodbye", "all upgraded"): a fault in
    /// any of them misses it.
    pub clean: bool,
}

/// A goal as its issue wrote it, and the figures it holds.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    pub source: Source,
    pub text: &'static str,
    pub checks: &'static [Check],
}

const fn check(figure: &'static str, bound: Bound) -> Check {
    Check {
        figure,
        bound,
        moonshot: None,
        clean: false,
    }
}

const fn clean(figure: &'static str, bound: Bound) -> Check {
    Check {
        clean: true,
        ..check(figure, bound)
    }
}

const fn moonshot(figure: &'static str, bound: Bound, moon: Bound) -> Check {
    Check {
        moonshot: Some(moon),
        ..check(figure, bound)
    }
}

use Bound::{AtLeast, AtMost, UwsRatioAtMost};

/// Every goal in force. The texts are the issues' own words, character for
/// character; the checks are what those words ask of the medians.
pub static GOALS: &[Goal] = &[
    Goal {
        source: Source::Goal,
        text: "10,000 sockets at 20,000 msgs/s open loop: RTT p50, p99 and p99.9 at or below \
               uWebSockets' in the same run, and server CPU per reply at or below it, while \
               shardcast still writes every count to Redis.",
        checks: &[
            check("rate_p50", UwsRatioAtMost(1.0)),
            check("rate_p99", UwsRatioAtMost(1.0)),
            check("rate_p999", UwsRatioAtMost(1.0)),
            check("rate_cpu", UwsRatioAtMost(1.0)),
        ],
    },
    Goal {
        source: Source::Goal,
        text: "100 sockets closed loop: server CPU per reply at or below uWebSockets'.",
        checks: &[check("closed_cpu", UwsRatioAtMost(1.0))],
    },
    Goal {
        source: Source::Goal,
        text:
            "19,000 idle sockets: at most 1 KiB of userspace memory per socket (moonshot: 512 B).",
        checks: &[moonshot("idle_bytes", AtMost(1024.0), AtMost(512.0))],
    },
    Goal {
        source: Source::Goal,
        text: "10,000-socket connect storm: all upgraded no later than uWebSockets.",
        checks: &[clean("storm_connect", UwsRatioAtMost(1.0))],
    },
    Goal {
        source: Source::Goal,
        text: "2 shards against 1 on per-reply CPU: at least 1.8x, as now.",
        checks: &[check("scale_cpu", AtLeast(1.8))],
    },
    Goal {
        source: Source::Goal,
        text: "storm with resume from Redis, 10K: ≤ 2 s, every count exact",
        checks: &[clean("storm_resume", AtMost(2.0))],
    },
    Goal {
        source: Source::Goal,
        text: "drain of 10K sockets: ≤ 1 s, all with goodbye",
        checks: &[
            clean("drain_close", AtMost(1.0)),
            clean("drain_goodbye", AtLeast(100.0)),
        ],
    },
    Goal {
        source: Source::Goal,
        text: "Aim for ≤ 2 µs of generator CPU per message",
        checks: &[check("closed_gen", AtMost(2.0))],
    },
    Goal {
        source: Source::NextGoal,
        text: "rate test: server CPU per reply ≤ 1.0x uWS (moonshot ≤ 0.8x)",
        checks: &[moonshot(
            "rate_cpu",
            UwsRatioAtMost(1.0),
            UwsRatioAtMost(0.8),
        )],
    },
    Goal {
        source: Source::NextGoal,
        text: "rate test: RTT p50 and p99 (median of the runs) ≤ 1.0x uWS (moonshot p99 ≤ 0.8x)",
        checks: &[
            check("rate_p50", UwsRatioAtMost(1.0)),
            moonshot("rate_p99", UwsRatioAtMost(1.0), UwsRatioAtMost(0.8)),
        ],
    },
    Goal {
        source: Source::NextGoal,
        text: "closed loop 100 sockets: server CPU per reply ≤ 0.9x uWS (moonshot ≤ 0.7x)",
        checks: &[moonshot(
            "closed_cpu",
            UwsRatioAtMost(0.9),
            UwsRatioAtMost(0.7),
        )],
    },
    Goal {
        source: Source::NextGoal,
        text: "idle: userspace bytes per socket ≤ 384 B (moonshot ≤ 256 B (uWS))",
        checks: &[moonshot("idle_bytes", AtMost(384.0), AtMost(256.0))],
    },
    Goal {
        source: Source::NextGoal,
        text: "connect storm 10K ≤ 1.0x uWS",
        checks: &[check("storm_connect", UwsRatioAtMost(1.0))],
    },
];

/// The goals that hold figure `id`, in the order they are listed above.
pub fn checks_for(id: &str) -> impl Iterator<Item = (&'static Goal, &'static Check)> + '_ {
    GOALS
        .iter()
        .flat_map(|g| g.checks.iter().map(move |c| (g, c)))
        .filter(move |(_, c)| c.figure == id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// The run has no figure to judge: uws was not there, or no run gave one.
    NotMeasured,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// What a check reads of one figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    /// shardcast's median.
    pub median: Option<f64>,
    /// The median of shardcast's round-by-round ratios to uws.
    pub uws_ratio: Option<f64>,
    /// Faults in shardcast's runs of the figure.
    pub faults: u64,
}

/// The verdict of one bound on one figure.
pub fn judge(bound: Bound, clean: bool, e: &Evidence) -> Verdict {
    let value = match bound {
        AtMost(_) | AtLeast(_) => e.median,
        UwsRatioAtMost(_) => e.uws_ratio,
    };
    let Some(v) = value else {
        return Verdict::NotMeasured;
    };
    let within = match bound {
        AtMost(b) | UwsRatioAtMost(b) => v <= b,
        AtLeast(b) => v >= b,
    };
    if within && !(clean && e.faults > 0) {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(v: f64) -> Evidence {
        Evidence {
            median: Some(v),
            ..Evidence::default()
        }
    }

    #[test]
    fn every_goal_holds_a_figure_the_suite_has() {
        for g in GOALS {
            assert!(!g.checks.is_empty(), "{}", g.text);
            for c in g.checks {
                assert!(figure(c.figure).is_some(), "{}: {}", g.text, c.figure);
            }
        }
        let mut ids: Vec<_> = FIGURES.iter().map(|f| f.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), FIGURES.len(), "figure ids are unique");
    }

    #[test]
    fn bounds_are_inclusive_and_face_the_right_way() {
        use Verdict::*;
        assert_eq!(judge(AtMost(1024.0), false, &median(1024.0)), Met);
        assert_eq!(judge(AtMost(1024.0), false, &median(1025.0)), Missed);
        assert_eq!(judge(AtLeast(1.8), false, &median(1.8)), Met);
        assert_eq!(judge(AtLeast(1.8), false, &median(1.79)), Missed);
        assert_eq!(judge(AtMost(2.0), false, &Evidence::default()), NotMeasured);
    }

    #[test]
    fn ratio_goals_read_the_ratio_not_the_median() {
        use Verdict::*;
        let e = Evidence {
            median: Some(23.6),
            uws_ratio: Some(1.41),
            faults: 0,
        };
        assert_eq!(judge(UwsRatioAtMost(1.0), false, &e), Missed);
        let e = Evidence {
            uws_ratio: Some(0.43),
            ..e
        };
        assert_eq!(judge(UwsRatioAtMost(1.0), false, &e), Met);
        assert_eq!(judge(UwsRatioAtMost(0.8), false, &e), Met);
        let no_uws = median(0.1);
        assert_eq!(judge(UwsRatioAtMost(1.0), false, &no_uws), NotMeasured);
    }

    #[test]
    fn a_clean_goal_is_missed_by_any_fault() {
        let e = Evidence {
            median: Some(0.8),
            faults: 1,
            ..Evidence::default()
        };
        assert_eq!(judge(AtMost(2.0), true, &e), Verdict::Missed);
        assert_eq!(judge(AtMost(2.0), false, &e), Verdict::Met);
    }

    #[test]
    fn idle_is_held_to_1_kib_with_512_b_as_its_moonshot() {
        let idle: Vec<_> = checks_for("idle_bytes").collect();
        assert_eq!(idle.len(), 2, "the standing goal and the next one");
        let (goal, c) = idle[0];
        assert_eq!(goal.source, Source::Goal);
        assert_eq!(c.bound, AtMost(1024.0));
        assert_eq!(c.moonshot, Some(AtMost(512.0)));
        // 621 B: within the goal, not the moonshot, not the next goal.
        let e = median(621.0);
        assert_eq!(judge(c.bound, c.clean, &e), Verdict::Met);
        assert_eq!(judge(AtMost(512.0), false, &e), Verdict::Missed);
        let (next, c) = idle[1];
        assert_eq!(next.source, Source::NextGoal);
        assert_eq!(judge(c.bound, c.clean, &e), Verdict::Missed);
    }
}
