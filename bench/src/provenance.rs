//! Where and on what a suite run happened: the commit and whether the tree
//! held changes HEAD does not, the UTC date, the CPU and the kernel. A run
//! from a changed tree is refused unless asked for, and then says so in every
//! output, so that its figures can never pass as HEAD's.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(
        "cannot tell which commit this is ({0}); `--allow-dirty` runs anyway, \
         marked \"with local changes\""
    )]
    Git(String),
    #[error(
        "the tree has local changes ({}): its figures would not be HEAD's; commit or stash \
         them, or run `ALLOW_DIRTY=1 make bench` (`shardcast-bench suite --allow-dirty`), \
         and every output says \"with local changes\"",
        .0.join(", ")
    )]
    Dirty(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// HEAD's short hash.
    pub commit: String,
    /// The tree held changes that HEAD does not.
    pub dirty: bool,
    /// When the suite started, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The CPU's model name, as /proc/cpuinfo gives it.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
}

impl Provenance {
    /// A fixed one, for the unit tests of everything that prints it.
    #[cfg(test)]
    pub fn sample() -> Provenance {
        Provenance {
            commit: "196cb85".into(),
            dirty: false,
            date: "2026-12-03 22:17 UTC".into(),
            cpu: "AMD EPYC 7B13".into(),
            cpus: 2,
            kernel: "6.18.44".into(),
        }
    }

    /// The commit as every output names it.
    pub fn commit_label(&self) -> String {
        if self.dirty {
            format!("{} (with local changes)", self.commit)
        } else {
            self.commit.clone()
        }
    }

    pub fn machine(&self) -> String {
        format!("{} × {}", self.cpu, self.cpus)
    }
}

/// Checks the tree, then reads the rest from this machine. With
/// `allow_dirty`, a changed tree (or no git at all) is recorded instead of
/// refused.
pub fn establish(allow_dirty: bool) -> Result<Provenance, ProvenanceError> {
    let state = git(&["status", "--porcelain=v1"])
        .map(|s| local_changes(&s))
        .and_then(|changes| Ok((git(&["rev-parse", "--short", "HEAD"])?, changes)));
    let (commit, dirty) = match state {
        Ok((commit, changes)) if changes.is_empty() => (commit, false),
        Ok((commit, _)) if allow_dirty => (commit, true),
        Ok((_, mut changes)) => {
            // The first few name the problem; a whole list would bury the advice.
            changes.truncate(5);
            return Err(ProvenanceError::Dirty(changes));
        }
        Err(_) if allow_dirty => ("unknown".into(), true),
        Err(e) => return Err(e),
    };
    Ok(Provenance {
        commit,
        dirty,
        date: utc_now(),
        cpu: cpu_model(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_string()),
    })
}

/// The paths in `git status --porcelain` output that make the tree differ
/// from HEAD: every line but untracked files under run/ and target/, which
/// hold what runs leave behind and never what a build reads.
pub fn local_changes(porcelain: &str) -> Vec<String> {
    porcelain
        .lines()
        .filter(|l| l.len() > 3)
        .filter(|l| {
            let path = &l[3..];
            !(l.starts_with("??") && (path.starts_with("run/") || path.starts_with("target/")))
        })
        .map(|l| l[3..].to_string())
        .collect()
}

fn git(args: &[&str]) -> Result<String, ProvenanceError> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| ProvenanceError::Git(format!("git: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(ProvenanceError::Git(why.trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_run_and_target_leftovers_keep_a_tree_clean() {
        let status = "?? run/redis/6379/dump.rdb\n?? target/bench/01-idle.json\n";
        assert!(local_changes(status).is_empty());
        assert!(local_changes("").is_empty());
        let status = " M src/ws/plane.rs\nM  bench/src/suite.rs\n?? build.rs\n?? run/x\n";
        assert_eq!(
            local_changes(status),
            ["src/ws/plane.rs", "bench/src/suite.rs", "build.rs"]
        );
        // A tracked file under run/ or target/ that changed still counts.
        assert_eq!(local_changes(" M run/keep.md\n"), ["run/keep.md"]);
    }

    #[test]
    fn a_changed_tree_says_so_wherever_it_is_named() {
        let mut p = Provenance::sample();
        assert_eq!(p.commit_label(), "196cb85");
        assert_eq!(p.machine(), "AMD EPYC 7B13 × 2");
        p.dirty = true;
        assert_eq!(p.commit_label(), "196cb85 (with local changes)");
    }

    #[test]
    fn the_refusal_says_how_to_override() {
        let e = ProvenanceError::Dirty(vec!["src/a.rs".into(), "b".into()]);
        let text = e.to_string();
        assert!(text.contains("(src/a.rs, b)"), "{text}");
        assert!(text.contains("ALLOW_DIRTY=1 make bench"), "{text}");
        assert!(text.contains("--allow-dirty"), "{text}");
    }
}
