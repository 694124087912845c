//! Redis Cluster: six real `redis-server` nodes (three masters, three
//! replicas) made with `redis-cli --cluster create`; sessions on every
//! master, resumed on another process; broadcasts and their history through
//! the cluster; a slot migrated under live counting (`ASK`, then `MOVED`),
//! a bulk `redis-cli --cluster reshard`, and a master killed and replaced by
//! its replica, with no acknowledged count lost.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Moves `slots` slots, with their keys, from `src` to `dst` with
/// `redis-cli --cluster reshard`, as an operator would.
fn reshard(src: &Redis, dst: &Redis, slots: u32) {
    let out = std::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", src.port),
            "--cluster-from",
            &RedisCluster::node_id(src),
            "--cluster-to",
            &RedisCluster::node_id(dst),
            "--cluster-slots",
            &slots.to_string(),
            "--cluster-yes",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn redirects(server: &Server, kind: &str) -> f64 {
    server.metric(&format!("redis_redirects_total{{kind=\"{kind}\"}}"))
}

#[test]
fn sessions_on_every_master_resume_elsewhere_and_broadcasts_reach_every_process() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start();
    let a = Server::builder_cluster(&cluster).shards(2).start();
    let b = Server::builder_cluster(&cluster).shards(2).start();

    // Sessions land on random slots, so on every master.
    let mut ids = Vec::new();
    for _ in 0..40 {
        let (mut c, w) = a.connect("");
        for n in 1..=3 {
            assert_eq!(c.count("x"), n);
        }
        ids.push(session_id(&w));
    }
    wait_for(
        "every count in the cluster",
        Duration::from_secs(10),
        || {
            ids.iter()
                .all(|id| cluster.session_count(id) == Some(3))
                .then_some(())
        },
    );
    for m in cluster.masters() {
        let keys: u64 = m.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(keys > 0, "master {} holds no session", m.port);
    }
    // Resumed on the other process, each goes on from 3.
    for id in &ids {
        let (mut c, w) = b.connect(&format!("session_id={id}"));
        assert_eq!(w["resumed"], true, "{w}");
        assert_eq!(c.count("x"), 4);
    }

    // Broadcasts, global and to a room, reach both processes, with offsets
    // from history (each channel's stream in the channel's own slot).
    let (mut on_a, _) = a.connect("room=lobby");
    let (mut on_b, w) = b.connect("room=lobby");
    let id = session_id(&w);
    let r = publish(&a, json!({ "message": "hello" }));
    for c in [&mut on_a, &mut on_b] {
        let f = next_broadcast_frame(c);
        assert_eq!(
            (&f["broadcast"], &f["offset"]),
            (&json!("hello"), &r["offset"])
        );
    }
    let r = publish(&b, json!({ "message": "to the lobby", "room": "lobby" }));
    let mut last = String::new();
    for c in [&mut on_a, &mut on_b] {
        let f = next_broadcast_frame(c);
        assert_eq!(f["offset"], r["offset"], "{f}");
        assert_eq!(f["room"], "lobby");
        last = f["position"].as_str().unwrap().to_string();
    }
    drop(on_b);
    let missed: Vec<_> = (0..3)
        .map(|i| publish(&a, json!({ "message": format!("m{i}"), "room": "lobby" })))
        .collect();
    let (mut back, w) = a.connect(&format!("session_id={id}&room=lobby&position={last}"));
    assert_eq!(w["recovered"], true, "{w}");
    for r in &missed {
        assert_eq!(next_broadcast_frame(&mut back)["offset"], r["offset"]);
    }
    assert_eq!(
        redirects(&a, "moved"),
        0.0,
        "a steady cluster redirects nothing"
    );
}

