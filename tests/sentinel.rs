//! Redis behind Sentinel: real `redis-server` master and replicas, three
//! real sentinels, a master killed with SIGKILL under 200 counting clients,
//! and the answers that must come through it true: no gap, no repeat, no
//! confirmed count lost, no "not counted" that was counted, no socket
//! closed, and never a write to a server that is not the master.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MASTER: &str = "main";

/// `master`, its replica, and three sentinels (quorum 2) that know both
/// and each other and ask for `password`, so a failover can happen.
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

/// Clients counting through each failover.
const CLIENTS: usize = 200;
/// Each sends a message at most this often (2 a second, 400 in all): the
/// rate the failover was first measured at, and light enough to leave the
/// other tests of the run their CPU.
const PACE: Duration = Duration::from_millis(500);

/// A master with `replicas` replicas behind three sentinels, `clients`
/// clients counting with one replica to confirm each count, and the master
/// SIGKILLed: every answer must be true (see [`tally`]) and no socket may
/// close. Returns when the replica was promoted, the tally, and how many
/// failovers the sentinels made (more than one: they also failed over the
/// new master, a decision of theirs, e.g. under load). With one
/// replica, the new master has none until the old one comes back (empty,
/// calling itself master until the sentinels demote it): the shards must
/// not write to it, and no count can be confirmed until it replicates.
fn counts_through_a_killed_master(
    replicas: usize,
    clients: usize,
) -> (Duration, Instant, Tally, u64) {
    let _serial = one_at_a_time();
    let mut master = Redis::start();
    let standby: Vec<Redis> = (0..replicas)
        .map(|_| Redis::start_replica_of(&master))
        .collect();
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&master, MASTER, 2))
        .collect();
    for s in &sentinels {
        s.wait_settled(MASTER, replicas, 2);
    }
    let addrs: Vec<String> = sentinels.iter().map(Sentinel::addr).collect();
    let server = Server::builder_sentinels(&addrs, MASTER, true)
        .shards(2)
        .for_counters()
        .arg("--redis-min-replicas", "1")
        .start();

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..clients)
        .map(|_| counter_paced(&server, stop.clone(), PACE))
        .collect();
    wait_confirmed(&counters, 3, "counts before the failover", String::new);

    let killed_at = Instant::now();
    master.kill9();
    let new = wait_for(
        "the sentinels to promote a replica",
        Duration::from_secs(30),
        || standby.iter().position(|r| r.role() == "master"),
    );
    let promoted_at = Instant::now();
    let port = standby[new].port;
    wait_for(
        "every sentinel to name the new master",
        Duration::from_secs(30),
        || {
            sentinels
                .iter()
                .all(|s| s.master_port(MASTER) == Some(port))
                .then_some(())
        },
    );
    if replicas == 1 {
        master.spawn();
    }
    let before = most_acked(&counters);
    wait_confirmed(
        &counters,
        before + 3,
        "confirmed counts on the new master",
        || warnings(&server),
    );
    server.wait_ready_state("ready", Duration::from_secs(20));
    let failovers = || {
        sentinels
            .iter()
            .map(|s| s.failovers(MASTER))
            .max()
            .unwrap_or(0)
    };
    if replicas == 1 {
        // Back empty and calling itself master, the old master is demoted
        // once the sentinels look at it again: 10 to 20 s here.
        let deadline = Instant::now() + Duration::from_secs(40);
        while master.role() != "slave" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if master.role() != "slave" {
            assert!(
                failovers() > 1,
                "the sentinels did not demote the old master in 40 s (roles: old {}, new {}); {}",
                master.role(),
                standby[new].role(),
                warnings(&server)
            );
            eprintln!("the sentinels failed over twice: the old master is master again");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let tally = tally(
        counters,
        |id| standby[new].session_count(id),
        || warnings(&server),
    );

    if replicas == 1 {
        let stats = master.cli(&["INFO", "commandstats"]);
        assert!(
            !stats.contains("cmdstat_evalsha"),
            "a shard wrote to the old master: {stats}"
        );
    }
    let switched = server
        .log_lines()
        .iter()
        .any(|l| l["msg"] == "redis connected" && l["redis"] == format!("127.0.0.1:{port}"));
    assert!(
        switched,
        "no log line says the shards reached the new master"
    );
    (promoted_at - killed_at, promoted_at, tally, failovers())
}

/// The summary line a failover test prints.
fn report(what: &str, clients: usize, promoted: Duration, promoted_at: Instant, t: &Tally) {
    let last = t
        .unconfirmed
        .last()
        .map(|at| {
            format!(
                "{:.1} s",
                at.saturating_duration_since(promoted_at).as_secs_f64()
            )
        })
        .unwrap_or_else(|| "none".into());
    eprintln!(
        "{what}: replica promoted {:.1} s after the kill; {} counts answered by {clients} \
         clients, {} answered \"not counted\", {} \"counted, not confirmed\" (the last at \
         promotion + {last}); slowest reply {:.1} s; 0 lost, 0 counted above what a client \
         was told, 0 sockets closed",
        promoted.as_secs_f64(),
        t.told,
        t.refused,
        t.unconfirmed.len(),
        t.slowest.as_secs_f64(),
    );
}

#[test]
fn a_killed_master_with_one_replica_loses_no_count_and_every_answer_is_true() {
    let (promoted, at, tally, _) = counts_through_a_killed_master(1, CLIENTS);
    report(
        "sentinel failover, one replica",
        CLIENTS,
        promoted,
        at,
        &tally,
    );
}

/// With a second replica the new master gets one as soon as the sentinels
/// point it there: every answer later than 2 s after the promotion is
/// confirmed. Unless the sentinels fail over a second time (the new master
/// taken for down, which a 2 s down-after still allows on a loaded machine): the
/// new master then has no replica until the sentinels demote the other,
/// which is theirs to do, not the server's; such a run says so and holds
/// the rest.
#[test]
fn a_killed_master_with_two_replicas_loses_nothing_and_confirms_again_within_two_seconds() {
    let (promoted, at, tally, failovers) = counts_through_a_killed_master(2, CLIENTS);
    report(
        "sentinel failover, two replicas",
        CLIENTS,
        promoted,
        at,
        &tally,
    );
    if failovers > 1 {
        eprintln!(
            "the sentinels failed over {failovers} times: the 2 s goal is for one failover, not judged in this run"
        );
        return;
    }
    let late: Vec<f64> = tally
        .unconfirmed
        .iter()
        .map(|t| t.saturating_duration_since(at).as_secs_f64())
        .filter(|&s| s > 2.0)
        .collect();
    assert!(
        late.is_empty(),
        "{} answers later than promotion + 2 s were not confirmed (from {:?} s to {:?} s)",
        late.len(),
        late.first(),
        late.last()
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
    // A member of two rooms (one by its upgrade, one joined live): presence
    // through the Sentinels' master, and after the failover on the new one.
    let (mut member, _) = server.connect("room=lobby");
    member.send_command(&serde_json::json!({ "join": "side" }));
    assert_eq!(member.recv_skipping_heartbeats().json()["joined"], "side");
    let listed = |room: &str| {
        let (status, body) = http(
            server.addr,
            "GET",
            &format!("/api/rooms/{room}/presence"),
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && v["count"] == 1
    };
    wait_for("the member in both rooms", Duration::from_secs(5), || {
        (listed("lobby") && listed("side")).then_some(())
    });

    // Both servers stay up: the old master is demoted, not killed.
    assert!(sentinels[0]
        .cli(&["SENTINEL", "FAILOVER", MASTER])
        .contains("OK"));
    wait_for("the roles to swap", Duration::from_secs(30), || {
        (replica.role() == "master" && master.role() == "slave").then_some(())
    });
    assert!(
        listed("lobby") && listed("side"),
        "presence on the new master"
    );
    let before = most_acked(&counters);
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
