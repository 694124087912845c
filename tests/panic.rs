//! No panic from the outside, and what a panic that happens anyway does: a
//! cluster node that redirects to a slot that does not exist (`MOVED 65535`)
//! is refused and the node stays up; a shard that panics is one JSON log
//! line with a backtrace, and the process exits non-zero.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// One command off a RESP connection: an array of bulk strings, as every
/// client sends. None when the peer is gone or sends something else.
fn read_command(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        parts.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(parts)
}

/// A fake cluster node on `127.0.0.1:0`: at connect it answers as the
/// master of every slot (`ROLE`, `CLUSTER SLOTS`, `SCRIPT LOAD`, `PING`),
/// and to every other command `-MOVED 65535 <itself>`. Returns its port and
/// how many redirects it sent.
fn bad_redirecting_node() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let moved = Arc::new(AtomicU64::new(0));
    let sent = moved.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let sent = sent.clone();
            thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while let Some(cmd) = read_command(&mut r) {
                    let verb = cmd.first().map(|c| c.to_ascii_uppercase());
                    let reply = match verb.as_deref() {
                        Some("ROLE") => "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".to_string(),
                        Some("CLUSTER") => format!(
                            "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$4\r\nfake\r\n"
                        ),
                        Some("SCRIPT") => format!("$40\r\n{}\r\n", "0".repeat(40)),
                        Some("PING") => "+PONG\r\n".to_string(),
                        _ => {
                            sent.fetch_add(1, Ordering::SeqCst);
                            format!("-MOVED 65535 127.0.0.1:{port}\r\n")
                        }
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, moved)
}

#[test]
fn a_redirect_to_slot_65535_is_refused_and_the_node_stays_up() {
    let (port, moved) = bad_redirecting_node();
    let mut server = Server::builder_seeds(&format!("127.0.0.1:{port}"), false)
        .shards(1)
        .start();
    // A counted message is flushed to Redis (EVALSHA), which the node
    // answers with the bad redirect.
    let (mut c, _) = server.connect("");
    assert_eq!(c.count("x"), 1);
    let line = server.wait_log("redis cluster: redirect refused; resetting the link");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("slot 65535"), "{line}");
    assert!(moved.load(Ordering::SeqCst) > 0);
    wait_for(
        "the refused redirect counted",
        Duration::from_secs(10),
        || (server.metric("redis_redirects_total{kind=\"refused\"}") >= 1.0).then_some(()),
    );
    // The node is up: it answers, and sockets connect and count.
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (mut d, _) = server.connect("");
    assert_eq!(d.count("y"), 1);
    assert_eq!(c.count("x"), 2);
    assert_eq!(server.wait_exit(Duration::ZERO), None, "the process exited");
    assert!(
        !server.log_lines().iter().any(|l| l["msg"] == "panic"),
        "a shard panicked"
    );
}

#[test]
fn a_shard_that_panics_logs_its_backtrace_and_the_process_exits_non_zero() {
    let redis = Redis::start();
    let mut server = Server::builder(&redis)
        .shards(1)
        .env("SHARDCAST_DEBUG_PANIC_SHARD", "0")
        .unready()
        .start();
    // The shard panics at the first connection it accepts.
    let _conn = TcpStream::connect(server.addr).unwrap();
    let line = server.wait_log("panic");
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["shard"], 0, "{line}");
    let message = line["panic"].as_str().unwrap_or_default();
    assert!(message.contains("panics on purpose"), "{line}");
    let location = line["location"].as_str().unwrap_or_default();
    assert!(location.contains("shard.rs:"), "{line}");
    let backtrace = line["backtrace"].as_str().unwrap_or_default();
    assert!(
        backtrace.contains("shardcast::shard::run"),
        "no backtrace through the shard: {backtrace}"
    );
    let code = server.wait_exit(Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
}
