//! One suite run as data: where it ran, every figure's runs per server, their
//! medians and ranges, shardcast's round-by-round ratios to the other servers,
//! and each goal's verdict. The suite writes it to `bench/results/latest.json`;
//! the figures generator and its test read it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::goals::{self, Bound, Evidence, FigureDef, Source, Verdict};
use crate::provenance::Provenance;
use crate::stats::Spread;

/// What `format` says of the file's layout; raised when a reader of the old
/// layout would misread the new one.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} is not a suite result: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error("{0} has format {1}; this build reads format {FORMAT}")]
    Format(PathBuf, u32),
}

/// A column of the table: which server a run was against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Shardcast,
    /// The tokio-tungstenite baseline, `tt-counter`.
    Tt,
    /// The uWebSockets peer, `uws-counter`.
    Uws,
}

/// One server's runs of one figure as the suite collects them: one entry
/// per round, and the faults of those runs.
pub type Runs = (Vec<Option<f64>>, u64);

/// One server's runs of one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// One entry per round; null where that round's run gave no figure.
    pub runs: Vec<Option<f64>>,
    pub spread: Option<Spread>,
    /// Faults in this server's runs of the figure.
    pub faults: u64,
}

/// shardcast ÷ another server, round by round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub runs: Vec<Option<f64>>,
    pub spread: Option<Spread>,
}

/// One goal on one figure, with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalResult {
    pub source: Source,
    /// Verbatim, as the issue that set it wrote it.
    pub text: String,
    pub bound: Bound,
    pub moonshot: Option<Bound>,
    pub clean: bool,
    pub verdict: Verdict,
    pub moonshot_verdict: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureResult {
    pub id: String,
    pub name: String,
    pub unit: String,
    pub lower_better: bool,
    pub servers: BTreeMap<Column, Series>,
    /// Keyed by the divisor: `tt` is shardcast ÷ tt.
    pub ratios: BTreeMap<Column, Ratio>,
    pub goals: Vec<GoalResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub format: u32,
    #[serde(flatten)]
    pub provenance: Provenance,
    /// N: rounds, each running every server of a figure once.
    pub runs_per_figure: u32,
    /// Sizes cut down about tenfold: a check of the suite, not figures.
    pub quick: bool,
    pub took_s: f64,
    /// shardcast's socket plane in this run (`uring`, `epoll`); runs from
    /// before there was a choice were epoll's.
    #[serde(default = "epoll")]
    pub io: String,
    /// Faults per server over the whole suite; uws is absent when it was skipped.
    pub faults: BTreeMap<Column, u64>,
    pub figures: Vec<FigureResult>,
}

impl FigureResult {
    /// Spreads, ratios and verdicts from each column's runs, with the goals
    /// in force.
    pub fn build(def: &FigureDef, runs: BTreeMap<Column, Runs>) -> FigureResult {
        let servers: BTreeMap<Column, Series> = runs
            .into_iter()
            .map(|(col, (runs, faults))| {
                let spread = spread(&runs);
                (
                    col,
                    Series {
                        runs,
                        spread,
                        faults,
                    },
                )
            })
            .collect();
        let mut f = FigureResult {
            id: def.id.into(),
            name: def.name.into(),
            unit: def.unit.into(),
            lower_better: def.lower_better,
            ratios: ratios(&servers),
            servers,
            goals: Vec::new(),
        };
        let e = f.evidence();
        f.goals = goals::checks_for(def.id)
            .map(|(goal, c)| GoalResult {
                source: goal.source,
                text: goal.text.into(),
                bound: c.bound,
                moonshot: c.moonshot,
                clean: c.clean,
                verdict: goals::judge(c.bound, c.clean, &e),
                moonshot_verdict: c.moonshot.map(|m| goals::judge(m, c.clean, &e)),
            })
            .collect();
        f
    }

    /// What the goals read of this figure.
    pub fn evidence(&self) -> Evidence {
        let ours = self.servers.get(&Column::Shardcast);
        Evidence {
            median: ours.and_then(|s| s.spread).map(|s| s.median),
            uws_ratio: self
                .ratios
                .get(&Column::Uws)
                .and_then(|r| r.spread)
                .map(|s| s.median),
            faults: ours.map_or(0, |s| s.faults),
        }
    }

    /// Whether the spreads, ratios and verdicts written beside the runs are
    /// what the runs give: a file edited by hand, or by a broken writer, is not.
    pub fn holds_together(&self) -> bool {
        let spreads = self
            .servers
            .values()
            .all(|s| same_spread(s.spread, spread(&s.runs)));
        let want = ratios(&self.servers);
        let ratios = want.len() == self.ratios.len()
            && want.iter().all(|(col, w)| {
                self.ratios.get(col).is_some_and(|r| {
                    same_spread(r.spread, w.spread)
                        && r.runs.len() == w.runs.len()
                        && r.runs.iter().zip(&w.runs).all(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => same(*a, *b),
                            (a, b) => a == b,
                        })
                })
            });
        let e = self.evidence();
        let verdicts = self.goals.iter().all(|g| {
            g.verdict == goals::judge(g.bound, g.clean, &e)
                && g.moonshot_verdict == g.moonshot.map(|m| goals::judge(m, g.clean, &e))
        });
        spreads && ratios && verdicts
    }
}

