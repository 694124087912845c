//! Presence: `GET /api/rooms/{room}/presence` lists a room's members on
//! every node, kept in Redis and renewed by the heartbeat walk, so a node
//! killed without a word drops out within one `presence_ttl`; rooms that
//! opt in send their members who joined and who left.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "presence-secret-0123456789";
/// Short, so a test sees renewals and expiries: renewed every second,
/// gone three seconds after the last renewal.
const HEARTBEAT: &str = "1s";
const TTL: Duration = Duration::from_secs(3);

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({ "sub": sub, "exp": exp, "rooms": ["*"] });
    jwt("HS256", &claims.to_string(), SECRET)
}

fn server(redis: &Redis, color: &str, events: &str) -> Server {
    let mut b = Server::builder(redis)
        .shards(2)
        .arg("--auth-secret", SECRET)
        .arg("--color", color)
        .arg("--heartbeat-interval", HEARTBEAT)
        .arg("--presence-ttl", "3s");
    if !events.is_empty() {
        b = b.arg("--presence-events", events);
    }
    b.start()
}

/// The room's presence as the API tells it: its members' subjects, sorted,
/// and the whole answer.
fn presence(server: &Server, room: &str) -> (Vec<String>, Value) {
    let (status, body) = http(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/presence"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut subs: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sub"].as_str().unwrap().to_string())
        .collect();
    subs.sort();
    (subs, v)
}

fn join(c: &mut Client, room: &str) {
    c.send_command(&json!({ "join": room }));
    let j = c.recv_skipping_heartbeats().json();
    assert_eq!(j["joined"], room, "{j}");
}

#[test]
fn presence_lists_a_rooms_members_on_every_node_and_drops_a_killed_node_within_one_expiry() {
    let redis = Redis::start();
    let a = server(&redis, "blue", "");
    let mut b = server(&redis, "green", "");
    let (_ana, _) = a.connect(&format!("room=lobby&token={}", token("ana")));
    let (mut bo, _) = a.connect(&format!("token={}", token("bo")));
    join(&mut bo, "lobby");
    let (mut cy, _) = a.connect(&format!("token={}", token("cy")));
    join(&mut cy, "lobby");
    // Two sockets of one session are one member.
    let (_dan, w) = b.connect(&format!("room=lobby&token={}", token("dan")));
    let dan_id = session_id(&w);
    let (_dan2, _) = b.connect(&format!(
        "session_id={dan_id}&room=lobby&token={}",
        token("dan")
    ));
    let (_eve, _) = b.connect(&format!("room=other&token={}", token("eve")));
    let joined = Instant::now();

    // Each shard sends its joins in its own batch: wait for all of them.
    let v = wait_for("everyone in lobby", Duration::from_secs(5), || {
        let (subs, v) = presence(&a, "lobby");
        (subs == ["ana", "bo", "cy", "dan"] && v["sockets"] == 5).then_some(v)
    });
    assert_eq!(v["count"], 4, "{v}");
    assert_eq!(v["sockets"], 5, "dan has two: {v}");
    assert_eq!(v["truncated"], false);
    assert_eq!(v["room"], "lobby");
    let (subs, _) = presence(&b, "other");
    assert_eq!(subs, ["eve"], "rooms are their own");

    // A leave takes the socket out at the next batch.
    cy.send_command(&json!({ "leave": "lobby" }));
    assert_eq!(cy.recv_skipping_heartbeats().json()["left"], "lobby");
    wait_for("cy gone", Duration::from_secs(5), || {
        (presence(&b, "lobby").0 == ["ana", "bo", "dan"]).then_some(())
    });

    // Past one expiry the live members are still there: renewed.
    std::thread::sleep((TTL + Duration::from_secs(1)).saturating_sub(joined.elapsed()));
    assert_eq!(presence(&a, "lobby").0, ["ana", "bo", "dan"]);

    // A node killed without a word drops out within one expiry, with no one
    // cleaning up after it.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    // Each of its sockets was last renewed at its own point of the heartbeat
    // walk: every one is gone within one expiry of the kill.
    wait_for(
        "the killed node's members dropped out",
        TTL + Duration::from_secs(3),
        || {
            let gone =
                presence(&a, "lobby").0 == ["ana", "bo"] && presence(&a, "other").0.is_empty();
            gone.then_some(())
        },
    );
    let took = killed.elapsed();
    eprintln!("the killed node's members dropped out {took:?} after the kill (ttl {TTL:?})");
    assert!(a.metric("ws_presence_writes_total") > 0.0);
    assert_eq!(a.metric("ws_presence_write_errors_total"), 0.0);
    assert!(took <= TTL + Duration::from_millis(1500), "{took:?}");
    let (_, v) = presence(&a, "other");
    assert_eq!(v["sockets"], 0, "{v}");
}

