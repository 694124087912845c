//! The scale-out test at CI size (3 nodes, 1,500 sockets) through
//! `scripts/scale-test`, with its promises about the machine it runs on:
//! every namespace and process it made is gone afterwards, on failure too,
//! and it says clearly when it is not root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;
use serde_json::Value;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scale-test")
}

/// shardcast-bench, built beside this crate's binary by `cargo test --workspace --features shardcast/full-tier`.
fn bench_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast")).with_file_name("shardcast-bench");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace --features shardcast/full-tier` (make test)",
        bin.display()
    );
    bin
}

fn run(out: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .env("SERVER_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .env("BENCH_BIN", bench_bin())
        .env("OUT", out)
        .envs(envs.iter().copied())
        .output()
        .expect("run scripts/scale-test")
}

/// The pids the script said it started ("... pid N on ...").
fn started_pids(stderr: &str) -> Vec<u32> {
    stderr
        .lines()
        .filter_map(|l| l.split(" pid ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

fn namespaces_of(script_pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("scale-{script_pid}-")))
        .map(String::from)
        .collect()
}

/// Runs the script and checks it left nothing behind; returns its output
/// and the pid it ran as (which names its namespaces).
fn run_and_check_cleanup(out: &Path, envs: &[(&str, &str)], args: &[&str]) -> (Output, u32) {
    let o = run(out, envs, args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let pids = started_pids(&stderr);
    assert!(
        !pids.is_empty(),
        "the script names what it starts: {stderr}"
    );
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} outlived the script"
        );
    }
    // The run directory is named after the script's pid, and so are its
    // namespaces.
    let script_pid: u32 = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .next()
        .expect("a run directory");
    assert_eq!(namespaces_of(script_pid), Vec::<String>::new());
    (o, script_pid)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn reduced_scale_test_passes_and_leaves_nothing_behind() {
    assert!(
        is_root(),
        "the scale test builds network namespaces and needs root; run make test as root"
    );
    let out = TempDir::new("scale");
    let (o, pid) = run_and_check_cleanup(
        &out.0,
        &[("N", "1500"), ("NODES", "3"), ("PUBSUB", "sharded")],
        &["--send-interval", "1s"],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "scale-test failed ({:?})\n{stdout}\n{stderr}",
        o.status
    );
    assert!(stderr.contains("PASS: 1500 sockets, 3 nodes"), "{stderr}");
    assert!(stdout.contains("killed"), "one node was killed: {stdout}");

    let report: Value = serde_json::from_slice(
        &std::fs::read(out.0.join(pid.to_string()).join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["sockets"], 1500, "{report}");
    assert_eq!(
        report["nodes"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    let checks = report["assertions"].as_array().expect("assertions");
    assert!(checks.len() >= 8, "{report}");
    for c in checks {
        assert_eq!(c["pass"], true, "{c}");
    }
}

#[test]
fn a_node_that_fails_to_start_leaves_nothing_behind() {
    assert!(is_root(), "needs root, as above");
    let out = TempDir::new("scale-fail");
    let (o, _) =
        run_and_check_cleanup(&out.0, &[("N", "30"), ("NODE_ARGS", "--no-such-flag")], &[]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("node1 exited at start"), "{stderr}");
}

#[test]
fn says_it_needs_root() {
    let out = TempDir::new("scale-noroot");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(script())
        .env("OUT", &out.0)
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(o.stdout.is_empty());
}