/// Equal as far as JSON keeps them: its text reads a float back to within
/// an ulp or two, not always to the bit.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn same_spread(a: Option<Spread>, b: Option<Spread>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a.median, b.median) && same(a.min, b.min) && same(a.max, b.max),
        (a, b) => a == b,
    }
}

fn spread(runs: &[Option<f64>]) -> Option<Spread> {
    Spread::of(&runs.iter().flatten().copied().collect::<Vec<_>>())
}

/// shardcast ÷ each other server, pairing the runs of one round: the
/// machine's speed drifts between rounds more than within one.
fn ratios(servers: &BTreeMap<Column, Series>) -> BTreeMap<Column, Ratio> {
    let Some(ours) = servers.get(&Column::Shardcast) else {
        return BTreeMap::new();
    };
    servers
        .iter()
        .filter(|(col, _)| **col != Column::Shardcast)
        .map(|(col, peer)| {
            let runs: Vec<Option<f64>> = ours
                .runs
                .iter()
                .zip(&peer.runs)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) if *b != 0.0 => Some(a / b),
                    _ => None,
                })
                .collect();
            let spread = spread(&runs);
            (*col, Ratio { runs, spread })
        })
        .collect()
}

/// The suite's figures as it runs them: round by round, server by server.
#[derive(Debug)]
pub struct Collector {
    rounds: usize,
    cells: BTreeMap<&'static str, BTreeMap<Column, Runs>>,
}

impl Collector {
    pub fn new(rounds: u32) -> Collector {
        Collector {
            rounds: rounds as usize,
            cells: BTreeMap::new(),
        }
    }

    /// Records one run's value of figure `id`; `faults` are that run's.
    pub fn put(
        &mut self,
        id: &'static str,
        round: usize,
        col: Column,
        v: Option<f64>,
        faults: u64,
    ) {
        debug_assert!(goals::figure(id).is_some(), "unknown figure {id}");
        let rounds = self.rounds;
        let (runs, f) = self
            .cells
            .entry(id)
            .or_default()
            .entry(col)
            .or_insert_with(|| (vec![None; rounds], 0));
        if let Some(slot) = runs.get_mut(round) {
            *slot = v.filter(|x| x.is_finite());
        }
        *f += faults;
    }

    pub fn get(&self, id: &str, round: usize, col: Column) -> Option<f64> {
        self.cells
            .get(id)?
            .get(&col)?
            .0
            .get(round)
            .copied()
            .flatten()
    }

    /// The figures that got any run, in the table's order.
    pub fn finish(
        mut self,
        provenance: Provenance,
        quick: bool,
        took_s: f64,
        faults: BTreeMap<Column, u64>,
    ) -> Results {
        let figures = goals::FIGURES
            .iter()
            .filter_map(|def| Some(FigureResult::build(def, self.cells.remove(def.id)?)))
            .collect();
        Results {
            format: FORMAT,
            provenance,
            runs_per_figure: self.rounds as u32,
            quick,
            took_s,
            io: epoll(),
            faults,
            figures,
        }
    }
}

fn epoll() -> String {
    "epoll".into()
}

