//! Broadcasts, rooms and session kicks across processes that share one
//! Redis, in both pub/sub modes: what scale-out rests on.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{http, next_broadcast, publish, rand_u64, wait_for, Client, Redis, Server};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

fn two_servers(redis: &Redis, mode: &str) -> (Server, Server) {
    let start = |color: &str| {
        Server::builder(redis)
            .shards(2)
            .arg("--pubsub", mode)
            .arg("--color", color)
            .start()
    };
    (start("blue"), start("green"))
}

/// Six sockets per room and per process, so each room has members on every
/// shard of both processes (the kernel spreads them; six make a shard
/// without one unlikely, and the asserts below do not depend on it).
fn open_all(a: &Server, b: &Server, rooms: &[Option<&str>]) -> Vec<(Option<String>, Client)> {
    let mut out = Vec::new();
    for server in [a, b] {
        for room in rooms {
            for _ in 0..6 {
                let query = room.map_or(String::new(), |r| format!("room={r}"));
                let (c, welcome) = server.connect(&query);
                assert_eq!(welcome["resumed"], false);
                out.push((room.map(String::from), c));
            }
        }
    }
    out
}

fn rooms_and_broadcasts_cross_processes(mode: &str) {
    let redis = Redis::start();
    let (a, b) = two_servers(&redis, mode);
    let red = format!("red-{}", rand_u64() % 1000);
    let mut sockets = open_all(&a, &b, &[Some(red.as_str()), Some("blue"), None]);
    let n = sockets.len() as u64;

    // A broadcast through one process reaches every socket of both.
    let r = publish(&b, json!({ "message": "to everyone" }));
    assert_eq!(r["status"], "accepted");
    assert!(r.get("room").is_none(), "no room, no room key: {r}");
    assert_eq!(r["shards"], 4, "two shards in each of two processes: {r}");
    for (_, c) in &mut sockets {
        assert_eq!(next_broadcast(c), "to everyone");
    }

    // A room broadcast reaches exactly its members, on both processes. The
    // barrier after it proves the others did not get it: one subscription
    // connection delivers a shard's messages in publish order.
    let r = publish(&a, json!({ "message": "red only", "room": red }));
    assert_eq!(r["room"], red.as_str());
    assert!(
        r["shards"].as_u64() >= Some(2),
        "shards of both processes hold the room: {r}"
    );
    publish(&b, json!({ "message": "barrier" }));
    for (room, c) in &mut sockets {
        if room.as_deref() == Some(red.as_str()) {
            assert_eq!(next_broadcast(c), "red only");
        }
        assert_eq!(next_broadcast(c), "barrier", "socket in room {room:?}");
    }
    wait_for("every delivery counted", LIMIT, || {
        let delivered =
            a.metric("ws_broadcasts_delivered_total") + b.metric("ws_broadcasts_delivered_total");
        (delivered == (2 * n + 12) as f64).then_some(())
    });

    // The mode picks the Redis namespace: plain channels or shard channels.
    let listing = match mode {
        "plain" => redis.cli(&["PUBSUB", "CHANNELS", "shardcast:*"]),
        _ => redis.cli(&["PUBSUB", "SHARDCHANNELS", "shardcast:*"]),
    };
    for channel in ["shardcast:events", &format!("shardcast:room:{red}")] {
        assert!(listing.contains(channel), "{mode}: {listing}");
    }
    let other = match mode {
        "plain" => redis.cli(&["PUBSUB", "SHARDCHANNELS", "shardcast:*"]),
        _ => redis.cli(&["PUBSUB", "CHANNELS", "shardcast:*"]),
    };
    assert!(
        other.trim().is_empty(),
        "{mode} must not use the other namespace: {other}"
    );
    assert!(a.metric("ws_rooms_active") >= 2.0);
    assert_eq!(a.metric("pubsub_up"), 1.0);
}

#[test]
fn plain_mode_rooms_and_broadcasts_cross_processes() {
    rooms_and_broadcasts_cross_processes("plain");
}

#[test]
fn sharded_mode_rooms_and_broadcasts_cross_processes() {
    rooms_and_broadcasts_cross_processes("sharded");
}

fn delete_closes_a_socket_on_another_process(mode: &str) {
    let redis = Redis::start();
    let (a, b) = two_servers(&redis, mode);
    let (mut victim, welcome) = a.connect("room=lobby");
    let id = common::session_id(&welcome);
    assert_eq!(victim.count("x"), 1);
    let (mut bystander, _) = a.connect("room=lobby");
    let path = format!("/api/sessions/{id}");
    // Counts reach Redis within flush_interval; the other process reads it.
    let v = wait_for("the count in Redis", LIMIT, || {
        let (status, body) = b.get(&path);
        let v: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && v["count"] == 1).then_some(v)
    });
    assert!(v["ttl_s"].as_u64().unwrap() > 3000, "{v}");

    let (status, _) = http(b.addr, "DELETE", &path, "");
    assert_eq!(status, 204);
    let (_, code) = victim.until_close();
    assert_eq!(
        code,
        Some(1008),
        "{mode}: the kick reaches the other process"
    );
    // Nobody else noticed.
    assert_eq!(bystander.count("still here"), 1);
    assert_eq!(a.get(&path).0, 404);
    // The id is dead everywhere: a resume gets a fresh session.
    let (_, again) = b.connect(&format!("session_id={id}"));
    assert_eq!(again["resumed"], false);
    assert_ne!(common::session_id(&again), id);
}

#[test]
fn plain_mode_delete_closes_a_socket_on_another_process() {
    delete_closes_a_socket_on_another_process("plain");
}

