//! Draining on SIGTERM: every open socket gets its shutdown goodbye with a
//! jittered `retry_after_ms` and Close 1001, `/readyz` says `draining` while
//! it runs, every count is in Redis, and the process exits 0 within the grace
//! period; a second SIGINT exits at once.
mod common;
use common::*;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

const SOCKETS: usize = 500;
/// Sockets that never answer the server's Close, so the drain stays open.
const HELD: usize = 3;

/// The frames before the server's Close, minus heartbeats and broadcasts
/// (they may legitimately arrive first), and the Close code.
fn drain_frames(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let (before, code) = c.until_close();
    let texts = before
        .iter()
        .map(Frame::json)
        .filter(|v| v.get("ts").is_none() && v.get("broadcast").is_none())
        .collect();
    (texts, code)
}

/// Answers the server's Close. The server may already be gone, which is not
/// what this test is about, so a failed write is ignored.
fn echo_close(c: &mut Client, code: u16) {
    let _ = c
        .stream
        .write_all(&Client::frame(0x88, &code.to_be_bytes()));
}

/// Sends `GET /readyz` on a connection opened earlier; None if the server
/// dropped that connection instead of answering.
fn readyz_on(mut s: TcpStream) -> Option<(u16, Value)> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let (status, body) = raw_response(&mut s);
    (status != 0).then(|| (status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// A fresh `GET /readyz`; None when the connection is refused or reset.
fn readyz_fresh(addr: SocketAddr) -> Option<(u16, Value)> {
    readyz_on(TcpStream::connect(addr).ok()?)
}

#[test]
fn sigterm_drains_every_socket_and_keeps_every_count() {
    let redis = Redis::start();
    let grace = Duration::from_secs(3);
    let mut server = Server::builder(&redis)
        .shards(2)
        .arg("--shutdown-grace", "3s")
        .start();

    let mut socks: Vec<(Client, String, u64)> = (0..SOCKETS)
        .map(|_| {
            let (c, w) = server.connect("");
            (c, w["session_id"].as_str().unwrap().to_string(), 0)
        })
        .collect();
    // Connections that will ask for /readyz once the drain runs. Opened
    // before the counting round trips below, so the shards have accepted
    // them long before their listeners close.
    let probes: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for (i, (c, _, want)) in socks.iter_mut().enumerate() {
        for n in 1..=(i % 5) as u64 {
            assert_eq!(c.count("x"), n);
        }
        *want = (i % 5) as u64;
    }
    let (_, status) = server.get("/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    let per_shard: Vec<u64> =
        serde_json::from_value(status["connections_per_shard"].clone()).unwrap();
    assert_eq!(per_shard.iter().sum::<u64>(), SOCKETS as u64, "{status}");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "sockets not spread over both shards: {per_shard:?}"
    );

    let t0 = Instant::now();
    server.signal("TERM");

    // The first goodbye proves the drain has begun; readiness must say so
    // from then on.
    let (first, code) = drain_frames(&mut socks[0].0);
    assert_eq!(code, Some(1001), "{first:?}");
    echo_close(&mut socks[0].0, 1001);

    let answered: Vec<(u16, Value)> = probes.into_iter().filter_map(readyz_on).collect();
    assert!(!answered.is_empty(), "no /readyz answered during the drain");
    for (code, body) in &answered {
        assert_eq!(
            (*code, &body["status"]),
            (503, &Value::from("draining")),
            "{body}"
        );
    }
    // The listeners close during a drain, so a refused connection is the
    // load balancer's not-ready too; what must never come back is a 200.
    for _ in 0..20 {
        match readyz_fresh(server.addr) {
            Some((code, body)) => assert_eq!(
                (code, &body["status"]),
                (503, &Value::from("draining")),
                "{body}"
            ),
            None => break,
        }
    }

    let mut retries = Vec::new();
    for (i, (c, id, want)) in socks.iter_mut().enumerate() {
        let (texts, code) = if i == 0 {
            (first.clone(), Some(1001))
        } else {
            drain_frames(c)
        };
        assert_eq!(code, Some(1001), "socket {i}: {texts:?}");
        assert_eq!(
            texts.len(),
            1,
            "socket {i}: exactly one goodbye before the Close: {texts:?}"
        );
        let bye = texts[0].as_object().unwrap();
        let keys: BTreeSet<&str> = bye.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["bye", "total", "reason", "retry_after_ms"]),
            "{bye:?}"
        );
        assert_eq!(bye["bye"], true);
        assert_eq!(bye["reason"], "shutdown");
        assert_eq!(bye["total"], *want, "socket {i} (session {id})");
        retries.push(
            bye["retry_after_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("retry_after_ms: {bye:?}")),
        );
        if i != 0 && i < SOCKETS - HELD {
            echo_close(c, 1001);
        }
    }
    let distinct: BTreeSet<u64> = retries.iter().copied().collect();
    assert!(
        distinct.len() >= 10,
        "retry_after_ms is not jittered: {distinct:?}"
    );

    let code = server.wait_exit(grace + Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "exit code after a drain (took {took:?})");
    // The grace is the server's promise from the signal's arrival, so it
    // is judged on the server's clock: this test's clock adds the signal's
    // delivery and its own polling, which under load are not the server's.
    let stopped = server.wait_log("stopped");
    let shutdown_ms = stopped["shutdown_ms"].as_u64().expect("shutdown_ms");
    assert!(
        shutdown_ms <= grace.as_millis() as u64,
        "the drain took {shutdown_ms} ms, over the {grace:?} grace period: {stopped}"
    );
    // The sockets that never answered our Close were waited for until the
    // last half second of the grace, which is kept for the final flush.
    assert!(
        shutdown_ms + 1000 >= grace.as_millis() as u64,
        "held sockets let the drain end early ({shutdown_ms} ms): {stopped}"
    );
    for (c, _, _) in &mut socks[SOCKETS - HELD..] {
        assert!(
            c.is_closed(),
            "a socket that never answered outlived the process"
        );
    }
    // The process is gone: whatever it acknowledged must be in Redis now.
    for (_, id, want) in &socks {
        assert_eq!(redis.session_count(id), Some(*want), "session {id}");
    }
}

#[test]
fn second_sigint_exits_at_once() {
    let redis = Redis::start();
    let mut server = Server::builder(&redis)
        .shards(2)
        .arg("--shutdown-grace", "30s")
        .start();
    // Nobody answers the Close, so only the grace period would end this drain.
    let mut socks: Vec<Client> = (0..4).map(|_| server.connect("").0).collect();
    for c in &mut socks {
        assert_eq!(c.count("x"), 1);
    }

    server.signal("INT");
    let (texts, code) = drain_frames(&mut socks[0]);
    assert_eq!(code, Some(1001), "the first SIGINT drains: {texts:?}");
    assert_eq!(
        server.wait_exit(Duration::ZERO),
        None,
        "the drain should still be held open"
    );

    let t = Instant::now();
    server.signal("INT");
    let code = server.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code after a second SIGINT: {code:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the second SIGINT took {took:?} to end the process"
    );
}