impl Results {
    pub fn figure(&self, id: &str) -> Option<&FigureResult> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// None when there is no file: no full run has been made yet.
    pub fn load(path: &Path) -> Result<Option<Results>, ResultsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ResultsError::Read(path.into(), e)),
        };
        let r: Results =
            serde_json::from_str(&text).map_err(|e| ResultsError::Parse(path.into(), e))?;
        if r.format != FORMAT {
            return Err(ResultsError::Format(path.into(), r.format));
        }
        Ok(Some(r))
    }

    pub fn save(&self, path: &Path) -> Result<(), ResultsError> {
        let write = |e| ResultsError::Write(path.into(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let mut json = serde_json::to_string_pretty(self).expect("plain data serializes");
        json.push('\n');
        std::fs::write(path, json).map_err(write)
    }
}

/// A run to render and test against: three rounds of every server on the
/// figures the README shows, the idle one from the run the goals quote.
#[cfg(test)]
pub(crate) fn example() -> Results {
    let mut c = Collector::new(3);
    type Row = (&'static str, [f64; 3], [f64; 3], [f64; 3]);
    let rows: [Row; 4] = [
        ("idle_bytes", [466.0, 457.0, 480.0], [6900.0; 3], [256.0; 3]),
        (
            "rate_p50",
            [36.1, 35.9, 37.0],
            [36.3, 33.6, 37.0],
            [31.4, 31.1, 32.0],
        ),
        (
            "rate_p99",
            [447.0, 415.0, 500.0],
            [827.0, 177.0, 900.0],
            [1041.0, 154.0, 1100.0],
        ),
        (
            "storm_connect",
            [0.633, 0.628, 0.640],
            [4.46, 4.1, 4.5],
            [2.07, 1.07, 2.1],
        ),
    ];
    for (id, ours, tt, uws) in rows {
        for r in 0..3 {
            c.put(id, r, Column::Shardcast, Some(ours[r]), 0);
            c.put(id, r, Column::Tt, Some(tt[r]), 0);
            c.put(id, r, Column::Uws, Some(uws[r]), 0);
        }
    }
    for (r, v) in [0.839, 0.838, 0.9].into_iter().enumerate() {
        c.put("storm_resume", r, Column::Shardcast, Some(v), 0);
    }
    let provenance = Provenance::sample();
    let faults = [(Column::Shardcast, 0), (Column::Tt, 0), (Column::Uws, 0)].into();
    c.finish(provenance, false, 339.0, faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_the_runs_of_one_round() {
        let mut c = Collector::new(3);
        for (r, (ours, uws)) in [(10.0, 5.0), (30.0, 10.0), (8.0, 8.0)]
            .into_iter()
            .enumerate()
        {
            c.put("rate_cpu", r, Column::Shardcast, Some(ours), 0);
            c.put("rate_cpu", r, Column::Uws, Some(uws), 0);
        }
        let f = FigureResult::build(
            goals::figure("rate_cpu").unwrap(),
            c.cells["rate_cpu"].clone(),
        );
        let ratio = &f.ratios[&Column::Uws];
        assert_eq!(ratio.runs, [Some(2.0), Some(3.0), Some(1.0)]);
        // The median of the ratios, not the ratio of the medians (10 ÷ 8).
        let s = ratio.spread.unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(f.goals.len(), 2);
        assert!(f.goals.iter().all(|g| g.verdict == Verdict::Missed));
        assert_eq!(f.goals[1].moonshot_verdict, Some(Verdict::Missed));
    }

    #[test]
    fn a_round_without_a_value_pairs_with_nothing() {
        let mut c = Collector::new(3);
        c.put("rate_p50", 0, Column::Shardcast, Some(4.0), 0);
        c.put("rate_p50", 1, Column::Shardcast, None, 2);
        c.put("rate_p50", 2, Column::Shardcast, Some(f64::NAN), 0);
        for r in 0..3 {
            c.put("rate_p50", r, Column::Uws, Some(2.0), 0);
        }
        let r = c.finish(example().provenance, false, 1.0, BTreeMap::new());
        let f = r.figure("rate_p50").unwrap();
        let ours = &f.servers[&Column::Shardcast];
        assert_eq!(
            (ours.runs.clone(), ours.faults),
            (vec![Some(4.0), None, None], 2)
        );
        assert_eq!(f.ratios[&Column::Uws].runs, [Some(2.0), None, None]);
        assert_eq!(f.evidence().uws_ratio, Some(2.0));
    }

    #[test]
    fn the_file_reads_back_as_written_and_holds_together() {
        let r = example();
        assert!(r.figures.iter().all(FigureResult::holds_together));
        let dir = shardcast_kit::process::TempDir::new("results");
        let path = dir.0.join("results/latest.json");
        r.save(&path).unwrap();
        let back = Results::load(&path).unwrap().unwrap();
        assert_eq!(back.provenance, r.provenance);
        assert!(back.figures.iter().all(FigureResult::holds_together));
        let text = |r: &Results| crate::figures::benchmarks_block(Some(r));
        assert_eq!(
            text(&back),
            text(&r),
            "what is read back renders as what was written"
        );
        let mut edited = r.figure("idle_bytes").unwrap().clone();
        edited.goals[0].verdict = Verdict::Missed;
        assert!(!edited.holds_together(), "a verdict its runs do not give");
        let mut edited = r.figure("idle_bytes").unwrap().clone();
        edited.servers.get_mut(&Column::Shardcast).unwrap().runs[0] = Some(100.0);
        assert!(!edited.holds_together(), "a median its runs do not give");
        assert_eq!(Results::load(&dir.0.join("none.json")).unwrap(), None);
    }

    #[test]
    fn the_json_names_what_a_reader_looks_for() {
        let v = serde_json::to_value(example()).unwrap();
        for key in [
            "format",
            "commit",
            "dirty",
            "date",
            "cpu",
            "cpus",
            "kernel",
            "runs_per_figure",
            "quick",
            "figures",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let idle = &v["figures"][0];
        assert_eq!(idle["id"], "idle_bytes");
        assert_eq!(idle["servers"]["shardcast"]["spread"]["median"], 466.0);
        assert_eq!(idle["servers"]["uws"]["runs"][2], 256.0);
        assert_eq!(idle["goals"][0]["bound"]["at_most"], 1024.0);
        assert_eq!(idle["goals"][0]["verdict"], "met");
        assert_eq!(idle["goals"][1]["moonshot_verdict"], "missed");
    }
}