#[test]
fn sharded_mode_delete_closes_a_socket_on_another_process() {
    delete_closes_a_socket_on_another_process("sharded");
}

/// The first socket of a room on a shard waits for Redis to confirm the
/// subscription before its welcome, so a broadcast published right after
/// the welcome always arrives. Without the wait this loses the race often.
#[test]
fn a_room_broadcast_right_after_the_welcome_arrives() {
    let redis = Redis::start();
    let (a, b) = two_servers(&redis, "plain");
    for i in 0..40 {
        let room = format!("fresh-{i}-{}", rand_u64() % 100_000);
        let (mut c, _) = a.connect(&format!("room={room}"));
        publish(&b, json!({ "message": format!("m{i}"), "room": room }));
        assert_eq!(next_broadcast(&mut c), format!("m{i}"), "room {room}");
    }
}

#[test]
fn bad_rooms_are_refused_with_a_reason() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(1).start();
    for room in ["a%20b", "", "x/y", &"r".repeat(65)] {
        match Client::try_connect(server.addr, &format!("room={room}")) {
            Err((status, body)) => {
                assert_eq!(status, 400, "{room:?}");
                assert!(body.contains("room must be"), "{body}");
            }
            Ok(_) => panic!("room {room:?} was accepted"),
        }
    }
    for body in [
        json!({ "message": "m", "room": "a b" }),
        json!({ "message": "m", "rooom": "typo" }),
        json!({ "room": "lobby" }),
    ] {
        let (status, answer) = http(server.addr, "POST", "/api/broadcast", &body.to_string());
        assert_eq!(status, 400, "{body}: {answer}");
    }
    // The server is unharmed.
    let (mut c, _) = server.connect("room=ok");
    assert_eq!(c.count("m"), 1);
}

#[test]
fn rooms_per_shard_are_bounded() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--max-rooms", "2")
        .start();
    let (_a, _) = server.connect("room=a");
    let (_b, _) = server.connect("room=b");
    match Client::try_connect(server.addr, "room=c") {
        Err((status, body)) => {
            assert_eq!(status, 503);
            assert!(body.contains("too_many_rooms"), "{body}");
        }
        Ok(_) => panic!("a third room opened past --max-rooms 2"),
    }
    // Existing rooms still take members, and sockets without a room open.
    let (mut more, _) = server.connect("room=a");
    assert_eq!(more.count("m"), 1);
    server.connect("");
    assert_eq!(
        server.metric("ws_errors_total{kind=\"too_many_rooms\"}"),
        1.0
    );
}

/// A member that stops reading fills its bounded outbox and is closed; the
/// other members of the room, on the same shard, get every broadcast
/// without waiting for it.
#[test]
fn a_slow_subscriber_does_not_delay_the_others() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--outbound-queue", "16")
        .start();
    let slow = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&server.addr.into()).unwrap();
        let s: TcpStream = s.into();
        s
    };
    let mut slow = Client::upgrade_on(slow, "room=news");
    let _welcome = slow.recv();
    let mut fast: Vec<Client> = (0..3).map(|_| server.connect("room=news").0).collect();

    let big = "x".repeat(16 << 10);
    let started = Instant::now();
    for i in 0..200 {
        publish(
            &server,
            json!({ "message": format!("{i}:{big}"), "room": "news" }),
        );
    }
    for c in &mut fast {
        for i in 0..200 {
            let text = next_broadcast(c);
            assert!(text.starts_with(&format!("{i}:")), "in order");
        }
    }
    let took = started.elapsed();
    // The slow socket's write timeout is 10 s: finishing well inside it
    // shows nobody waited on the stuck socket.
    assert!(took < Duration::from_secs(8), "fan-out took {took:?}");
    wait_for("the slow reader closed", Duration::from_secs(20), || {
        (server.metric("ws_errors_total{kind=\"slow_reader\"}") == 1.0).then_some(())
    });
    assert_eq!(fast[0].count("after"), 1, "the shard still answers");
}

/// After Redis restarts, every shard subscribes its rooms again.
#[test]
fn rooms_come_back_after_a_redis_restart() {
    let mut redis = Redis::start();
    let server = Server::builder(&redis).shards(2).start();
    let mut members = in_room_on_every_shard(&server, "lobby");
    redis.kill9();
    wait_for("both connections to notice", LIMIT, || {
        (server.metric("pubsub_up") == 0.0 && server.metric("redis_up") == 0.0).then_some(())
    });
    redis.spawn();
    wait_for("pubsub_up again", LIMIT, || {
        (server.metric("pubsub_up") == 1.0).then_some(())
    });
    server.wait_ready_state("ready", LIMIT);
    wait_for("both shards resubscribed", LIMIT, || {
        let n = redis.cli(&["PUBSUB", "NUMSUB", "shardcast:room:lobby"]);
        n.lines()
            .nth(1)
            .map(str::trim)
            .filter(|v| *v == "2")
            .map(|_| ())
    });
    publish(&server, json!({ "message": "back", "room": "lobby" }));
    for c in &mut members {
        assert_eq!(next_broadcast(c), "back");
    }
}

/// Opens sockets in `room` until `/status` shows the room on every shard.
fn in_room_on_every_shard(server: &Server, room: &str) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..64 {
        out.push(server.connect(&format!("room={room}")).0);
        let (_, body) = server.get("/status");
        let v: Value = serde_json::from_str(&body).unwrap();
        let per_shard = v["rooms_per_shard"].as_array().unwrap().clone();
        if per_shard.iter().all(|n| n.as_u64() > Some(0)) {
            return out;
        }
    }
    panic!("64 sockets never put {room} on every shard");
}