#[test]
fn the_presence_api_needs_a_key_and_refuses_bad_requests() {
    let redis = Redis::start();
    let on = Server::builder(&redis).start();
    let off = Server::builder(&redis).arg("--presence", "false").start();
    for (path, want) in [
        ("/api/rooms/lobby/presence", 200),
        ("/api/rooms/lobby/presence?limit=5", 200),
        ("/api/rooms/lobby/presence?limit=0", 400),
        ("/api/rooms/lobby/presence?limit=10001", 400),
        ("/api/rooms/no%20room/presence", 400),
        ("/api/rooms/lobby/members", 404),
    ] {
        let (status, body) = http(on.addr, "GET", path, "");
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, _) = http(on.addr, "POST", "/api/rooms/lobby/presence", "");
    assert_eq!(status, 405);
    let (status, body) = http(off.addr, "GET", "/api/rooms/lobby/presence", "");
    assert_eq!(
        (status, body.contains("presence is off")),
        (404, true),
        "{body}"
    );
    // Without the key, nothing is revealed.
    let (status, _) = http_with(on.addr, "GET", "/api/rooms/lobby/presence", "", "");
    assert_eq!(status, 401);
}

/// The next presence frame a socket gets (heartbeats skipped): who joined
/// and who left, as subjects.
fn next_presence(c: &mut Client) -> (String, Vec<String>, Vec<String>) {
    loop {
        let v = c.recv().json();
        if v.get("ts").is_some() {
            continue;
        }
        let p = v
            .get("presence")
            .unwrap_or_else(|| panic!("expected presence, got {v}"));
        let subs = |k: &str| -> Vec<String> {
            p[k].as_array()
                .unwrap()
                .iter()
                .map(|m| m["sub"].as_str().unwrap().to_string())
                .collect()
        };
        return (
            v["room"].as_str().unwrap().to_string(),
            subs("joins"),
            subs("leaves"),
        );
    }
}

#[test]
fn rooms_that_opt_in_tell_their_members_who_joined_and_who_left() {
    let redis = Redis::start();
    let a = server(&redis, "blue", "chat:*");
    let mut b = server(&redis, "green", "chat:*");
    let (mut x, _) = a.connect(&format!("token={}", token("xan")));
    join(&mut x, "chat:a");
    assert_eq!(
        next_presence(&mut x),
        ("chat:a".into(), vec!["xan".into()], vec![])
    );
    // A member on another node: every member hears of it.
    let (mut z, _) = b.connect(&format!("token={}", token("zoe")));
    join(&mut z, "chat:a");
    assert_eq!(next_presence(&mut x).1, ["zoe"]);
    assert_eq!(next_presence(&mut z).1, ["zoe"]);
    // A room that did not opt in says nothing of who comes and goes.
    let (mut q, _) = a.connect(&format!("room=lobby&token={}", token("quin")));
    let (_rae, _) = a.connect(&format!("room=lobby&token={}", token("rae")));
    // A leave is told.
    let (mut y, _) = a.connect(&format!("token={}", token("yul")));
    join(&mut y, "chat:a");
    assert_eq!(next_presence(&mut x).1, ["yul"]);
    y.send_command(&json!({ "leave": "chat:a" }));
    assert_eq!(next_presence(&mut x).2, ["yul"]);
    // A node killed without a word: its members are told gone once their
    // entries expire, by the node that finds them expired.
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    assert_eq!(next_presence(&mut x).2, ["zoe"]);
    assert!(
        killed.elapsed() <= TTL + Duration::from_millis(2500),
        "{:?}",
        killed.elapsed()
    );
    publish(&a, json!({ "message": "barrier", "room": "lobby" }));
    assert_eq!(
        next_broadcast(&mut q),
        "barrier",
        "no presence frame came before it"
    );
}
