//! Redis behind Sentinel: real `redis-server` master and replica, three real
//! sentinels, a master killed with SIGKILL mid-count, and the counts that
//! must come through it: no gap, no repeat, none lost, and never a write to
//! a server that is not the master.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MASTER: &str = "main";

/// A master, its replica, and three sentinels (quorum 2) that know both
/// and each other, so a failover can happen.
fn watched_pair() -> (Redis, Redis, Vec<Sentinel>) {
    watched_pair_with(Redis::start(), None)
}

/// The same around `master`, with sentinels that ask for `password`.
fn watched_pair_with(master: Redis, password: Option<&str>) -> (Redis, Redis, Vec<Sentinel>) {
    let replica = Redis::start_replica_of(&master);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start_with_password(&master, MASTER, 2, password))
        .collect();
    for s in &sentinels {
        s.wait_settled(MASTER, 1, 2);
    }
    (master, replica, sentinels)
}

#[test]
fn a_killed_master_is_followed_and_no_acknowledged_count_is_lost() {
    let (mut master, replica, sentinels) = watched_pair();
    let addrs: Vec<String> = sentinels.iter().map(Sentinel::addr).collect();
    let server = Server::builder_sentinels(&addrs, MASTER, true)
        .shards(2)
        .for_counters()
        .arg("--redis-min-replicas", "1")
        .start();

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..6).map(|_| counter(&server, stop.clone())).collect();
    let why_not = || String::new();
    wait_counts(&counters, 20, "counts before the failover", why_not);

    let killed_at = Instant::now();
    master.kill9();
    wait_for(
        "the sentinels to promote the replica",
        Duration::from_secs(30),
        || (replica.role() == "master").then_some(()),
    );
    let promoted = killed_at.elapsed();
    wait_for(
        "every sentinel to name the new master",
        Duration::from_secs(30),
        || {
            sentinels
                .iter()
                .all(|s| s.master_port(MASTER) == Some(replica.port))
                .then_some(())
        },
    );
    // With its only replica promoted, the new master has none, so no write
    // can be confirmed. The old master comes back (empty, and calling
    // itself master until the sentinels demote it): the shards must not
    // write to it, and once it replicates the new master, counts go on.
    // (Back before the switch is done, it could take writes: those are not
    // confirmed by a replica, so they are never acknowledged.)
    master.spawn();
    let before = counters
        .iter()
        .map(|c| c.acked.load(Ordering::Relaxed))
        .max()
        .unwrap();
    let why_not =
        || {
            let all = server.logs.lock().unwrap().clone();
            eprintln!("{} log lines", all.len());
            let at = all.iter().position(|l| l.contains("panicked")).unwrap_or(0);
            let logs: Vec<&String> = all.iter().skip(at).take(50).collect();
            format!(
            "old master says {:?}, new master's replication: {:?}; server's last lines: {logs:#?}",
            master.role(),
            replica.cli(&["INFO", "replication"]).lines().take(4).collect::<Vec<_>>(),
        )
        };
    wait_counts(&counters, before + 20, "counts on the new master", why_not);
    let resumed = killed_at.elapsed();
    server.wait_ready_state("ready", Duration::from_secs(20));
    assert_eq!(master.role(), "slave", "the old master was not demoted");

    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    let mut total = 0;
    for c in counters {
        c.handle.join().expect("a counter saw a gap or a repeat");
        errors += c.errors.load(Ordering::Relaxed);
        let acked = c.acked.load(Ordering::Relaxed);
        total += acked;
        // Sync durability with one replica confirming: what was
        // acknowledged is on the promoted replica, exactly.
        assert_eq!(
            replica.session_count(&c.id),
            Some(acked),
            "session {} on the new master",
            c.id
        );
    }
    let stats = master.cli(&["INFO", "commandstats"]);
    assert!(
        !stats.contains("cmdstat_evalsha"),
        "a shard wrote to the old master: {stats}"
    );
    eprintln!(
        "sentinel failover: replica promoted {:.1} s after the kill, counts confirmed again \
         after {:.1} s; {total} counts acknowledged, {errors} refused while Redis was away, 0 lost",
        promoted.as_secs_f64(),
        resumed.as_secs_f64()
    );
    let switched = server.log_lines().iter().any(|l| {
        l["msg"] == "redis connected" && l["redis"] == format!("127.0.0.1:{}", replica.port)
    });
    assert!(
        switched,
        "no log line says the shards reached the new master"
    );
}