/// Clients count in sync mode while slots move: one by hand, step by step
/// (a resume meets `ASK` half-way, counts meet `MOVED` after), then 500 by
/// `redis-cli --cluster reshard`.
#[test]
fn slots_migrated_under_counting_lose_nothing() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start();
    let a = Server::builder_cluster(&cluster)
        .shards(2)
        .for_counters()
        .start();
    let b = Server::builder_cluster(&cluster)
        .shards(2)
        .for_counters()
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..6).map(|_| counter(&a, stop.clone())).collect();
    wait_counts(&counters, 10, "counts before the migration", String::new);

    // One idle session's slot, moved by hand to another master.
    let (mut idle, w) = a.connect("");
    assert_eq!(idle.count("x"), 1);
    let id = session_id(&w);
    drop(idle);
    let key = format!("shardcast:{{{id}}}:s");
    let slot = cluster.slot_of(&key);
    let from = cluster.owner(slot);
    let to = *cluster
        .masters()
        .iter()
        .find(|m| m.port != from.port)
        .unwrap();
    let (from_id, to_id) = (RedisCluster::node_id(from), RedisCluster::node_id(to));
    let slot_s = slot.to_string();
    assert!(to
        .cli(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])
        .contains("OK"));
    assert!(from
        .cli(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])
        .contains("OK"));
    let moved = from.cli(&[
        "MIGRATE",
        "127.0.0.1",
        &to.port.to_string(),
        "",
        "0",
        "5000",
        "KEYS",
        &key,
    ]);
    assert!(moved.contains("OK"), "MIGRATE: {moved}");
    // Half-way: the key is on the new master, the slot still the old one's.
    let (resumed, w) = b.connect(&format!("session_id={id}"));
    assert_eq!(w["resumed"], true, "{w}");
    assert!(redirects(&b, "ask") >= 1.0, "the resume did not follow ASK");
    drop(resumed);
    // A process whose map was read before the move ends and is not due
    // for its periodic refresh: its first request meets MOVED.
    let c = Server::builder_cluster(&cluster)
        .arg("--durability", "sync")
        .start();
    for m in cluster.masters() {
        m.cli(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
    }
    let (mut resumed, w) = c.connect(&format!("session_id={id}"));
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(resumed.count("x"), 2, "the count goes on after the move");
    assert!(redirects(&c, "moved") >= 1.0, "no request followed MOVED");
    assert_eq!(cluster.session_count(&id), Some(2));

    // In bulk, with every counter counting through it.
    let before = most_acked(&counters);
    let src = cluster.masters()[0];
    let dst = cluster.masters()[1];
    reshard(src, dst, 500);
    wait_counts(&counters, before + 20, "counts after the reshard", || {
        format!("redirects: {}", a.metric("redis_redirects_total"))
    });
    stop.store(true, Ordering::Relaxed);
    for c in counters {
        c.handle.join().expect("a counter saw a gap or a repeat");
        // Sync durability: what was acknowledged is in the cluster.
        assert_eq!(
            cluster.session_count(&c.id),
            Some(c.acked.load(Ordering::Relaxed)),
            "session {}",
            c.id
        );
    }
}

/// 200 clients, as the failover tests on Sentinel.
#[test]
fn a_killed_master_is_replaced_by_its_replica_and_every_answer_is_true() {
    killed_master(200);
}

/// `clients` clients counting in sync durability (2 messages a second
/// each), one replica to confirm each count, and the master of the first
/// one's session SIGKILLed: the promoted replica has no replica of its own
/// until the old master comes back as one, so counts there go unconfirmed
/// meanwhile. Every answer must be true (see [`tally`]) and no socket may
/// close.
fn killed_master(clients: usize) {
    let _serial = one_at_a_time();
    let mut cluster = RedisCluster::start();
    let server = Server::builder_cluster(&cluster)
        .shards(2)
        .for_counters()
        .arg("--redis-min-replicas", "1")
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..clients)
        .map(|_| counter_paced(&server, stop.clone(), Duration::from_millis(500)))
        .collect();
    wait_confirmed(&counters, 3, "counts before the kill", String::new);

    // The master of the first counter's session.
    let slot = cluster.slot_of(&format!("shardcast:{{{}}}:s", counters[0].id));
    let port = cluster.owner(slot).port;
    let victim = cluster.nodes.iter().position(|n| n.port == port).unwrap();
    let before = counters[0].acked.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    cluster.nodes[victim].kill9();
    let promoted = wait_for(
        "a replica to take the slot",
        Duration::from_secs(30),
        || {
            let owner = cluster.owner(slot).port;
            (owner != port).then_some(owner)
        },
    );
    let promoted_after = killed_at.elapsed();
    cluster.nodes[victim].spawn();
    cluster.wait_ok();
    wait_confirmed(
        &counters[..1],
        before + 5,
        "confirmed counts on the promoted replica",
        || warnings(&server),
    );
    let resumed_after = killed_at.elapsed();
    server.wait_ready_state("ready", Duration::from_secs(20));
    assert_eq!(
        cluster.nodes[victim].role(),
        "slave",
        "the old master came back as a replica"
    );

    stop.store(true, Ordering::Relaxed);
    let t = tally(
        counters,
        |id| cluster.session_count(id),
        || warnings(&server),
    );
    eprintln!(
        "cluster failover: replica on port {promoted} took the slot {:.1} s after the kill, \
         counts confirmed there again after {:.1} s; {} counts answered by {clients} clients, {} \
         answered \"not counted\", {} \"counted, not confirmed\"; slowest reply {:.1} s; 0 \
         lost, 0 counted above what a client was told, 0 sockets closed",
        promoted_after.as_secs_f64(),
        resumed_after.as_secs_f64(),
        t.told,
        t.refused,
        t.unconfirmed.len(),
        t.slowest.as_secs_f64()
    );
}

