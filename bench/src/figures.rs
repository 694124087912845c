//! The text of a suite run wherever people read it: its section of
//! `bench/RESULTS.md`, the headline table in README.md and the full table in
//! docs/BENCHMARKS.md, the last two between marker lines and made only from
//! `bench/results/latest.json` (`shardcast-bench figures`, `make figures`).
//! Rendering is pure: results in, text out.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::goals::{self, Bound, Verdict};
use crate::report::bytes;
use crate::results::{Column, FigureResult, GoalResult, Results, ResultsError};
use crate::stats::Spread;

/// Where the suite writes its latest full run, from the repository's root.
pub const LATEST: &str = "bench/results/latest.json";
pub const BEGIN: &str = "<!-- figures:begin -->";
pub const END: &str = "<!-- figures:end -->";

/// What fills a document's block: the latest run, or None before any.
pub type Render = fn(Option<&Results>) -> String;

/// The documents whose blocks are generated, and what fills each.
pub const TARGETS: [(&str, Render); 2] = [
    ("README.md", readme_block),
    ("docs/BENCHMARKS.md", benchmarks_block),
];

/// The README's rows: what the data-plane goals are about.
const HEADLINE: [&str; 6] = [
    "rate_p50",
    "rate_p99",
    "rate_cpu",
    "closed_cpu",
    "idle_bytes",
    "storm_connect",
];

#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("needs one line `{BEGIN}` and, after it, one line `{END}`")]
    Markers,
    #[error("{0}: {1}")]
    Doc(PathBuf, Box<FiguresError>),
}

#[derive(Debug, clap::Args)]
pub struct FiguresArgs {
    /// The repository's root: the results file and the documents are found from it.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
}

/// `shardcast-bench figures`: rewrites each target's block from the latest
/// run (or says there is none yet).
pub fn main(args: &FiguresArgs) -> Result<ExitCode, FiguresError> {
    let results = Results::load(&args.root.join(LATEST))?;
    for (doc, render) in TARGETS {
        let path = args.root.join(doc);
        let text = read_or_start(&path)?;
        let new = replace_block(&text, &render(results.as_ref()))
            .map_err(|e| FiguresError::Doc(path.clone(), Box::new(e)))?;
        if new != text {
            std::fs::write(&path, new).map_err(|e| FiguresError::Io(path.clone(), e))?;
            eprintln!("figures: {doc} rewritten from {LATEST}");
        } else {
            eprintln!("figures: {doc} already agrees with {LATEST}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A document that is not there yet starts as a heading and the markers.
fn read_or_start(path: &Path) -> Result<String, FiguresError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(format!("# Benchmarks\n\n{BEGIN}\n{END}\n"))
        }
        Err(e) => Err(FiguresError::Io(path.into(), e)),
    }
}

/// `doc` with the lines between its markers replaced by `block`.
pub fn replace_block(doc: &str, block: &str) -> Result<String, FiguresError> {
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        return Err(FiguresError::Markers);
    };
    if e < b || doc.matches(BEGIN).count() != 1 || doc.matches(END).count() != 1 {
        return Err(FiguresError::Markers);
    }
    Ok(format!(
        "{}{BEGIN}\n{block}{END}{}",
        &doc[..b],
        &doc[e + END.len()..]
    ))
}

/// Appends a run's section to `bench/RESULTS.md`, starting the file if need be.
pub fn append_section(path: &Path, section: &str) -> Result<(), FiguresError> {
    let header = "# Bench results\n\nAppended by `make bench` (`shardcast-bench suite`): each \
                  section is one run of the standard suite on the machine it names. Compare \
                  figures only within a section: the machines this runs on change speed between \
                  runs.\n";
    let io = |e| FiguresError::Io(path.into(), e);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    if f.metadata().map_err(io)?.len() == 0 {
        f.write_all(header.as_bytes()).map_err(io)?;
    }
    f.write_all(section.as_bytes()).map_err(io)
}

const NO_RUN: &str = "No full run yet: `make bench`.\n";

