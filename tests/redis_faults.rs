//! Redis faults: the service starts and counts without Redis, reports it on
//! `/readyz` and `redis_up`, keeps counting exactly through a Redis crash and
//! restart, and every acknowledged count reaches Redis once it is back.
mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

fn wait_stored(redis: &Redis, id: &str, want: u64) {
    wait_for(
        &format!("session {id} to hold {want} in redis"),
        Duration::from_secs(15),
        || (redis.session_count(id) == Some(want)).then_some(()),
    );
}

fn close(c: &mut Client) -> u64 {
    c.send_close(1000);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1000), "{before:?}");
    let bye = before.last().expect("a goodbye").json();
    assert_eq!(bye["bye"], true, "{bye}");
    bye["total"].as_u64().unwrap()
}

#[test]
fn starts_and_counts_without_redis_then_catches_up() {
    let mut redis = Redis::not_started();
    let server = Server::builder(&redis).shards(2).start();

    let (code, body) = server.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "redis_unavailable"
    );
    assert_eq!(server.metric("redis_up"), 0.0);

    let (mut live, w) = server.connect("");
    assert_eq!(
        (&w["count"], &w["resumed"]),
        (&Value::from(0), &Value::from(false)),
        "{w}"
    );
    let live_id = session_id(&w);
    for i in 1..=5 {
        assert_eq!(live.count("x"), i);
    }
    // A session that ends before Redis exists at all.
    let (mut gone, w) = server.connect("");
    let gone_id = session_id(&w);
    for i in 1..=3 {
        assert_eq!(gone.count("x"), i);
    }
    assert_eq!(close(&mut gone), 3);
    assert_eq!(
        redis.session_count(&live_id),
        None,
        "redis is not even running"
    );

    redis.spawn();
    server.wait_ready_state("ready", Duration::from_secs(15));
    assert_eq!(server.metric("redis_up"), 1.0);
    wait_stored(&redis, &live_id, 5);
    wait_stored(&redis, &gone_id, 3);

    assert_eq!(live.count("x"), 6);
    wait_stored(&redis, &live_id, 6);
    let (mut back, w) = server.connect(&format!("session_id={gone_id}"));
    assert_eq!(
        (&w["count"], &w["resumed"]),
        (&Value::from(3), &Value::from(true)),
        "{w}"
    );
    assert_eq!(back.count("x"), 4);
}

/// Sets the flag when dropped, so counting threads stop even if the test
/// body panics (a scoped thread that never stops would hang the test).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn counts_stay_exact_through_a_redis_crash_and_restart() {
    const CLIENTS: usize = 6;
    const STEP: u64 = 20;
    let mut redis = Redis::start_aof();
    // The clients count as fast as they can; the rate limit is not under test.
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--rate-limit", "0")
        .start();

    let stop = AtomicBool::new(false);
    let progress: Vec<AtomicU64> = (0..CLIENTS).map(|_| AtomicU64::new(0)).collect();
    let clients: Vec<(Client, String)> = (0..CLIENTS)
        .map(|_| {
            let (c, w) = server.connect("");
            (c, session_id(&w))
        })
        .collect();
    let ids: Vec<String> = clients.iter().map(|(_, id)| id.clone()).collect();

    // A client that counts, closes while Redis is down, and resumes later.
    let (mut closer, w) = server.connect("");
    let closer_id = session_id(&w);
    for i in 1..=4 {
        assert_eq!(closer.count("x"), i);
    }

    let finals: Vec<u64> = std::thread::scope(|scope| {
        let _guard = StopOnDrop(&stop);
        let handles: Vec<_> = clients
            .into_iter()
            .zip(&progress)
            .map(|((mut c, _), seen)| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut last = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let n = c.count("x");
                        assert_eq!(n, last + 1, "a gap or a repeat in the counts");
                        last = n;
                        seen.store(n, Ordering::SeqCst);
                        // Pacing only: keeps a two-core box responsive.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    last
                })
            })
            .collect();
        let advance_all = |what: &str| {
            let from: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            wait_for(what, Duration::from_secs(20), || {
                progress
                    .iter()
                    .zip(&from)
                    .all(|(p, f)| p.load(Ordering::SeqCst) >= f + STEP)
                    .then_some(())
            });
        };

        advance_all("every client to count before the crash");
        redis.kill9();
        server.wait_ready_state("redis_unavailable", Duration::from_secs(10));
        assert_eq!(server.metric("redis_up"), 0.0);
        advance_all("every client to count while redis is down");
        for i in 5..=7 {
            assert_eq!(closer.count("x"), i);
        }
        assert_eq!(close(&mut closer), 7, "the goodbye while redis is down");
        // Held down a little longer, so the outage spans many flush intervals.
        std::thread::sleep(Duration::from_millis(300));
        advance_all("every client to keep counting while redis is down");

        redis.spawn();
        server.wait_ready_state("ready", Duration::from_secs(15));
        assert_eq!(server.metric("redis_up"), 1.0);
        advance_all("every client to count after the restart");
        stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (id, last) in ids.iter().zip(&finals) {
        assert!(*last >= 3 * STEP, "session {id} counted only {last}");
        wait_stored(&redis, id, *last);
    }
    // Resuming the moment /readyz says ready is covered by the next test;
    // here the count is checked in Redis first, then resumed.
    wait_stored(&redis, &closer_id, 7);

    let (mut again, w) = server.connect(&format!("session_id={closer_id}"));
    assert_eq!(
        (&w["count"], &w["resumed"]),
        (&Value::from(7), &Value::from(true)),
        "{w}"
    );
    assert_eq!(again.count("x"), 8);
    wait_stored(&redis, &closer_id, 8);
}