#[test]
fn a_seed_that_is_not_a_cluster_is_one_clear_line_and_the_node_keeps_serving() {
    let plain = Redis::start();
    let server = Server::builder_seeds(&format!("127.0.0.1:{}", plain.port), false).start();
    let line = server.wait_log("redis cluster: cannot read the slot map; retrying");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is not a cluster node"),
        "unclear error: {line}"
    );
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 503, "{body}");
    let (mut c, _) = server.connect("");
    assert_eq!(c.count("hello"), 1);
}

/// Slots move (`redis-cli --cluster reshard`, 3,000 of them, rooms' streams
/// and sessions with them) while sockets in 30 rooms on two processes
/// receive a steady stream of room and global broadcasts and counters
/// count in sync mode: `ASK` and `MOVED` are followed, no broadcast is
/// missed or doubled on any socket, and no acknowledged count is lost.
#[test]
fn rooms_resharded_under_broadcasts_miss_and_double_nothing() {
    let _serial = one_at_a_time();
    const ROOMS: usize = 30;
    let cluster = RedisCluster::start();
    let start = || {
        Server::builder_cluster(&cluster)
            .shards(2)
            .for_counters()
            .arg("--pubsub", "sharded")
            .start()
    };
    let (a, b) = (start(), start());
    let addrs = [a.addr, b.addr];
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("re{i}")).collect();
    // Two followers a room, one on each process, and two in no room.
    let mut followers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for at in [addrs[i % 2], addrs[(i + 1) % 2]] {
            followers.push((
                Some(room.clone()),
                follow(vec![at], Some(room.clone()), None),
            ));
        }
    }
    for at in addrs {
        followers.push((None, follow(vec![at], None, None)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Counter> = (0..10)
        .map(|i| {
            counter_paced(
                if i % 2 == 0 { &a } else { &b },
                stop.clone(),
                Duration::from_millis(50),
            )
        })
        .collect();
    // Room and global broadcasts, steadily, through both processes; each
    // kept with its room (None: global).
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = std::thread::spawn({
        let (rooms, publishing) = (rooms.clone(), publishing.clone());
        move || {
            let mut published: Vec<(Option<String>, (u64, u64))> = Vec::new();
            let mut i = 0;
            while publishing.load(Ordering::Relaxed) {
                let room = (i % 5 != 4).then(|| rooms[i % rooms.len()].clone());
                let body = json!({ "message": format!("b{i}"), "room": room }).to_string();
                let (status, answer) = http(addrs[i % 2], "POST", "/api/broadcast", &body);
                match status {
                    202 => {
                        let r: serde_json::Value = serde_json::from_str(&answer).unwrap();
                        published.push((room, offset_of(&r["offset"])));
                    }
                    // Not published (a redirect it could not follow in
                    // time): a caller tries again, as this one does.
                    503 if answer.contains("redis_unavailable") => continue,
                    _ => panic!("broadcast {body}: {status} {answer}"),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            published
        }
    });
    wait_counts(&counters, 5, "counts before the reshard", String::new);
    let (src, dst) = (cluster.masters()[0], cluster.masters()[1]);
    reshard(src, dst, 3000);
    let before = most_acked(&counters);
    wait_counts(
        &counters,
        before + 5,
        "counts after the reshard",
        String::new,
    );
    publishing.store(false, Ordering::Relaxed);
    let mut published = publisher.join().unwrap();
    for room in rooms.iter().map(|r| Some(r.clone())).chain([None]) {
        let r = publish(&a, json!({ "message": "end", "room": room }));
        published.push((room, offset_of(&r["offset"])));
    }
    stop.store(true, Ordering::Relaxed);
    tally(counters, |id| cluster.session_count(id), || warnings(&a));
    let moved = rooms
        .iter()
        .filter(|r| {
            cluster
                .owner(cluster.slot_of(&format!("shardcast:room:{r}")))
                .port
                == dst.port
        })
        .count();
    let mut checked = 0;
    for (room, f) in followers {
        let f = f.join().unwrap();
        let mine: Vec<((u64, u64), bool)> = published
            .iter()
            .filter(|(r, _)| r.is_none() || *r == room)
            .map(|(r, o)| (*o, r.is_some()))
            .collect();
        checked += check_followed(&mine, &[(room.is_some(), f)]);
    }
    let redirects: f64 = [&a, &b]
        .iter()
        .map(|s| redirects(s, "moved") + redirects(s, "ask") + redirects(s, "tryagain"))
        .sum();
    assert!(
        redirects > 0.0,
        "nothing followed a redirect: the reshard was not met"
    );
    eprintln!(
        "reshard under broadcasts: {} broadcasts, {checked} deliveries checked, {moved} of \
         {ROOMS} rooms on the destination master after, {redirects} redirects followed",
        published.len()
    );
}

/// `per` room names whose channels live on each master, with the master's port.
/// Two processes on the cluster with sharded pub/sub, two shards each, and
/// `args` beside.
fn two_sharded(cluster: &RedisCluster, args: &[(&str, &str)]) -> (Server, Server) {
    let start = || {
        let mut b = Server::builder_cluster(cluster)
            .shards(2)
            .arg("--pubsub", "sharded");
        for (k, v) in args {
            b = b.arg(k, v);
        }
        b.start()
    };
    (start(), start())
}

fn rooms_on_every_master(cluster: &RedisCluster, per: usize) -> Vec<(String, u16)> {
    let masters = cluster.masters().len();
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let room = format!("r{i}");
        let owner = cluster
            .owner(cluster.slot_of(&format!("shardcast:room:{room}")))
            .port;
        if rooms.iter().filter(|(_, o)| *o == owner).count() < per {
            rooms.push((room, owner));
        }
        if rooms.len() == per * masters {
            break;
        }
    }
    rooms
}

/// History with sharded pub/sub on a cluster: each room's stream and head
/// live on the master of the room's own channel, and a client that comes
/// back on the other process recovers what its room missed there.
#[test]
fn history_with_sharded_pubsub_lives_with_each_room() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start();
    let (a, b) = two_sharded(&cluster, &[]);
    for (room, owner) in rooms_on_every_master(&cluster, 2) {
        let (mut c, w) = a.connect(&format!("room={room}"));
        let id = session_id(&w);
        let r = publish(&b, json!({ "message": "first", "room": room }));
        let f = next_broadcast_frame(&mut c);
        assert_eq!((&f["offset"], &f["epoch"]), (&r["offset"], &r["epoch"]));
        let position = f["position"].as_str().unwrap().to_string();
        drop(c);
        let missed: Vec<_> = (0..3)
            .map(|i| publish(&a, json!({ "message": format!("m{i}"), "room": room })))
            .collect();
        let node = cluster.nodes.iter().find(|n| n.port == owner).unwrap();
        for key in ["h", "e"] {
            let k = format!("{{shardcast:room:{room}}}:{key}");
            assert_eq!(
                node.cli(&["EXISTS", &k]).trim(),
                "1",
                "{k} on its room's master"
            );
        }
        let q = format!("session_id={id}&room={room}&position={position}");
        let (mut back, w) = b.connect(&q);
        assert_eq!(w["recovered"], true, "{w}");
        for r in &missed {
            let f = next_broadcast_frame(&mut back);
            assert_eq!((&f["offset"], &f["room"]), (&r["offset"], &json!(room)));
        }
    }
}

/// Sharded pub/sub on a cluster: each room's channel lives on its slot's
/// master, every shard subscribes it there, and when the slot moves the
/// subscription follows.
#[test]
fn sharded_rooms_live_on_their_masters_and_follow_a_moved_slot() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start();
    let (a, b) = two_sharded(&cluster, &[("--history-size", "0")]);
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let rooms = rooms_on_every_master(&cluster, 2);
    let mut members: Vec<(Client, Client)> = rooms
        .iter()
        .map(|(room, _)| {
            let q = format!("room={room}");
            (a.connect(&q).0, b.connect(&q).0)
        })
        .collect();
    let subscribers = |room: &str, port: u16| -> u64 {
        let node = cluster.nodes.iter().find(|n| n.port == port).unwrap();
        let out = node.cli(&["PUBSUB", "SHARDNUMSUB", &format!("shardcast:room:{room}")]);
        out.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    for (i, (room, owner)) in rooms.iter().enumerate() {
        assert_eq!(subscribers(room, *owner), 2, "room {room} on its master");
        let r = publish(&a, json!({ "message": format!("to {room}"), "room": room }));
        assert_eq!(r["shards"], 2, "{r}");
        let (on_a, on_b) = &mut members[i];
        for c in [on_a, on_b] {
            let f = next_broadcast_frame(c);
            assert_eq!(f["broadcast"], format!("to {room}"), "{f}");
        }
    }
    // A global broadcast reaches everyone: no room's message went astray
    // before it.
    publish(&b, json!({ "message": "everyone" }));
    for (on_a, on_b) in &mut members {
        for c in [on_a, on_b] {
            assert_eq!(next_broadcast_frame(c)["broadcast"], "everyone");
        }
    }

    // The first room's slot moves to another master (no keys live there).
    let (room, from) = rooms[0].clone();
    let slot = cluster
        .slot_of(&format!("shardcast:room:{room}"))
        .to_string();
    let to = *masters.iter().find(|&&p| p != from).unwrap();
    let to_node = cluster.nodes.iter().find(|n| n.port == to).unwrap();
    let to_id = RedisCluster::node_id(to_node);
    for m in cluster.masters() {
        assert!(m
            .cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])
            .contains("OK"));
    }
    wait_for(
        "both shards to subscribe the room on its new master",
        Duration::from_secs(20),
        || (subscribers(&room, to) == 2).then_some(()),
    );
    let r = publish(&b, json!({ "message": "after the move", "room": room }));
    assert_eq!(r["shards"], 2, "{r}");
    let (on_a, on_b) = &mut members[0];
    for c in [on_a, on_b] {
        assert_eq!(next_broadcast_frame(c)["broadcast"], "after the move");
    }
}

