//! The fast tier's end-to-end core: a server in this process (two shards as
//! threads) against the in-memory Redis, spoken to over real sockets on
//! `127.0.0.1:0`. Counting, resume across shards, a broadcast to every
//! shard, the session API behind its key, and a drain with goodbyes. No
//! `redis-server`, no root: `cargo test` runs these anywhere.

mod common;

use std::time::Duration;

use common::mem::{mem_redis, InProcess};
use common::{http, publish_at, session_id, Client};
use serde_json::json;

#[test]
fn counts_persist_and_resume_on_any_shard() {
    let redis = mem_redis();
    // Sync: every acknowledged count is in Redis before its reply.
    let server = InProcess::start(&redis, &["--shards", "2", "--durability", "sync"]);
    let (mut c, welcome) = Client::connect(server.addr, "");
    assert_eq!(welcome["resumed"], false, "{welcome}");
    let id = session_id(&welcome);
    for n in 1..=3 {
        assert_eq!(c.count("hello"), n);
    }
    drop(c);

    // Whichever shard the kernel picks, the count comes back from Redis (a
    // shard that never held the session must ask it): reconnect until both
    // shards have counted for the session.
    let mut rounds = 0u64;
    while !server.every_shard(|s| s.messages_total.get()) {
        assert!(rounds < 64, "64 reconnects never reached both shards");
        let (mut c, again) = Client::connect(server.addr, &format!("session_id={id}"));
        assert_eq!(again["resumed"], true, "round {rounds}: {again}");
        assert_eq!(again["count"], 3 + rounds, "round {rounds}: {again}");
        assert_eq!(c.count("again"), 4 + rounds);
        rounds += 1;
    }
    let key = format!("shardcast:{{{id}}}:s");
    let stored = redis.with_db(|db| db.hgetall(key.as_bytes()).unwrap());
    assert!(!stored.is_empty(), "no hash at {key}");
    let total: u64 = stored
        .values()
        .map(|v| String::from_utf8_lossy(v).parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        total,
        3 + rounds,
        "the writers' fields sum to every count: {stored:?}"
    );
}

#[test]
fn a_broadcast_reaches_sockets_on_every_shard() {
    let redis = mem_redis();
    let server = InProcess::start(&redis, &["--shards", "2"]);
    // The kernel picks each socket's shard: open sockets until both have one.
    let mut clients = Vec::new();
    while !server.every_shard(|s| s.connections_active.get()) {
        assert!(clients.len() < 64, "64 sockets never reached both shards");
        clients.push(Client::connect(server.addr, "").0);
    }
    let reply = publish_at(server.addr, json!({ "message": "to all" }));
    assert_eq!(reply["shards"], 2, "{reply}");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(common::next_broadcast(c), "to all", "client {i}");
    }
}

#[test]
fn the_session_api_needs_its_key_and_deletes_for_good() {
    let redis = mem_redis();
    let server = InProcess::start(&redis, &["--durability", "sync"]);
    let (mut c, welcome) = Client::connect(server.addr, "");
    let id = session_id(&welcome);
    assert_eq!(c.count("x"), 1);
    let path = format!("/api/sessions/{id}");

    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    use std::io::Write;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, body) = common::raw_response(&mut s);
    assert_eq!(status, 401, "no key: {body}");

    let (status, body) = http(server.addr, "GET", &path, "");
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["count"], 1, "{found}");

    let (status, body) = http(server.addr, "DELETE", &path, "");
    assert_eq!(status, 204, "{body}");
    // The kick closes the live socket, through pub/sub.
    let (_, code) = c.until_close();
    assert_eq!(code, Some(1008), "the deleted session's socket is kicked");
    let (status, _) = http(server.addr, "GET", &path, "");
    assert_eq!(status, 404);
    let (_, again) = Client::connect(server.addr, &format!("session_id={id}"));
    assert_eq!(
        again["resumed"], false,
        "a deleted session stays gone: {again}"
    );
}

#[test]
fn a_drain_says_goodbye_to_every_socket() {
    let redis = mem_redis();
    let mut server = InProcess::start(&redis, &["--shards", "2"]);
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(server.addr, "").0).collect();
    for c in &mut clients {
        assert_eq!(c.count("before"), 1);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || c.until_close()))
        .collect();
    assert!(
        server.drain(Duration::from_secs(5)),
        "every shard exited in time"
    );
    for r in readers {
        let (frames, code) = r.join().unwrap();
        assert_eq!(code, Some(1001));
        let bye = common::goodbye(&frames);
        assert_eq!(bye["reason"], "shutdown", "{bye}");
    }
}
