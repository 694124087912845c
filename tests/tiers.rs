//! The two test tiers: every file in tests/ belongs to one, and `cargo test`
//! says what it did not run rather than skipping it silently.
//!
//! The fast tier (`cargo test`) needs no service and no root; the full tier
//! (`make test`, the `full-tier` feature) is every test binary Cargo.toml marks
//! `required-features = ["full-tier"]`.

use std::collections::BTreeSet;
use std::path::Path;

/// Test files of the fast tier: they start nothing but the binary itself.
const FAST: &[&str] = &["cli", "in_process", "tiers"];

fn full_tier_binaries() -> BTreeSet<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let tests = doc.get("test").and_then(|t| t.as_array()).cloned();
    let mut full = BTreeSet::new();
    for t in tests.unwrap_or_default() {
        let name = t.get("name").and_then(|n| n.as_str()).unwrap().to_owned();
        let features = t.get("required-features").and_then(|f| f.as_array());
        let gated = features.is_some_and(|f| f.iter().any(|v| v.as_str() == Some("full-tier")));
        assert!(
            gated,
            "Cargo.toml declares test {name} outside the full tier"
        );
        full.insert(name);
    }
    full
}

fn test_files() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect()
}

#[test]
fn every_test_file_is_in_exactly_one_tier() {
    let full = full_tier_binaries();
    let fast: BTreeSet<String> = FAST.iter().map(|s| s.to_string()).collect();
    for name in test_files() {
        assert!(
            full.contains(&name) != fast.contains(&name),
            "tests/{name}.rs: list it in FAST here (needs no service, no root) \
             or in Cargo.toml with required-features = [\"full-tier\"]"
        );
    }
    assert!(full.len() >= 20, "the full tier lost its tests: {full:?}");
}

/// Ignored in the fast tier, with the reason `cargo test` prints; in the full
/// tier it checks that the services those tests start are installed, so a
/// missing one fails here in one line rather than in each test.
#[test]
#[cfg_attr(
    not(feature = "full-tier"),
    ignore = "full tier not built: the test binaries that start redis-server, nginx, \
              Chromium or network namespaces run with `make test`"
)]
fn the_full_tier_has_its_services() {
    // Sentinels are `redis-server --sentinel`.
    for tool in ["redis-server", "redis-cli"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} not on PATH: scripts/setup test installs it");
    }
}