pub fn readme_block(r: Option<&Results>) -> String {
    let Some(r) = r else {
        return NO_RUN.into();
    };
    let mut s = String::from(
        "| figure | shardcast | uWS | tt | shardcast ÷ uWS | goals |\n|---|---|---|---|---|---|\n",
    );
    for id in HEADLINE {
        let Some(f) = r.figure(id) else {
            let name = goals::figure(id).map_or(id, |d| d.name);
            let _ = writeln!(s, "| {name} | - | - | - | - | not measured |");
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            server_cell(f, Column::Shardcast),
            server_cell(f, Column::Uws),
            server_cell(f, Column::Tt),
            ratio_cell(f, Column::Uws),
            goals_cell(&f.goals, &f.unit)
        );
    }
    let _ = writeln!(
        s,
        "\n{} All figures and goals: `docs/BENCHMARKS.md`.",
        measured_line(r)
    );
    s
}

pub fn benchmarks_block(r: Option<&Results>) -> String {
    match r {
        None => NO_RUN.into(),
        Some(r) => format!("{}\n\n{}", measured_line(r), full(r)),
    }
}

/// The run's section of `bench/RESULTS.md`.
pub fn section(r: &Results) -> String {
    let p = &r.provenance;
    format!(
        "\n## {} · commit {} · {} · Linux {} · shardcast on {}{}\n\n{}",
        p.date,
        p.commit_label(),
        p.machine(),
        p.kernel,
        r.io,
        if r.quick {
            " · QUICK (reduced sizes)"
        } else {
            ""
        },
        full(r)
    )
}

fn measured_line(r: &Results) -> String {
    let p = &r.provenance;
    format!(
        "Measured on {}, {}, {}, kernel {}, shardcast on {}{}; median of {} runs (min–max).",
        p.commit_label(),
        p.date,
        p.machine(),
        p.kernel,
        r.io,
        if r.quick {
            ", QUICK (reduced sizes)"
        } else {
            ""
        },
        r.runs_per_figure
    )
}

/// The whole table, the run's conditions and every goal with its verdict.
fn full(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} runs per figure: median (min–max). A ratio is shardcast ÷ the other server, run by \
         run within a round (the servers of a round run back to back), median (min–max) over \
         the rounds. Suite took {:.0} s; faults: {}. Pinned: server on CPU 1, generator and \
         redis-server on CPU 0. tt: tokio-tungstenite 0.30 baseline, 4 KiB buffers. {}\n",
        r.runs_per_figure,
        r.took_s,
        faults_text(r),
        if r.faults.contains_key(&Column::Uws) {
            "uws: uWebSockets peer `uws-counter`, one thread."
        } else {
            "uws: skipped, its binary was missing."
        }
    );
    s.push_str(
        "| figure | shardcast | tt | uws | shardcast ÷ tt | shardcast ÷ uws | goals |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for f in &r.figures {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            server_cell(f, Column::Shardcast),
            server_cell(f, Column::Tt),
            server_cell(f, Column::Uws),
            ratio_cell(f, Column::Tt),
            ratio_cell(f, Column::Uws),
            goals_cell(&f.goals, &f.unit)
        );
    }
    s.push_str(&goals_list(r));
    s
}

fn faults_text(r: &Results) -> String {
    let mut parts: Vec<String> = r
        .faults
        .iter()
        .map(|(col, n)| format!("{n} against {}", column_name(*col)))
        .collect();
    if !r.faults.contains_key(&Column::Uws) {
        parts.push("uws skipped".into());
    }
    parts.join(", ")
}

fn column_name(c: Column) -> &'static str {
    match c {
        Column::Shardcast => "shardcast",
        Column::Tt => "tt",
        Column::Uws => "uws",
    }
}

/// Each goal's text once, verbatim, with every figure it holds and its verdict.
fn goals_list(r: &Results) -> String {
    let mut texts: Vec<(&str, &str)> = Vec::new();
    for g in r.figures.iter().flat_map(|f| &f.goals) {
        if !texts.iter().any(|(_, t)| *t == g.text) {
            texts.push((g.source.label(), &g.text));
        }
    }
    if texts.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nGoals, in the words that set them; each is judged on the median of the runs, a ratio \
         goal on the median of the per-round ratios:\n\n",
    );
    for (label, text) in texts {
        let _ = writeln!(s, "- {label}: “{text}”");
        for f in &r.figures {
            for g in f.goals.iter().filter(|g| g.text == text) {
                let value = match g.bound {
                    Bound::UwsRatioAtMost(_) => format!("{} uws", ratio_cell(f, Column::Uws)),
                    _ => server_cell(f, Column::Shardcast),
                };
                let _ = writeln!(s, "  - {}: {value}: {}", f.name, verdict_text(g, &f.unit));
            }
        }
    }
    s
}

