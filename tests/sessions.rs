//! Sessions end to end: resume across processes, two live connections of one
//! session, counts in Redis before the Close frame (and before each reply in
//! sync mode), empty sessions stay resumable, an open socket keeps its
//! session, expired ids are never adopted.
mod common;
use common::*;

use std::time::Duration;

use serde_json::Value;

/// Closes with 1000 and returns the goodbye's total; checks the order of the
/// goodbye and the Close echo.
fn close(c: &mut Client) -> u64 {
    c.send_close(1000);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1000), "close echo; frames before it: {before:?}");
    let bye = goodbye(&before);
    assert_eq!(bye["bye"], true, "{bye}");
    bye["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("goodbye without a total: {bye}"))
}

#[test]
fn resume_on_another_process_continues_the_count() {
    let redis = Redis::start();
    let a = Server::builder(&redis).shards(2).start();
    let b = Server::builder(&redis).shards(2).start();

    let (mut c, welcome) = a.connect("");
    let id = session_id(&welcome);
    for i in 1..=7 {
        assert_eq!(c.count("on a"), i);
    }
    assert_eq!(close(&mut c), 7);

    // B has never seen this id: only Redis can tell it the count.
    let (mut c, welcome) = b.connect(&format!("session_id={id}"));
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(session_id(&welcome), id);
    assert_eq!(welcome["count"], 7);
    for i in 8..=10 {
        assert_eq!(c.count("on b"), i);
    }
    assert_eq!(close(&mut c), 10, "the goodbye total is cumulative");
    assert_eq!(redis.session_count(&id), Some(10));
}

#[test]
fn two_live_connections_on_two_processes_keep_both_increments() {
    let redis = Redis::start();
    let a = Server::builder(&redis).shards(2).start();
    let b = Server::builder(&redis).shards(2).start();

    let (mut c, welcome) = a.connect("");
    let id = session_id(&welcome);
    let base = 3;
    for _ in 0..base {
        c.count("base");
    }
    assert_eq!(close(&mut c), base);

    let q = format!("session_id={id}");
    let (mut on_a, wa) = a.connect(&q);
    let (mut on_b, wb) = b.connect(&q);
    assert_eq!(
        (&wa["resumed"], &wa["count"]),
        (&Value::from(true), &Value::from(base))
    );
    assert_eq!(
        (&wb["resumed"], &wb["count"]),
        (&Value::from(true), &Value::from(base))
    );

    // Interleaved, so both writers are live at once: an overwrite (SET
    // instead of a per-writer delta) would lose one side's increments.
    let (n_a, n_b) = (5, 4);
    let (mut last_a, mut last_b) = (base, base);
    for i in 0..n_a.max(n_b) {
        if i < n_a {
            let n = on_a.count("a");
            assert!(
                n > last_a,
                "counts on one connection only go up: {last_a} then {n}"
            );
            last_a = n;
        }
        if i < n_b {
            let n = on_b.count("b");
            assert!(
                n > last_b,
                "counts on one connection only go up: {last_b} then {n}"
            );
            last_b = n;
        }
    }
    close(&mut on_a);
    close(&mut on_b);
    assert_eq!(redis.session_count(&id), Some(base + n_a + n_b));

    let (mut c, welcome) = a.connect(&q);
    assert_eq!(welcome["count"], base + n_a + n_b, "{welcome}");
    assert_eq!(c.count("after"), base + n_a + n_b + 1);
}