#[test]
fn resume_as_soon_as_redis_is_back_continues_the_count() {
    let mut redis = Redis::start_aof();
    // A longer flush interval widens the window between "ready" and the
    // replay from milliseconds to half a second, so the race is certain
    // rather than occasional; nothing in the contract ties resume to it.
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--flush-interval", "500ms")
        .start();
    redis.kill9();
    server.wait_ready_state("redis_unavailable", Duration::from_secs(10));
    // Ten sessions, so some resumes land on the shard that does not hold them.
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let (mut c, w) = server.connect("");
            for i in 1..=3 {
                assert_eq!(c.count("x"), i);
            }
            assert_eq!(close(&mut c), 3);
            session_id(&w)
        })
        .collect();

    redis.spawn();
    server.wait_ready_state("ready", Duration::from_secs(15));
    let lost: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let (_c, w) = server.connect(&format!("session_id={id}"));
            (w["resumed"] != true || w["count"] != 3 || w["session_id"] != id.as_str())
                .then(|| format!("{id} -> {w}"))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "resumes after /readyz said ready lost their session: {lost:?}"
    );
}

/// A failover to an empty replica (or a restart without persistence): the
/// shards write every live session's total again, so live counts continue
/// and Redis holds them; readiness waits for that rewrite.
#[test]
fn an_empty_redis_gets_every_live_count_written_again() {
    let mut redis = Redis::start(); // no AOF: a restart comes back empty
    let server = Server::builder(&redis).shards(2).start();
    // Six sockets: over two shards, both hold some almost surely, and the
    // rewrite is each shard's own.
    let (mut clients, mut ids): (Vec<Client>, Vec<String>) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let (c, w) = server.connect("");
        clients.push(c);
        ids.push(session_id(&w));
    }
    for (c, id) in clients.iter_mut().zip(&ids) {
        let id = id.clone();
        for i in 1..=5 {
            assert_eq!(c.count("x"), i);
        }
        wait_stored(&redis, &id, 5);
    }
    let before = redis.info("server", "run_id");
    redis.kill9();
    redis.spawn();
    // What the new process loaded at its start: the shards may already be
    // writing again, so its key count now would race them.
    assert_ne!(redis.info("server", "run_id"), before, "a new process");
    assert_eq!(
        redis.info("persistence", "rdb_last_load_keys_loaded"),
        "0",
        "it came back empty"
    );
    server.wait_ready_state("ready", Duration::from_secs(15));
    for id in &ids {
        wait_stored(&redis, id, 5);
    }
    for (c, id) in clients.iter_mut().zip(&ids) {
        assert_eq!(c.count("after"), 6, "the live count continues");
        wait_stored(&redis, id, 6);
    }
}