fn server_cell(f: &FigureResult, col: Column) -> String {
    let spread = f.servers.get(&col).and_then(|s| s.spread);
    spread_cell(spread, |v| fmt_value(v, &f.unit))
}

fn ratio_cell(f: &FigureResult, col: Column) -> String {
    let spread = f.ratios.get(&col).and_then(|r| r.spread);
    spread_cell(spread, |v| format!("{v:.2}x"))
}

/// `median (min–max)`, the range without its unit when it shares the
/// median's; one value alone when the runs agree to the digit.
pub fn spread_cell(s: Option<Spread>, fmt: impl Fn(f64) -> String) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let (m, lo, hi) = (fmt(s.median), fmt(s.min), fmt(s.max));
    if lo == hi {
        return m;
    }
    let (_, unit) = split_unit(&m);
    match (split_unit(&lo), split_unit(&hi)) {
        ((l, ul), (h, uh)) if ul == unit && uh == unit => format!("{m} ({l}–{h})"),
        _ => format!("{m} ({lo}–{hi})"),
    }
}

/// "466 B" → ("466", " B"); "1.82x" → ("1.82", "x").
fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    s.split_at(at)
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "B" => bytes(v),
        "/s" => format!("{v:.0}/s"),
        "%" => format!("{v:.2}%"),
        "x" => format!("{v:.2}x"),
        "s" => format!("{v:.3} s"),
        _ => format!("{v:.2} {unit}"),
    }
}

