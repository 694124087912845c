//! The generator against a small in-test server: a run against an honest
//! server is clean, and a server that skips a count, or that closes sockets
//! on its own, makes the run fail with the matching fault.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;

use serde_json::Value;
use tungstenite::Message;

#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Answers the 5th message of each socket with a count one too high.
    SkipsACount,
    /// Closes every socket with 1011 after its 3rd message.
    Hangs,
}

/// A contract-shaped server on tungstenite: welcome, then one count per text.
fn serve(b: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                let welcome = r#"{"session_id":"0b7d2a4e-5c1f-4e8a-9d3b-6f2e1a0c9b8d","count":0,"resumed":false}"#;
                if ws.send(Message::text(welcome)).is_err() {
                    return;
                }
                let mut n = 0u64;
                while let Ok(msg) = ws.read() {
                    if !msg.is_text() {
                        continue;
                    }
                    n += 1;
                    let shown = match b {
                        Behaviour::SkipsACount if n == 5 => n + 1,
                        _ => n,
                    };
                    if matches!(b, Behaviour::Hangs) && n == 3 {
                        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                            code: 1011.into(),
                            reason: "".into(),
                        }));
                        let _ = ws.flush();
                        return;
                    }
                    if ws
                        .send(Message::text(format!("{{\"count\":{shown}}}")))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Runs a short throughput run and returns its exit code and JSON report.
fn bench(addr: SocketAddr) -> (i32, Value) {
    let dir = std::env::temp_dir().join(format!(
        "shardcast-bench-test-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast-bench"))
        .args(["throughput", &format!("ws://{addr}/ws/chat/")])
        .args([
            "-n",
            "4",
            "--window",
            "2",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
        ])
        .args(["--timeout", "3s", "--no-bye", "--quiet", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap(), report)
}

#[test]
fn an_honest_server_gives_a_clean_run() {
    let (code, r) = bench(serve(Behaviour::Honest));
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["fault_total"], 0);
    assert_eq!(r["connected"], 4);
    assert!(r["counters"]["replies"].as_u64().unwrap() > 8, "{r:#}");
    assert_eq!(r["counters"]["sent"], r["counters"]["replies"]);
}

#[test]
fn a_skipped_count_fails_the_run() {
    let (code, r) = bench(serve(Behaviour::SkipsACount));
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["faults"]["count_mismatch"], 4, "{r:#}");
}

#[test]
fn a_server_that_closes_on_its_own_fails_the_run() {
    let (code, r) = bench(serve(Behaviour::Hangs));
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["faults"]["unexpected_close"], 4, "{r:#}");
}
