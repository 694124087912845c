//! The JavaScript client (clients/js): its unit tests (pure logic, a fake
//! socket), its built file checked against its source, and one end-to-end
//! scenario (clients/js/test/scenario.mjs) run twice against real servers:
//! in Node with Node's WebSocket, and in headless Chromium from a page of
//! the server's origin loading the `/shardcast.js` the server serves.
//!
//! The scenario's server steps come to this harness on the driver's stdout
//! (`@harness drain|stop|start`) and are answered `ok` on its stdin: every
//! server of a run listens on one port (SO_REUSEPORT), one after another,
//! and broadcasts go through a publisher on another port that stays up.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::node::{chromium, require_node, Reaped};
use common::{Redis, Server, TempDir, TEST_API_KEY};

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// A server of the scenario's port: heartbeats every second (so the
/// client's dead-connection timer is exercised at its real pace), a short
/// drain retry.
fn on_port(redis: &Redis, port: u16, color: &str) -> Server {
    Server::builder(redis)
        .shards(2)
        .arg("--listen", &format!("127.0.0.1:{port}"))
        .arg("--color", color)
        .arg("--heartbeat-interval", "1s")
        .arg("--drain-retry-after", "500ms")
        .arg("--shutdown-grace", "5s")
        .start()
}

/// Runs one driver (`test/node.mjs` or `test/browser.mjs`) through the
/// scenario, doing the server steps it asks for; returns its result line.
fn run_scenario(driver: &str, node_args: &[&str]) -> serde_json::Value {
    let dir = client_dir();
    require_node(&dir);
    let redis = Redis::start();
    let publisher = Server::builder(&redis).arg("--color", "publisher").start();
    let first = on_port(&redis, 0, "blue");
    let port = first.addr.port();
    let mut current = Some(first);
    let mut generation = 0;

    let mut node = Command::new("node");
    node.args(node_args)
        .arg(driver)
        .current_dir(&dir)
        .env(
            "SHARDCAST_WS_URL",
            format!("ws://127.0.0.1:{port}/ws/chat/"),
        )
        .env("SHARDCAST_API_URL", format!("http://{}", publisher.addr))
        .env("SHARDCAST_API_KEY", TEST_API_KEY)
        .env("CHROMIUM", chromium_if(driver))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut node = Reaped(node.spawn().expect("spawn node"));
    let mut stdin = node.0.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = node.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let limit = Duration::from_secs(120);
    let t0 = Instant::now();
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => panic!("{driver}: no result within {limit:?}"),
        };
        let Some((tag, rest)) = line.split_once(' ') else {
            println!("{line}");
            continue;
        };
        match tag {
            "@harness" => {
                println!("[js_client.rs] {driver} asks: {rest}");
                match rest {
                    "drain" => {
                        generation += 1;
                        let next = on_port(&redis, port, &format!("next{generation}"));
                        let mut old = current.replace(next).expect("a server to drain");
                        old.signal("TERM");
                        assert_eq!(
                            old.wait_exit(Duration::from_secs(20)),
                            Some(0),
                            "the drained server's exit"
                        );
                    }
                    "stop" => {
                        let mut old = current.take().expect("a server to stop");
                        old.signal("TERM");
                        assert_eq!(
                            old.wait_exit(Duration::from_secs(20)),
                            Some(0),
                            "the stopped server's exit"
                        );
                    }
                    "start" => {
                        generation += 1;
                        assert!(current.is_none(), "start with a server still up");
                        current = Some(on_port(&redis, port, &format!("next{generation}")));
                    }
                    other => panic!("{driver} asked for an unknown step {other:?}"),
                }
                writeln!(stdin, "ok").unwrap();
            }
            "@result" => {
                let status = node.0.wait().unwrap();
                assert!(status.success(), "{driver} exited {status}");
                return serde_json::from_str(rest).unwrap();
            }
            "@failed" => panic!("{driver}: {}", rest.replace(" | ", "\n")),
            _ => println!("{line}"),
        }
    }
}

/// The browser driver's Chromium; the Node one needs none.
fn chromium_if(driver: &str) -> PathBuf {
    if driver.contains("browser") {
        chromium()
    } else {
        PathBuf::new()
    }
}

/// Node's flags for its own WebSocket: none from Node 22, which has it; a
/// flag before (a later Node may refuse the flag).
fn websocket_flags() -> &'static [&'static str] {
    let has = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if has {
        &[]
    } else {
        &["--experimental-websocket", "--no-warnings"]
    }
}

#[test]
fn the_client_in_node_rides_a_drain_and_a_restart_and_recovers_what_it_missed() {
    let r = run_scenario("test/node.mjs", websocket_flags());
    println!("[js_client.rs] node: {r}");
    assert_eq!(r["welcomes"], 3, "{r}");
}

#[test]
fn the_client_in_chromium_rides_a_drain_and_a_restart_and_recovers_what_it_missed() {
    let r = run_scenario("test/browser.mjs", &[]);
    println!("[js_client.rs] chromium: {r}");
    assert_eq!(r["welcomes"], 3, "{r}");
    assert!(
        r["userAgent"].as_str().unwrap_or("").contains("Chrome"),
        "{r}"
    );
}

#[test]
fn the_clients_unit_tests_pass() {
    let dir = client_dir();
    require_node(&dir);
    let status = Command::new("node")
        .args(["--test", "test/unit.test.mjs"])
        .current_dir(&dir)
        .status()
        .expect("run node --test");
    assert!(status.success(), "the client's unit tests failed");
}

/// `dist/` is what the server serves and what npm would publish: it must
/// be what the TypeScript source builds to (`npm run build` after a change).
#[test]
fn the_built_client_is_its_source_built() {
    let dir = client_dir();
    require_node(&dir);
    let out = TempDir::new("client-build");
    let status = Command::new("node")
        .args([
            "node_modules/typescript/bin/tsc",
            "-p",
            "tsconfig.json",
            "--outDir",
        ])
        .arg(&out.0)
        .current_dir(&dir)
        .status()
        .expect("run tsc");
    assert!(status.success(), "tsc failed on clients/js/src");
    for file in ["shardcast.js", "shardcast.d.ts"] {
        let built = std::fs::read_to_string(out.0.join(file)).unwrap();
        let kept = std::fs::read_to_string(dir.join("dist").join(file)).unwrap();
        assert!(
            built == kept,
            "clients/js/dist/{file} is stale: run `npm run build` in clients/js and commit it"
        );
    }
}