/// Opens `n` sessions, gives session i `i % 6` messages, closes them all, and
/// checks Redis the moment each Close frame arrives.
fn redis_has_count_when_close_arrives(extra: &[(&str, &str)]) {
    let redis = Redis::start();
    let mut builder = Server::builder(&redis).shards(2);
    for (k, v) in extra {
        builder = builder.arg(k, v);
    }
    let server = builder.start();
    let mut clients: Vec<(Client, String, u64)> = (0..50)
        .map(|i| {
            let (mut c, welcome) = server.connect("");
            let want = i % 6;
            for n in 1..=want {
                assert_eq!(c.count("x"), n);
            }
            (c, session_id(&welcome), want)
        })
        .collect();
    // All closes in flight together, so the shards' writes overlap.
    for (c, _, _) in &mut clients {
        c.send_close(1000);
    }
    for (c, id, want) in &mut clients {
        let (before, code) = c.until_close();
        // No polling here on purpose: the contract orders the Redis write
        // before the Close frame, so it must already be there.
        let stored = redis.session_count(id);
        assert_eq!(code, Some(1000));
        let bye = before.last().expect("a goodbye").json();
        assert_eq!(bye["total"], *want, "{bye}");
        assert_eq!(
            stored,
            Some(*want),
            "session {id}: Redis behind the Close frame"
        );
    }
}

#[test]
fn close_frame_comes_after_the_redis_write_default_mode() {
    redis_has_count_when_close_arrives(&[]);
}

#[test]
fn close_frame_comes_after_the_redis_write_with_a_slow_flusher() {
    // The periodic flush cannot get there first: only the close path can
    // have written the count.
    redis_has_count_when_close_arrives(&[("--flush-interval", "30s")]);
}

#[test]
fn close_frame_comes_after_the_redis_write_sync_mode() {
    redis_has_count_when_close_arrives(&[("--durability", "sync")]);
}

#[test]
fn sync_mode_replies_only_after_redis_has_the_count() {
    let redis = Redis::start();
    // A flusher this slow cannot explain a count found in Redis.
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--durability", "sync")
        .arg("--flush-interval", "30s")
        .start();
    let (mut x, wx) = server.connect("");
    let (mut y, wy) = server.connect("");
    let (ix, iy) = (session_id(&wx), session_id(&wy));
    for k in 1..=25 {
        assert_eq!(x.count("x"), k);
        assert_eq!(
            redis.session_count(&ix),
            Some(k),
            "reply {k} arrived before Redis had it"
        );
        assert_eq!(y.count("y"), k);
        assert_eq!(
            redis.session_count(&iy),
            Some(k),
            "reply {k} arrived before Redis had it"
        );
    }
}

#[test]
fn a_session_without_messages_is_resumable() {
    let redis = Redis::start();
    let a = Server::builder(&redis).shards(2).start();
    let b = Server::builder(&redis).shards(2).start();
    let (mut c, welcome) = a.connect("");
    assert_eq!(welcome["count"], 0);
    assert_eq!(welcome["resumed"], false);
    let id = session_id(&welcome);
    assert_eq!(close(&mut c), 0);

    // Another process, so A's cache cannot answer for Redis.
    let (mut c, welcome) = b.connect(&format!("session_id={id}"));
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(session_id(&welcome), id);
    assert_eq!(welcome["count"], 0);
    assert_eq!(c.count("first"), 1);
}

/// An open socket keeps its session alive with no message, and without a
/// write per heartbeat: the walk renews the TTL once half of it, less one
/// heartbeat, has passed since the last write.
#[test]
fn a_silent_open_socket_keeps_its_session_with_few_renewals() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--session-ttl", "2s")
        .arg("--heartbeat-interval", "100ms")
        .start();
    let (_open, welcome) = server.connect("");
    let id = session_id(&welcome);
    let key = format!("shardcast:{{{id}}}:s");
    // Three TTLs of silence, sampled: the key must never lapse.
    let end = std::time::Instant::now() + Duration::from_secs(6);
    let mut lowest = i64::MAX;
    while std::time::Instant::now() < end {
        let ms: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
        assert!(
            ms > 0,
            "the key lapsed (PTTL {ms}) while its socket was open"
        );
        lowest = lowest.min(ms);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Renewed about 900 ms after each write (1 s less a heartbeat): a
    // renewal on every heartbeat would keep it above 1.8 s.
    assert!(
        (300..1_500).contains(&lowest),
        "the TTL's low point was {lowest} ms"
    );
    let (_again, welcome) = server.connect(&format!("session_id={id}"));
    assert_eq!(welcome["resumed"], true, "{welcome}");
}

