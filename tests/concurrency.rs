//! 1,000 clients open at once, each counting its own session: every reply is
//! exact (1, 2, ... k, in order), no session id repeats, and Redis ends up
//! holding every session's count, whether the client closed or stayed open.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const THREADS: usize = 50;
const PER_THREAD: usize = 20;
const CLIENTS: usize = THREADS * PER_THREAD;
const MESSAGES: u64 = 10;
const LIMIT: Duration = Duration::from_secs(20);

/// One thread's share: connect, wait for everyone, count round-robin, then
/// half close (Redis must have the count at once) and half stay open (Redis
/// must get it within the flush interval). Returns the session ids.
fn drive(
    server_addr: std::net::SocketAddr,
    redis: &Redis,
    all_open: &Barrier,
    go: &Barrier,
) -> Vec<String> {
    let mut clients = Vec::with_capacity(PER_THREAD);
    let mut ids = Vec::with_capacity(PER_THREAD);
    for _ in 0..PER_THREAD {
        let (c, welcome) = Client::connect(server_addr, "");
        assert_eq!(welcome["count"], 0, "{welcome}");
        assert_eq!(welcome["resumed"], false, "{welcome}");
        ids.push(welcome["session_id"].as_str().unwrap().to_string());
        clients.push(c);
    }
    all_open.wait();
    go.wait();
    for round in 1..=MESSAGES {
        // Every client's message is in flight before any reply is read, so
        // all of this thread's sockets are busy at once.
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_text(&format!("client {i} message {round}"));
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let reply = c.recv_skipping_heartbeats().json();
            assert_eq!(reply, json!({ "count": round }), "client {i} ({})", ids[i]);
        }
    }
    for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        c.send_close(1000);
        let (before, code) = c.until_close();
        assert_eq!(code, Some(1000), "client {i}");
        assert_eq!(
            before.last().map(Frame::json),
            Some(json!({"bye": true, "total": MESSAGES})),
            "client {i}"
        );
        assert_eq!(
            redis.session_count(&ids[i]),
            Some(MESSAGES),
            "stored before the Close frame"
        );
    }
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        wait_for(
            &format!("Redis to hold open client {i}'s count"),
            LIMIT,
            || (redis.session_count(id) == Some(MESSAGES)).then_some(()),
        );
    }
    ids
}

#[test]
fn thousand_concurrent_clients_each_count_exactly() {
    let started = Instant::now();
    let redis = Arc::new(Redis::start());
    let server = Server::builder(&redis).shards(2).start();
    let addr = server.addr;
    let all_open = Arc::new(Barrier::new(THREADS + 1));
    let go = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (redis, all_open, go) = (redis.clone(), all_open.clone(), go.clone());
            std::thread::spawn(move || drive(addr, &redis, &all_open, &go))
        })
        .collect();

    all_open.wait();
    // The server itself sees all 1,000 at once, spread over both shards.
    let status = wait_for("/status to count every client", LIMIT, || {
        let (_, body) = server.get("/status");
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["connections"] == CLIENTS).then_some(v)
    });
    let per_shard = status["connections_per_shard"].as_array().unwrap();
    assert!(per_shard.iter().all(|n| n.as_u64() > Some(0)), "{status}");
    go.wait();

    let mut ids = HashSet::new();
    for w in workers {
        let mine = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        for id in mine {
            assert!(ids.insert(id.clone()), "session id {id} issued twice");
        }
    }
    assert_eq!(ids.len(), CLIENTS);
    wait_for(
        "ws_messages_total to equal every message sent",
        LIMIT,
        || (server.metric("ws_messages_total") == (CLIENTS as u64 * MESSAGES) as f64).then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