/// Redis away for longer than a shard's buffer of unwritten sessions holds:
/// open sockets keep counting, new sessions past the bound are refused with
/// `503 redis_backlog_full` (nothing is dropped silently), readiness and the
/// metrics say so, and once Redis is back every acknowledged count is there
/// and new sessions are welcome again.
#[test]
fn past_the_unwritten_bound_new_sessions_are_refused_and_nothing_is_lost() {
    const BOUND: usize = 4;
    let mut redis = Redis::start_aof();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--max-unflushed-sessions", &BOUND.to_string())
        .start();
    let (mut witness, w) = server.connect("");
    let witness_id = session_id(&w);
    assert_eq!(witness.count("x"), 1);
    wait_stored(&redis, &witness_id, 1);

    redis.kill9();
    wait_for("redis_up to drop", Duration::from_secs(10), || {
        (server.metric("redis_up") == 0.0).then_some(())
    });
    let (code, body) = server.get("/readyz");
    assert_eq!(
        (code, body.contains("redis_unavailable")),
        (503, true),
        "{body}"
    );
    assert_eq!(witness.count("x"), 2, "an open socket keeps counting");

    // New sessions while Redis is away, until the bound refuses one.
    let mut fresh = Vec::new();
    let refusal = loop {
        match Client::try_connect(server.addr, "") {
            Ok(mut c) => {
                let w = c.recv().json();
                let id = session_id(&w);
                assert_eq!(c.count("x"), 1);
                fresh.push((c, id));
                assert!(fresh.len() <= BOUND, "the bound never refused a session");
            }
            Err(refused) => break refused,
        }
    };
    assert_eq!(refusal.0, 503);
    assert!(refusal.1.contains("redis_backlog_full"), "{}", refusal.1);
    assert!(!fresh.is_empty(), "some sessions fit under the bound");
    // The witness and every fresh session hold counts Redis does not have.
    let want = (fresh.len() + 1) as f64;
    wait_for("the unwritten gauges", Duration::from_secs(5), || {
        (server.metric("redis_unflushed_sessions") == want
            && server.metric("redis_unflushed_increments") == want)
            .then_some(())
    });
    assert_eq!(
        witness.count("x"),
        3,
        "refusing new sessions costs no count"
    );

    redis.spawn();
    server.wait_ready_state("ready", Duration::from_secs(15));
    wait_stored(&redis, &witness_id, 3);
    for (_, id) in &fresh {
        wait_stored(&redis, id, 1);
    }
    assert_eq!(server.metric("redis_unflushed_increments"), 0.0);
    let (mut again, _) = server.connect("");
    assert_eq!(again.count("x"), 1, "new sessions are welcome again");
}

/// With `--redis-min-replicas 1`, a DELETE and a broadcast are answered
/// only once a replica holds them; with the replica gone, both are a `503`
/// that says so (the master took the write, a failover could undo it).
#[test]
fn deletes_and_broadcasts_wait_for_the_replicas_asked_for() {
    let master = Redis::start();
    let mut replica = Redis::start_replica_of(&master);
    let server = Server::builder(&master)
        .arg("--redis-min-replicas", "1")
        .start();
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("x"), 1);

    let (status, body) = http(server.addr, "DELETE", &format!("/api/sessions/{id}"), "");
    assert_eq!(status, 204, "{body}");
    // WAIT returned before the 204, so the replica already has it: no poll.
    let tombstone = format!("shardcast:{{{id}}}:del");
    assert_eq!(replica.cli(&["EXISTS", &tombstone]).trim(), "1");
    let sent = publish(&server, serde_json::json!({ "message": "held" }));
    let stream = replica.cli(&["XRANGE", "{shardcast:events}:h", "-", "+"]);
    assert!(stream.contains("held"), "{sent}: replica has {stream:?}");

    replica.kill9();
    let (mut other, welcome) = server.connect("");
    let other_id = session_id(&welcome);
    assert_eq!(other.count("y"), 1);
    let (status, body) = http(
        server.addr,
        "DELETE",
        &format!("/api/sessions/{other_id}"),
        "",
    );
    assert_eq!(
        (status, body.contains("replicas_unconfirmed")),
        (503, true),
        "{body}"
    );
    let (status, body) = http(server.addr, "POST", "/api/broadcast", r#"{"message":"m"}"#);
    assert_eq!(
        (status, body.contains("replicas_unconfirmed")),
        (503, true),
        "{body}"
    );
    let logs = server.log_lines();
    assert!(
        logs.iter().any(|l| l["msg"] == "session not deleted: 503"
            && l["error"] == "only 0 of 1 replicas confirmed the write"),
        "no log line for the refused delete"
    );
}
