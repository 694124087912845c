//! Protocol conformance: the Autobahn test suite's cases 1-7, 9 and 10 (driven
//! by kosoku, from PyPI) against the service's own transport (the shard's
//! plane: its reads, decoder, write queues and close), with the
//! `--conformance-echo` handler in place of the counter. Every case must end OK, NON-STRICT
//! or INFORMATIONAL. Cases 12-13 test permessage-deflate, which the service
//! does not offer. The reports are kept in target/autobahn/.
mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn autobahn_cases_pass() {
    let redis = Redis::not_started(); // echo sockets never touch Redis
    let server = Server::builder(&redis)
        .arg("--conformance-echo", "true")
        .arg("--max-message-bytes", "67108864")
        .start();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/autobahn");
    let _ = std::fs::remove_dir_all(&out_dir);
    // Through python3 rather than the `kosoku` script, which pip may put in
    // a directory that is not on PATH.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys; from kosoku._cli import main; sys.argv[0] = 'kosoku'; sys.exit(main())",
    ]);
    cmd.args(["-p", "8", "-o"]).arg(&out_dir);
    for cases in [
        "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
    ] {
        cmd.args(["-i", cases]);
    }
    cmd.arg(server.addr.to_string());
    let out = cmd
        .output()
        .expect("python3 with kosoku (python3 -m pip install kosoku==0.1.0)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let index: Value = serde_json::from_slice(
        &std::fs::read(out_dir.join("index.json"))
            .unwrap_or_else(|e| panic!("no report ({e}); kosoku said:\n{text}")),
    )
    .unwrap();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for cases in index.as_object().unwrap().values() {
        for (id, case) in cases.as_object().unwrap() {
            for key in ["behavior", "behaviorClose"] {
                let b = case[key].as_str().unwrap_or("?").to_string();
                if key == "behavior" {
                    *outcomes.entry(b.clone()).or_default() += 1;
                }
                if !matches!(b.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL") {
                    failed.push(format!("{id} {key}={b}"));
                }
            }
        }
    }
    let total: u64 = outcomes.values().sum();
    eprintln!("autobahn: {total} cases: {outcomes:?}");
    assert!(total >= 300, "only {total} cases ran:\n{text}");
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