/// Script calls Redis has run (each a batch of session writes).
fn evalsha_calls(redis: &Redis) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A goodbye follows the count into Redis, but a count the flush already
/// wrote is not written again: closing sockets whose counts Redis has (a
/// drain of a node, say) costs Redis nothing.
#[test]
fn a_close_writes_no_count_that_redis_already_has() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(1).start();
    let mut open: Vec<(Client, String)> = (0..20)
        .map(|_| {
            let (mut c, welcome) = server.connect("");
            assert_eq!(c.count("x"), 1);
            (c, session_id(&welcome))
        })
        .collect();
    wait_for("every count in Redis", Duration::from_secs(10), || {
        open.iter()
            .all(|(_, id)| redis.session_count(id) == Some(1))
            .then_some(())
    });
    let before = evalsha_calls(&redis);
    for (c, _) in &mut open {
        assert_eq!(close(c), 1);
    }
    assert_eq!(evalsha_calls(&redis), before, "writes for counts Redis had");
    // A count Redis lacks is still written before the goodbye.
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("y"), 1);
    assert_eq!(close(&mut c), 1);
    assert_eq!(
        redis.session_count(&id),
        Some(1),
        "written before the goodbye"
    );
}

#[test]
fn an_expired_session_is_not_adopted() {
    let redis = Redis::start();
    // One shard: the resume lands on the shard that once held the session.
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--session-ttl", "1s")
        .start();
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    for _ in 0..3 {
        c.count("x");
    }
    assert_eq!(close(&mut c), 3);
    assert_eq!(redis.session_count(&id), Some(3));

    let key = format!("shardcast:{{{id}}}:s");
    wait_for("the session key to expire", Duration::from_secs(10), || {
        (redis.cli(&["EXISTS", &key]).trim() == "0").then_some(())
    });

    let (mut c, welcome) = server.connect(&format!("session_id={id}"));
    assert_eq!(welcome["resumed"], false, "{welcome}");
    assert_eq!(welcome["count"], 0, "{welcome}");
    let fresh = session_id(&welcome);
    assert_ne!(fresh, id, "an expired id must not come back");
    assert_eq!(c.count("x"), 1);
    // Once the new session has reached Redis, a flush for the old id would
    // have too: it must not have been written back.
    wait_for("the fresh session in redis", Duration::from_secs(5), || {
        (redis.session_count(&fresh) == Some(1)).then_some(())
    });
    assert_eq!(
        redis.cli(&["EXISTS", &key]).trim(),
        "0",
        "the expired key was recreated"
    );
}

/// A reconnect storm is a burst, not an outage: more resumes at once than a
/// shard keeps Redis requests in flight wait for a slot, none is refused 503.
/// Redis is paused for the burst, so every request is still queued when the
/// last one arrives.
#[test]
fn a_resume_storm_larger_than_the_redis_queue_is_served() {
    use std::io::{Read, Write};
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(1).start();
    const N: usize = 4_500; // over the shard's 4,096 Redis slots
    let mut socks: Vec<std::net::TcpStream> = (0..N)
        .map(|_| {
            let s = std::net::TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]).trim(), "OK");
    for s in &mut socks {
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            rand_u64() as u32,
            rand_u64() as u16,
            rand_u64() & 0xfff,
            rand_u64() & 0xfff,
            rand_u64() & 0xffff_ffff_ffff
        );
        let req = format!(
            "GET /ws/chat/?session_id={id} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
    }
    let mut refused = 0;
    for s in &mut socks {
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        if &head != b"HTTP/1.1 101" {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "upgrades refused during the storm");
    wait_for("every socket counted", Duration::from_secs(10), || {
        (server.metric("ws_connections_active") == N as f64).then_some(())
    });
    // The case this test is for happened: requests waited for room in a
    // full queue (else it proved nothing about the bound).
    assert!(
        server.metric("redis_queue_waits_total") > 0.0,
        "the storm never filled the shard's Redis queue"
    );
}
