//! The figures people read are the latest full run's: README.md's and
//! docs/BENCHMARKS.md's generated blocks are exactly what the generator makes
//! from bench/results/latest.json, and that file is a full run of a committed
//! tree whose medians and verdicts follow from its own runs. With no run yet,
//! the blocks must say so. Reads files only: no Redis, no root.

use std::path::{Path, PathBuf};

use shardcast_bench::figures::{self, LATEST, TARGETS};
use shardcast_bench::results::{FigureResult, Results};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn latest() -> Option<Results> {
    Results::load(&root().join(LATEST))
        .unwrap_or_else(|e| panic!("{e}: rerun `make bench`, or restore it from git"))
}

#[test]
fn the_documents_show_what_latest_json_holds() {
    let results = latest();
    for (doc, render) in TARGETS {
        let text = std::fs::read_to_string(root().join(doc))
            .unwrap_or_else(|e| panic!("{doc}: {e}: run `make figures`"));
        let want = figures::replace_block(&text, &render(results.as_ref()))
            .unwrap_or_else(|e| panic!("{doc}: {e}: put them back, then run `make figures`"));
        assert!(
            text == want,
            "{doc}: its figures are not what {LATEST} gives: run `make figures`"
        );
    }
}

#[test]
fn latest_json_is_a_full_run_of_a_committed_tree() {
    let Some(r) = latest() else {
        return;
    };
    let p = &r.provenance;
    assert!(
        !p.dirty,
        "{LATEST} is from a tree with local changes on {}: its figures are not a commit's; \
         run `make bench` on a clean tree",
        p.commit
    );
    assert!(!r.quick, "{LATEST} is a --quick run: run `make bench`");
    assert!(
        r.runs_per_figure >= 3,
        "{LATEST}: fewer than 3 runs per figure"
    );
    for f in &r.figures {
        assert!(
            FigureResult::holds_together(f),
            "{LATEST}: {}: its medians, ratios or verdicts are not what its runs give",
            f.id
        );
    }
}