/// Also with passwords on the servers and on the sentinels (different
/// ones), and a database other than 0: the promoted replica is reached
/// with the same password and database.
#[test]
fn a_manual_failover_is_followed_with_no_gap() {
    let (master, replica, sentinels) =
        watched_pair_with(Redis::start_with_password("data-pw"), Some("sentinel-pw"));
    let addrs: Vec<String> = sentinels.iter().map(Sentinel::addr).collect();
    let server = Server::builder_sentinels(&addrs, MASTER, true)
        .for_counters()
        .arg("--redis-min-replicas", "1")
        .arg("--redis-db", "2")
        .arg("--redis-password", "data-pw")
        .arg("--redis-sentinel-password", "sentinel-pw")
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..4).map(|_| counter(&server, stop.clone())).collect();
    wait_counts(&counters, 20, "counts before the failover", String::new);
    let first = &counters[0];
    let seen = first.acked.load(Ordering::Relaxed);
    assert!(
        master.session_count_in(2, &first.id) >= Some(seen),
        "the counts are not in database 2"
    );
    assert_eq!(master.session_count_in(0, &first.id), None);

    // Both servers stay up: the old master is demoted, not killed.
    assert!(sentinels[0]
        .cli(&["SENTINEL", "FAILOVER", MASTER])
        .contains("OK"));
    wait_for("the roles to swap", Duration::from_secs(30), || {
        (replica.role() == "master" && master.role() == "slave").then_some(())
    });
    let before = counters
        .iter()
        .map(|c| c.acked.load(Ordering::Relaxed))
        .max()
        .unwrap();
    wait_counts(
        &counters,
        before + 20,
        "counts on the new master",
        String::new,
    );
    stop.store(true, Ordering::Relaxed);
    for c in counters {
        c.handle.join().expect("a counter saw a gap or a repeat");
        assert_eq!(
            replica.session_count_in(2, &c.id),
            Some(c.acked.load(Ordering::Relaxed))
        );
    }
    let logs = server.log_lines();
    assert!(
        logs.iter()
            .any(|l| l["msg"] == "sentinels switched the redis master"),
        "no shard heard +switch-master"
    );
    assert!(
        logs.iter().any(|l| l["msg"] == "redis connected"
            && l["redis"] == format!("127.0.0.1:{}", replica.port)),
        "no log line says the shards reached the new master"
    );
}

#[test]
fn an_unknown_master_name_is_one_clear_line_and_the_node_keeps_serving() {
    let master = Redis::start();
    let sentinel = Sentinel::start(&master, MASTER, 1);
    let server = Server::builder_sentinels(&[sentinel.addr()], "nosuchmaster", false).start();
    let line = server.wait_log("redis unreachable; retrying with backoff");
    let error = line["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("no master named \"nosuchmaster\""),
        "unclear error: {line}"
    );
    // Not ready, but serving from its cache as when Redis is down.
    let (status, _) = server.get("/readyz");
    assert_eq!(status, 503);
    let (mut c, welcome) = server.connect("");
    assert_eq!(welcome["count"], 0);
    assert_eq!(c.count("hello"), 1);
}

#[test]
fn unreachable_sentinels_are_named_in_the_error() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let server = Server::builder_sentinels(std::slice::from_ref(&nobody), MASTER, false).start();
    let line = server.wait_log("redis unreachable; retrying with backoff");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("sentinel {nobody} unreachable")),
        "unclear error: {line}"
    );
    let (mut c, _) = server.connect("");
    assert_eq!(c.count("hello"), 1);
}

/// Managed Redis with Sentinel: the data servers and the sentinels each
/// let in only their own ACL user, so every link logs in as the right one.
#[test]
fn acl_users_reach_the_sentinels_and_the_master_they_name() {
    let master = Redis::start_acl("app", "app-pw");
    let sentinel = Sentinel::start_as(&master, MASTER, 1, Some("watcher"), Some("watch-pw"));
    let server = Server::builder_sentinels(&[sentinel.addr()], MASTER, true)
        .arg("--redis-username", "app")
        .arg("--redis-password", "app-pw")
        .arg("--redis-sentinel-username", "watcher")
        .arg("--redis-sentinel-password", "watch-pw")
        .start();
    let (mut c, welcome) = server.connect("");
    assert_eq!(c.count("hello"), 1);
    let id = session_id(&welcome);
    wait_for("the count on the master", Duration::from_secs(10), || {
        (master.session_count(&id) == Some(1)).then_some(())
    });
    // Each shard's +switch-master subscription is a sentinel link too.
    let clients = sentinel.cli(&["CLIENT", "LIST"]);
    assert!(
        client_list_has(&clients, "watcher", "subscribe"),
        "no subscription as watcher: {clients}"
    );
}
