//! Rooms on an open socket: `join` and `leave` control frames, checked
//! against the token's rooms, each room with a position of its own so that
//! a join can recover what the room had since; text messages stay counted
//! whatever they hold.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "rooms-secret-0123456789";

fn token(sub: &str, rooms: &[&str]) -> String {
    let claims = json!({ "sub": sub, "exp": unix_now() + 3600, "rooms": rooms });
    jwt("HS256", &claims.to_string(), SECRET)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two processes with tokens required, two shards each.
fn two_with_auth(redis: &Redis) -> (Server, Server) {
    let start = |color: &str| {
        Server::builder(redis)
            .shards(2)
            .arg("--auth-secret", SECRET)
            .arg("--color", color)
            .start()
    };
    (start("blue"), start("green"))
}

/// Sends a command and returns its answer (heartbeats and broadcasts
/// skipped: none is due here but from the test's own publishes).
fn command(c: &mut Client, cmd: Value) -> Value {
    c.send_command(&cmd);
    c.recv_skipping_heartbeats().json()
}

/// The broadcasts a socket gets up to and including the global `barrier`,
/// as `(room, text, frame)`; the barrier's frame is last.
fn until_barrier(c: &mut Client, barrier: &str) -> Vec<(String, String, Value)> {
    let mut got = Vec::new();
    loop {
        let v = next_broadcast_frame(c);
        let room = v["room"].as_str().unwrap_or("").to_string();
        let text = v["broadcast"].as_str().unwrap().to_string();
        let done = room.is_empty() && text == barrier;
        got.push((room, text, v));
        if done {
            return got;
        }
    }
}

/// A frame of a room joined on the open socket carries a position naming
/// that room alone, at the frame's own offset.
fn assert_own_position(v: &Value) {
    let room = v["room"].as_str().expect("a room broadcast");
    let pieces = position_of(&v["position"]);
    assert_eq!(pieces.len(), 1, "one room's position: {v}");
    assert_eq!(pieces[0].0, room, "{v}");
    assert_eq!(pieces[0].2, offset_of(&v["offset"]), "{v}");
}

#[test]
fn a_socket_joins_three_rooms_live_gets_exactly_their_broadcasts_and_leaves_one() {
    let redis = Redis::start();
    let (a, b) = two_with_auth(&redis);
    let t = token("ana", &["r1", "r2", "r3", "home"]);
    let (mut s, welcome) = a.connect(&format!("token={t}"));
    assert_eq!(welcome["resumed"], false);
    // A witness in r1 by its upgrade, on the other process.
    let (mut w, _) = b.connect(&format!("room=r1&token={t}"));

    for r in ["r1", "r2", "r3"] {
        let j = command(&mut s, json!({ "join": r }));
        assert_eq!(j["joined"], r, "{j}");
        assert!(j.get("recovered").is_none(), "no position asked: {j}");
        let pieces = position_of(&j["position"]);
        assert_eq!(pieces.len(), 1, "the room's own position: {j}");
        assert_eq!(pieces[0].0, r);
    }
    // A room the token does not name is refused; the socket stays.
    let no = command(&mut s, json!({ "join": "r4" }));
    assert_eq!(no["error"], "forbidden", "{no}");
    assert_eq!(no["room"], "r4");
    // Joining a room the socket is in again says where it is, nothing more.
    let again = command(&mut s, json!({ "join": "r2" }));
    assert_eq!(again["joined"], "r2", "{again}");
    // Text is the counter's, whatever it holds: a join written as text is
    // a counted message, not a command.
    assert_eq!(s.count(r#"{"join":"r4"}"#), 1);

    for r in ["r1", "r2", "r3", "r4"] {
        publish(&b, json!({ "message": format!("to {r}"), "room": r }));
    }
    publish(&a, json!({ "message": "barrier 1" }));
    let got = until_barrier(&mut s, "barrier 1");
    let texts: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(texts, ["to r1", "to r2", "to r3", "barrier 1"], "{got:?}");
    for (_, _, v) in &got[..3] {
        assert_own_position(v);
    }
    // The global barrier keeps the upgrade's position: the global channel
    // alone (the socket named no room at its upgrade).
    let barrier = &got[3].2;
    assert_eq!(position_of(&barrier["position"]).len(), 1, "{barrier}");
    // The witness, in r1 by its upgrade, has both channels in its frames.
    let wgot = until_barrier(&mut w, "barrier 1");
    assert_eq!(wgot.len(), 2, "{wgot:?}");
    assert_eq!(position_of(&wgot[0].2["position"]).len(), 2);

    // Leaving r2: its next broadcast passes the socket by, the others not.
    let left = command(&mut s, json!({ "leave": "r2" }));
    assert_eq!(left, json!({ "left": "r2" }));
    for r in ["r2", "r3"] {
        publish(&b, json!({ "message": format!("again {r}"), "room": r }));
    }
    publish(&b, json!({ "message": "barrier 2" }));
    let got = until_barrier(&mut s, "barrier 2");
    let texts: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(texts, ["again r3", "barrier 2"], "{got:?}");
    assert_eq!(s.count("still counting"), 2);

    // A refresh must still allow every room the socket is in.
    s.send_refresh(&token("ana", &["r1", "r3"]));
    let r = s.recv_skipping_heartbeats().json();
    assert_eq!(r["refreshed"], true, "{r}");
    s.send_refresh(&token("ana", &["r1"]));
    let (frames, code) = s.until_close();
    assert_eq!(code, Some(4001));
    let bye = goodbye(&frames);
    assert_eq!(bye["reason"], "token_refused", "{bye}");
    assert_eq!(bye["total"], 2);
    assert_eq!(
        a.metric(r#"auth_denied_total{reason="room_not_allowed"}"#),
        1.0
    );
}

#[test]
fn a_join_with_a_position_recovers_what_the_room_had_since_none_twice() {
    let redis = Redis::start();
    let a = Server::builder(&redis).shards(2).start();
    let b = Server::builder(&redis).arg("--color", "green").start();
    let (mut s, _) = a.connect("");
    let j = command(&mut s, json!({ "join": "news" }));
    assert_eq!(j["joined"], "news");
    publish(&b, json!({ "message": "m1", "room": "news" }));
    let m1 = next_broadcast_frame(&mut s);
    assert_eq!(m1["broadcast"], "m1");
    assert_own_position(&m1);
    let kept = m1["position"].as_str().unwrap().to_string();
    assert_eq!(command(&mut s, json!({ "leave": "news" }))["left"], "news");

    // Missed while out of the room.
    for m in ["m2", "m3"] {
        publish(&b, json!({ "message": m, "room": "news" }));
    }
    // Back with the kept position, on this socket and on a fresh one of
    // another process: each gets m2 and m3 from history, then m4 live.
    let (mut t, _) = b.connect("");
    for c in [&mut s, &mut t] {
        let j = command(c, json!({ "join": "news", "position": kept }));
        assert_eq!(j["joined"], "news", "{j}");
        assert_eq!(j["recovered"], true, "{j}");
        assert_eq!(
            position_of(&j["position"])[0].2,
            offset_of(&m1["offset"]),
            "the join starts where the position was: {j}"
        );
        for m in ["m2", "m3"] {
            let v = next_broadcast_frame(c);
            assert_eq!(v["broadcast"], m, "{v}");
            assert_eq!(v["recovered"], true, "{v}");
            assert_own_position(&v);
        }
    }
    publish(&a, json!({ "message": "m4", "room": "news" }));
    publish(&a, json!({ "message": "barrier" }));
    for c in [&mut s, &mut t] {
        let got = until_barrier(c, "barrier");
        let texts: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(texts, ["m4", "barrier"], "{got:?}");
    }

    // A position from another life of the room's stream: told, and at the
    // new life's head.
    redis.cli(&["DEL", "{shardcast:room:news}:h", "{shardcast:room:news}:e"]);
    publish(&b, json!({ "message": "new life", "room": "news" }));
    let (mut u, _) = a.connect("");
    let j = command(&mut u, json!({ "join": "news", "position": kept }));
    assert_eq!(j["recovered"], false, "{j}");
    let told = u.recv_skipping_heartbeats().json();
    assert_eq!(
        told,
        json!({ "unrecovered": { "reason": "epoch_changed", "room": "news" } })
    );
}

#[test]
fn a_join_or_leave_that_cannot_be_is_answered_and_the_socket_stays() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--max-rooms-per-socket", "2")
        .start();
    let (mut s, _) = server.connect("room=home");
    let bad = command(&mut s, json!({ "join": "no spaces" }));
    assert_eq!(bad["error"], "invalid_room", "{bad}");
    assert!(bad.get("room").is_none(), "a bad name is not echoed: {bad}");
    let bad = command(&mut s, json!({ "join": "ok", "position": "2.nope" }));
    assert_eq!(bad["error"], "invalid_position", "{bad}");
    // Without an auth secret any room may be joined, up to the cap, which
    // counts the upgrade's room.
    assert_eq!(command(&mut s, json!({ "join": "a" }))["joined"], "a");
    let full = command(&mut s, json!({ "join": "b" }));
    assert_eq!(full["error"], "too_many_rooms", "{full}");
    assert_eq!(full["room"], "b");
    // Leaving the upgrade's room makes room; leaving one the socket is not
    // in is answered the same way.
    assert_eq!(
        command(&mut s, json!({ "leave": "home" })),
        json!({ "left": "home" })
    );
    assert_eq!(
        command(&mut s, json!({ "leave": "zz" })),
        json!({ "left": "zz" })
    );
    assert_eq!(command(&mut s, json!({ "join": "b" }))["joined"], "b");
    publish(&server, json!({ "message": "to home", "room": "home" }));
    publish(&server, json!({ "message": "to b", "room": "b" }));
    publish(&server, json!({ "message": "barrier" }));
    let got = until_barrier(&mut s, "barrier");
    let texts: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(texts, ["to b", "barrier"]);
    // None of it was counted, and the socket is as open as before.
    assert_eq!(s.count("one"), 1);
    // A command that is not one closes with 1003, as before.
    s.send_command(&json!({ "join": "a", "leave": "b" }));
    let (_, code) = s.until_close();
    assert_eq!(code, Some(1003));
    // The closed socket left every room it was in: their subscriptions
    // linger (10 s), then go.
    assert_eq!(server.metric("ws_rooms_active"), 3.0, "home, a, b");
    wait_for(
        "the rooms' subscriptions dropped",
        Duration::from_secs(30),
        || (server.metric("ws_rooms_active") == 0.0).then_some(()),
    );
}

/// Sockets that leave and join again with their newest position, over and
/// over while a room's broadcasts flow, end with every broadcast exactly
/// once and in order: the join's recovery and the live frames meet without
/// a gap or a repeat.
#[test]
fn joins_and_leaves_while_broadcasts_flow_miss_nothing_and_repeat_nothing() {
    const N: usize = 400;
    const SOCKETS: usize = 4;
    let redis = Redis::start();
    // History keeps every broadcast of the run: a lagging socket is never
    // told `trimmed`.
    let a = Server::builder(&redis)
        .shards(2)
        .arg("--history-size", "1000")
        .start();
    let b = Server::builder(&redis)
        .arg("--color", "green")
        .arg("--history-size", "1000")
        .start();
    let mut socks: Vec<Client> = (0..SOCKETS).map(|_| a.connect("").0).collect();
    let mut kept: Vec<Option<String>> = vec![None; SOCKETS];
    for c in &mut socks {
        let j = command(c, json!({ "join": "flow" }));
        assert_eq!(j["joined"], "flow", "{j}");
    }
    let addr = b.addr;
    let publisher = std::thread::spawn(move || {
        for i in 0..N {
            publish_at(addr, json!({ "message": format!("f{i}"), "room": "flow" }));
        }
    });
    let mut got: Vec<Vec<String>> = vec![Vec::new(); SOCKETS];
    let mut rounds = 0;
    // Leaves followed by a join from the position kept.
    let mut cycles = 0;
    // Each round: every socket reads a few broadcasts, leaves, and joins
    // again from the newest position it has, missing what came between.
    while got.iter().any(|g| g.len() < N) {
        rounds += 1;
        assert!(
            rounds < 10 * N,
            "no progress: {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (i, c) in socks.iter_mut().enumerate() {
            let want = (got[i].len() + 1 + i * 3).min(N);
            while got[i].len() < want {
                let v = next_broadcast_frame(c);
                got[i].push(v["broadcast"].as_str().unwrap().to_string());
                kept[i] = Some(v["position"].as_str().unwrap().to_string());
            }
            if got[i].len() == N {
                continue;
            }
            c.send_command(&json!({ "leave": "flow" }));
            loop {
                let v = c.recv_skipping_heartbeats().json();
                if v.get("left").is_some() {
                    break;
                }
                // Broadcasts already on their way when it left.
                got[i].push(v["broadcast"].as_str().expect("a broadcast").to_string());
                kept[i] = Some(v["position"].as_str().unwrap().to_string());
            }
            let j = command(c, json!({ "join": "flow", "position": kept[i] }));
            cycles += 1;
            assert_eq!(j["joined"], "flow", "{j}");
            if j["recovered"] != true {
                panic!("history holds it all: {j}, then {}", c.recv().json());
            }
        }
    }
    publisher.join().unwrap();
    let all: Vec<String> = (0..N).map(|i| format!("f{i}")).collect();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &all, "socket {i}: every broadcast once, in order");
    }
    // Socket i reads at least 1 + 3i broadcasts between two rejoins.
    assert!(
        cycles >= 100,
        "only {cycles} leaves and joins: the seam was hardly crossed"
    );
    eprintln!(
        "{SOCKETS} sockets, {N} broadcasts each, {cycles} leaves and joins in {rounds} rounds"
    );
}

/// A resumed session is in the rooms its socket joined (not those it left)
/// again, on any process: each announced by a `joined` frame after the
/// welcome, each recovered from its own position when the upgrade passes
/// it beside the welcome's.
#[test]
fn a_resume_joins_the_sessions_rooms_again_and_recovers_each_from_its_position() {
    let redis = Redis::start();
    let (a, b) = two_with_auth(&redis);
    let all = token("ana", &["home", "r1", "r2", "r3"]);
    let (mut s, welcome) = a.connect(&format!("room=home&token={all}"));
    let id = session_id(&welcome);
    let mut kept = vec![welcome["position"].as_str().unwrap().to_string()];
    for r in ["r1", "r2", "r3"] {
        let j = command(&mut s, json!({ "join": r }));
        assert_eq!(j["joined"], r);
        if r != "r3" {
            kept.push(j["position"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(command(&mut s, json!({ "leave": "r3" }))["left"], "r3");
    assert_eq!(s.count("one"), 1);
    // The session API shows the rooms a resume will join (written as the
    // socket joins and leaves, not waited for).
    let path = format!("/api/sessions/{id}");
    wait_for(
        "the session's rooms in Redis",
        Duration::from_secs(5),
        || {
            let (status, body) = http(a.addr, "GET", &path, "");
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["rooms"] == json!(["r1", "r2"])).then_some(())
        },
    );
    s.send_close(1000);
    s.until_close();

    // Missed while away.
    for (room, m) in [
        (Some("r1"), "m1"),
        (Some("r2"), "m2"),
        (Some("r3"), "m3"),
        (None, "g1"),
    ] {
        let mut body = json!({ "message": m });
        if let Some(r) = room {
            body["room"] = r.into();
        }
        publish(&b, body);
    }
    let positions: String = kept.iter().map(|p| format!("&position={p}")).collect();
    let (mut s, welcome) = b.connect(&format!("session_id={id}&room=home&token={all}{positions}"));
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(welcome["count"], 1);
    for r in ["r1", "r2"] {
        let j = s.recv().json();
        assert_eq!(j["joined"], r, "the session's rooms, in join order: {j}");
        assert_eq!(j["recovered"], true, "{j}");
        assert_eq!(j["restored"], true, "not an answer to a join: {j}");
    }
    for (room, m) in [("", "g1"), ("r1", "m1"), ("r2", "m2")] {
        let v = next_broadcast_frame(&mut s);
        assert_eq!(
            (
                v["room"].as_str().unwrap_or(""),
                v["broadcast"].as_str().unwrap()
            ),
            (room, m),
            "{v}"
        );
        assert_eq!(v["recovered"], true, "{v}");
        if !room.is_empty() {
            assert_own_position(&v);
        } else {
            assert_eq!(position_of(&v["position"]).len(), 2, "global and home: {v}");
        }
    }
    for r in ["r1", "r2", "r3"] {
        publish(&a, json!({ "message": format!("live {r}"), "room": r }));
    }
    publish(&a, json!({ "message": "barrier" }));
    let got = until_barrier(&mut s, "barrier");
    let texts: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(texts, ["live r1", "live r2", "barrier"], "r3 was left");

    // Another socket of the session, with a token that no longer names r2:
    // r1 is joined (from its newest broadcast: no position asked), r2 is
    // refused in words.
    let fewer = token("ana", &["home", "r1"]);
    let (mut t, welcome) = a.connect(&format!("session_id={id}&room=home&token={fewer}"));
    assert_eq!(welcome["resumed"], true);
    let j = t.recv().json();
    assert_eq!(j["joined"], "r1", "{j}");
    assert!(j.get("recovered").is_none(), "{j}");
    let no = t.recv().json();
    assert_eq!(
        (no["error"].as_str(), no["room"].as_str()),
        (Some("forbidden"), Some("r2")),
        "{no}"
    );
    publish(&a, json!({ "message": "to r1", "room": "r1" }));
    assert_eq!(next_broadcast(&mut t), "to r1");
}

/// Many `position` values are read together, bounded; one that does not
/// parse is refused as before.
#[test]
fn positions_beyond_the_bound_or_malformed_are_refused() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--max-rooms-per-socket", "2")
        .start();
    let (_, welcome) = server.connect("");
    let p = welcome["position"].as_str().unwrap().to_string();
    assert!(Client::try_connect(
        server.addr,
        &format!("position={p}&position={p}&position={p}")
    )
    .is_ok());
    let four = format!("position={p}&position={p}&position={p}&position={p}");
    let (status, body) = Client::try_connect(server.addr, &four)
        .err()
        .expect("refused");
    assert_eq!(status, 400);
    assert!(body.contains("at most 3 positions"), "{body}");
    let (status, _) = Client::try_connect(server.addr, &format!("position={p}&position=1.nope"))
        .err()
        .expect("refused");
    assert_eq!(status, 400);
}

/// A session's rooms as Redis holds them are read like a client's input:
/// names that are not room names are passed over, the rest joined.
#[test]
fn a_sessions_rooms_field_that_is_not_room_names_costs_only_those() {
    let redis = Redis::start();
    let server = Server::builder(&redis).start();
    let (_, welcome) = server.connect("");
    let id = session_id(&welcome);
    let key = format!("shardcast:{{{id}}}:s");
    let long = "x".repeat(65);
    redis.cli(&[
        "HSET",
        &key,
        "rooms",
        &format!("  bad/name {long} r1 r1 é ok"),
    ]);
    let (mut s, welcome) = server.connect(&format!("session_id={id}"));
    assert_eq!(welcome["resumed"], true);
    for r in ["r1", "ok"] {
        assert_eq!(s.recv().json()["joined"], r);
    }
    publish(&server, json!({ "message": "to ok", "room": "ok" }));
    assert_eq!(next_broadcast(&mut s), "to ok");
    assert_eq!(s.count("m"), 1);
}