/// Rooms joined on an open socket and presence on a cluster with sharded
/// pub/sub: one socket joins a room on every master, each room's
/// broadcasts reach it, each room's presence set lives on its master and
/// lists the members of both processes, and the room's presence frames
/// travel on its own channel.
#[test]
fn live_joins_and_presence_live_with_each_room() {
    let _serial = one_at_a_time();
    let cluster = RedisCluster::start();
    let (a, b) = two_sharded(&cluster, &[("--presence-events", "*")]);
    let rooms = rooms_on_every_master(&cluster, 1);
    let (mut joiner, w) = a.connect("");
    let joiner_id = session_id(&w);
    // Presence frames the joiner got, as (room, session joined).
    let mut told = std::collections::BTreeSet::new();
    let note = |v: &serde_json::Value, told: &mut std::collections::BTreeSet<_>| {
        for j in v["presence"]["joins"].as_array().into_iter().flatten() {
            let id = j["session_id"].as_str().unwrap().to_string();
            told.insert((v["room"].as_str().unwrap().to_string(), id));
        }
    };
    let mut want = std::collections::BTreeSet::new();
    let mut members = Vec::new();
    for (room, _) in &rooms {
        joiner.send_command(&json!({ "join": room }));
        loop {
            let v = joiner.recv_skipping_heartbeats().json();
            if v.get("presence").is_some() {
                note(&v, &mut told);
                continue;
            }
            assert_eq!(v["joined"], room.as_str(), "{v}");
            break;
        }
        let (m, w) = b.connect(&format!("room={room}"));
        want.insert((room.clone(), joiner_id.clone()));
        want.insert((room.clone(), session_id(&w)));
        members.push((m, session_id(&w)));
    }
    // Every join, its own and the other node's, reaches the joiner through
    // its room.
    while told != want {
        let v = joiner.recv_skipping_heartbeats().json();
        assert!(v.get("presence").is_some(), "{v}");
        note(&v, &mut told);
        assert!(told.is_subset(&want), "{told:?}");
    }
    for ((room, owner), (_, member_id)) in rooms.iter().zip(&members) {
        let path = format!("/api/rooms/{room}/presence");
        let v = wait_for("both members listed", Duration::from_secs(10), || {
            let (status, body) = http(b.addr, "GET", &path, "");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["count"] == 2).then_some(v)
        });
        let mut ids: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["session_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let mut both = vec![joiner_id.as_str(), member_id.as_str()];
        both.sort_unstable();
        assert_eq!(ids, both, "{v}");
        let node = cluster.nodes.iter().find(|n| n.port == *owner).unwrap();
        let key = format!("{{shardcast:room:{room}}}:p");
        assert_eq!(
            node.cli(&["EXISTS", &key]).trim(),
            "1",
            "{key} on its room's master"
        );
        publish(&b, json!({ "message": format!("to {room}"), "room": room }));
        let f = next_broadcast_frame(&mut joiner);
        assert_eq!(f["broadcast"], format!("to {room}"));
        assert_eq!(position_of(&f["position"]).len(), 1, "the room's own: {f}");
    }
}