/// "goal ≤ 1 KiB: met, moonshot ≤ 512 B: met; next goal ≤ 384 B: **missed**".
fn goals_cell(goals: &[GoalResult], unit: &str) -> String {
    goals
        .iter()
        .map(|g| format!("{} {}", g.source.label(), verdict_text(g, unit)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn verdict_text(g: &GoalResult, unit: &str) -> String {
    let clean = if g.clean { ", no faults" } else { "" };
    let mut s = format!(
        "{}{clean}: {}",
        bound_text(g.bound, unit),
        verdict_word(g.verdict)
    );
    if let (Some(m), Some(v)) = (g.moonshot, g.moonshot_verdict) {
        let _ = write!(s, ", moonshot {}: {}", bound_text(m, unit), verdict_word(v));
    }
    s
}

fn verdict_word(v: Verdict) -> String {
    match v {
        Verdict::Missed => format!("**{}**", v.word()),
        _ => v.word().into(),
    }
}

/// A bound as the goals say it: "≤ 1 KiB", "≤ 1.0x uWS", "≥ 1.8x", "≤ 2 s".
pub fn bound_text(b: Bound, unit: &str) -> String {
    let amount = |v: f64| match unit {
        "B" if v >= 1024.0 && v % 1024.0 == 0.0 => format!("{} KiB", v / 1024.0),
        "x" | "%" => format!("{v}{unit}"),
        _ => format!("{v} {unit}"),
    };
    match b {
        Bound::AtMost(v) => format!("≤ {}", amount(v)),
        Bound::AtLeast(v) => format!("≥ {}", amount(v)),
        Bound::UwsRatioAtMost(k) => format!("≤ {k:.1}x uWS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::example;

    #[test]
    fn a_cell_is_the_median_with_its_range() {
        let s = |median, min, max| Some(Spread { median, min, max });
        let b = |v| fmt_value(v, "B");
        assert_eq!(spread_cell(s(466.0, 457.0, 480.0), b), "466 B (457–480)");
        assert_eq!(
            spread_cell(s(990.0, 900.0, 1100.0), b),
            "990 B (900 B–1.1 KB)"
        );
        assert_eq!(spread_cell(s(256.0, 256.0, 256.0), b), "256 B");
        let secs = |v| fmt_value(v, "s");
        assert_eq!(
            spread_cell(s(0.633, 0.628, 0.64), secs),
            "0.633 s (0.628–0.640)"
        );
        let x = |v| format!("{v:.2}x");
        assert_eq!(spread_cell(s(1.15, 1.1, 1.2), x), "1.15x (1.10–1.20)");
        assert_eq!(spread_cell(None, x), "-");
    }

    #[test]
    fn bounds_read_as_the_goals_write_them() {
        assert_eq!(bound_text(Bound::AtMost(1024.0), "B"), "≤ 1 KiB");
        assert_eq!(bound_text(Bound::AtMost(384.0), "B"), "≤ 384 B");
        assert_eq!(bound_text(Bound::AtLeast(1.8), "x"), "≥ 1.8x");
        assert_eq!(bound_text(Bound::AtMost(2.0), "s"), "≤ 2 s");
        assert_eq!(bound_text(Bound::AtMost(2.0), "µs"), "≤ 2 µs");
        assert_eq!(bound_text(Bound::AtLeast(100.0), "%"), "≥ 100%");
        assert_eq!(bound_text(Bound::UwsRatioAtMost(0.8), "µs"), "≤ 0.8x uWS");
    }

    #[test]
    fn idle_shows_both_goals_and_both_moonshots() {
        let r = example();
        let idle = r.figure("idle_bytes").unwrap();
        assert_eq!(
            goals_cell(&idle.goals, "B"),
            "goal ≤ 1 KiB: met, moonshot ≤ 512 B: met; \
             next goal ≤ 384 B: **missed**, moonshot ≤ 256 B: **missed**"
        );
    }

    #[test]
    fn the_readme_block_is_the_headline_and_where_it_was_measured() {
        let block = readme_block(Some(&example()));
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 2 + HEADLINE.len() + 2, "{block}");
        assert!(block.contains(
            "| idle 19K sockets: userspace bytes per socket | 466 B (457–480) | 256 B | \
             6.9 KB | 1.82x (1.79–1.88) |"
        ));
        // No closed-loop run in the example: its row says so.
        assert!(block.contains(
            "| closed loop 100 sockets, 1 shard pinned: server µs per reply | - | - | - | - | \
             not measured |"
        ));
        assert!(block.contains(
            "Measured on 196cb85, 2026-12-03 22:17 UTC, AMD EPYC 7B13 × 2, kernel 6.18.44, shardcast on epoll; \
             median of 3 runs (min–max)."
        ));
        assert_eq!(readme_block(None), NO_RUN);
    }

    #[test]
    fn the_full_block_quotes_each_goal_once_with_its_verdicts() {
        let block = benchmarks_block(Some(&example()));
        let storm = "- goal: “storm with resume from Redis, 10K: ≤ 2 s, every count exact”";
        assert_eq!(block.matches(storm).count(), 1, "{block}");
        assert!(block.contains(
            "  - storm 10K: all resumed from Redis, counts exact: 0.839 s (0.838–0.900): \
             ≤ 2 s, no faults: met"
        ));
        assert!(block.contains(
            "  - rate 10K sockets, 20K msgs/s, 1 shard pinned: RTT p50: 1.15x (1.15–1.16) uws: \
             ≤ 1.0x uWS: **missed**"
        ));
        assert!(block.contains("faults: 0 against shardcast, 0 against tt, 0 against uws."));
        assert!(!block.contains("with local changes"));
    }

    #[test]
    fn a_dirty_or_quick_run_says_so_everywhere() {
        let mut r = example();
        r.provenance.dirty = true;
        r.quick = true;
        for text in [
            readme_block(Some(&r)),
            benchmarks_block(Some(&r)),
            section(&r),
        ] {
            assert!(text.contains("196cb85 (with local changes)"), "{text}");
            assert!(text.contains("QUICK (reduced sizes)"), "{text}");
        }
    }

    #[test]
    fn blocks_replace_only_what_the_markers_hold() {
        let doc = format!("# T\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n");
        let new = replace_block(&doc, "new\n").unwrap();
        assert_eq!(new, format!("# T\n\nbefore\n{BEGIN}\nnew\n{END}\nafter\n"));
        assert_eq!(replace_block(&new, "new\n").unwrap(), new, "idempotent");
        for bad in [
            "no markers".to_string(),
            format!("{END}\n{BEGIN}\n"),
            format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"),
        ] {
            assert!(matches!(
                replace_block(&bad, "x\n"),
                Err(FiguresError::Markers)
            ));
        }
    }
}
