//! Broadcast history: offsets in frames and welcomes, recovery with `since`,
//! the seam between history and live delivery, trimmed and expired history,
//! and the refusals of a bad `since`.

mod common;

use std::time::Duration;

use common::offset_of as offset;
use common::{
    check_followed, follow, next_broadcast_frame, publish, publish_at, session_id, wait_for,
    Client, Redis, Server,
};
use serde_json::json;

fn server(redis: &Redis, mode: &str, extra: &[(&str, &str)]) -> Server {
    let mut b = Server::builder(redis).shards(2).arg("--pubsub", mode);
    for (k, v) in extra {
        b = b.arg(k, v);
    }
    b.start()
}

fn frames_carry_offsets_and_recovery_replays_in_order(mode: &str) {
    let redis = Redis::start();
    let a = server(&redis, mode, &[]);
    let b = server(&redis, mode, &[]);
    let (mut lobby, w) = a.connect("room=lobby");
    let start = w["offset"].clone();
    offset(&start);
    assert!(w.get("recovered").is_none(), "no since, no verdict: {w}");
    let id = session_id(&w);

    // Live: each frame carries the offset the 202 named, and its room.
    let r = publish(&b, json!({ "message": "hello" }));
    let f = next_broadcast_frame(&mut lobby);
    assert_eq!(f, json!({ "broadcast": "hello", "offset": r["offset"] }));
    assert!(offset(&r["offset"]) > offset(&start));
    let r = publish(&a, json!({ "message": "in lobby", "room": "lobby" }));
    let f = next_broadcast_frame(&mut lobby);
    assert_eq!(
        f,
        json!({ "broadcast": "in lobby", "offset": r["offset"], "room": "lobby" })
    );
    let last = f["offset"].as_str().unwrap().to_string();
    drop(lobby);

    // Away: the global channel, this room, and a room it is not in.
    let mut want = Vec::new();
    for i in 0..12 {
        let (body, mine) = match i % 3 {
            0 => (json!({ "message": format!("g{i}") }), true),
            1 => (json!({ "message": format!("l{i}"), "room": "lobby" }), true),
            _ => (
                json!({ "message": format!("o{i}"), "room": "other" }),
                false,
            ),
        };
        let r = publish(if i % 2 == 0 { &a } else { &b }, body.clone());
        if mine {
            want.push((body["message"].clone(), r["offset"].clone()));
        }
    }
    // Back, on the other process: all it missed, in publish order, then live.
    let (mut back, w) = b.connect(&format!("session_id={id}&room=lobby&since={last}"));
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(w["resumed"], true);
    assert!(
        offset(&w["offset"]) >= offset(&want.last().unwrap().1),
        "{w}"
    );
    for (message, at) in &want {
        let f = next_broadcast_frame(&mut back);
        assert_eq!(&f["broadcast"], message, "{f}");
        assert_eq!(&f["offset"], at, "{f}");
    }
    let r = publish(&a, json!({ "message": "live again" }));
    let f = next_broadcast_frame(&mut back);
    assert_eq!(
        f,
        json!({ "broadcast": "live again", "offset": r["offset"] }),
        "nothing between the recovered and the live ones"
    );

    // A later `since` gets only what came after it; the room-less socket
    // gets no room's messages.
    let mid = want[5].1.as_str().unwrap();
    let (mut c, w) = a.connect(&format!("since={mid}"));
    assert_eq!(w["recovered"], true);
    for (message, at) in want[6..]
        .iter()
        .filter(|(m, _)| m.as_str().unwrap().starts_with('g'))
    {
        let f = next_broadcast_frame(&mut c);
        assert_eq!((&f["broadcast"], &f["offset"]), (message, at));
    }
    publish(&a, json!({ "message": "barrier" }));
    assert_eq!(next_broadcast_frame(&mut c)["broadcast"], "live again");
    assert_eq!(next_broadcast_frame(&mut c)["broadcast"], "barrier");
}

#[test]
fn frames_carry_offsets_and_recovery_replays_in_order_plain() {
    frames_carry_offsets_and_recovery_replays_in_order("plain");
}

#[test]
fn frames_carry_offsets_and_recovery_replays_in_order_sharded() {
    frames_carry_offsets_and_recovery_replays_in_order("sharded");
}

/// Sockets that drop and come back with `since` over and over, on two
/// processes, while broadcasts stream in: each ends with every broadcast
/// published after its first welcome, in order, none twice. Most
/// reconnects land while a publish is in flight, so the seam between the
/// recovery read and live delivery is crossed many times.
#[test]
fn the_seam_between_history_and_live_loses_and_repeats_nothing() {
    const CLIENTS: usize = 12;
    const MESSAGES: usize = 300;
    let redis = Redis::start();
    let servers = [server(&redis, "plain", &[]), server(&redis, "plain", &[])];
    let addrs = vec![servers[0].addr, servers[1].addr];
    let followers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let in_room = i % 2 == 0;
            let mut at = addrs.clone();
            at.rotate_left(i % 2);
            let f = follow(at, in_room.then(|| "seam".to_string()), Some(3 + i % 5));
            (in_room, f)
        })
        .collect();
    let mut published = Vec::new();
    for i in 0..MESSAGES {
        let room = (i % 4 == 3).then_some("seam");
        let r = publish_at(
            addrs[i % 2],
            json!({ "message": format!("m{i}"), "room": room }),
        );
        published.push((offset(&r["offset"]), room.is_some()));
    }
    // Every follower stops at this one, so it goes to every channel.
    let r = publish_at(addrs[0], json!({ "message": "end" }));
    published.push((offset(&r["offset"]), false));
    let followed: Vec<_> = followers
        .into_iter()
        .map(|(in_room, f)| (in_room, f.join().unwrap()))
        .collect();
    let reconnects: usize = followed.iter().map(|(_, f)| f.reconnects).sum();
    let checked = check_followed(&published, &followed);
    assert!(reconnects >= CLIENTS * 10, "{reconnects} reconnects");
    eprintln!("seam: {checked} deliveries checked over {reconnects} reconnects");
}

/// A `since` that history no longer covers, because the stream was trimmed
/// or expired, gets what is left and `recovered: false`.
#[test]
fn trimmed_or_expired_history_says_recovered_false() {
    let redis = Redis::start();
    let s = server(
        &redis,
        "plain",
        &[("--history-size", "10"), ("--history-ttl", "2s")],
    );
    let first = publish(&s, json!({ "message": "first" }))["offset"].clone();
    let mut offsets = Vec::new();
    for i in 0..300 {
        offsets.push(publish(&s, json!({ "message": format!("n{i}") }))["offset"].clone());
    }
    // Trimmed: Redis drops whole stream nodes, so "first" is gone; what is
    // left comes, newest last.
    let (mut c, w) = s.connect(&format!("since={}", first.as_str().unwrap()));
    assert_eq!(w["recovered"], false, "{w}");
    let f = next_broadcast_frame(&mut c);
    assert!(offset(&f["offset"]) > offset(&first));
    let mut last = f;
    while last["offset"] != offsets[299] {
        last = next_broadcast_frame(&mut c);
    }
    // Still covered: the last three.
    let (mut c, w) = s.connect(&format!("since={}", offsets[296].as_str().unwrap()));
    assert_eq!(w["recovered"], true, "{w}");
    for at in &offsets[297..] {
        assert_eq!(&next_broadcast_frame(&mut c)["offset"], at);
    }
    // Expired: the stream key outlives its last publish by the ttl only.
    wait_for("the stream to expire", Duration::from_secs(10), || {
        (redis.cli(&["EXISTS", "shardcast:events"]).trim() == "0").then_some(())
    });
    let (_c, w) = s.connect(&format!("since={}", offsets[296].as_str().unwrap()));
    assert_eq!(w["recovered"], false, "{w}");
    // Nothing was published after the newest offset either, but it is
    // older than the ttl: history cannot vouch for what followed it.
    let (_c, w) = s.connect(&format!("since={}", offsets[299].as_str().unwrap()));
    assert_eq!(w["recovered"], false, "{w}");
}

#[test]
fn a_bad_since_is_refused_and_a_future_one_misses_nothing() {
    let redis = Redis::start();
    let s = server(&redis, "plain", &[]);
    for bad in [
        "",
        "abc",
        "1",
        "1-",
        "-1",
        "1-2-3",
        "1.5-0",
        "99999999999999999999999-0",
        "%31-0",
    ] {
        let refused = Client::try_connect(s.addr, &format!("since={bad}"));
        let Err((status, body)) = refused else {
            panic!("since={bad:?} was accepted");
        };
        assert_eq!(status, 400, "since={bad:?}: {body}");
        assert!(body.contains("since must be an offset"), "{body}");
    }
    let (mut c, w) = s.connect("since=99999999999999-0");
    assert_eq!(
        w["recovered"], true,
        "an offset from the future missed nothing: {w}"
    );
    let r = publish(&s, json!({ "message": "after" }));
    assert_eq!(
        next_broadcast_frame(&mut c),
        json!({ "broadcast": "after", "offset": r["offset"] })
    );
    // Each refusal counted and logged once.
    assert_eq!(s.metric("ws_errors_total{kind=\"bad_request\"}"), 9.0);
    let logged = s
        .log_lines()
        .iter()
        .filter(|l| l["msg"] == "upgrade refused: bad since: 400")
        .count();
    assert_eq!(logged, 9);
}

#[test]
fn without_history_frames_are_as_before_and_since_says_not_recovered() {
    let redis = Redis::start();
    let s = server(&redis, "plain", &[("--history-size", "0")]);
    let (mut c, w) = s.connect("room=r");
    assert!(w.get("offset").is_none(), "{w}");
    let r = publish(&s, json!({ "message": "x", "room": "r" }));
    assert!(r.get("offset").is_none(), "{r}");
    assert_eq!(next_broadcast_frame(&mut c), json!({ "broadcast": "x" }));
    let (_c, w) = s.connect("since=1-0");
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(redis.cli(&["EXISTS", "shardcast:events"]).trim(), "0");
}

/// A process that starts after broadcasts were published reads the newest
/// offset before it subscribes, so its first welcome does not send a
/// client back to the start of history.
#[test]
fn a_fresh_process_starts_from_the_newest_offset() {
    let redis = Redis::start();
    let a = server(&redis, "plain", &[]);
    let mut last = json!(null);
    for i in 0..3 {
        last = publish(&a, json!({ "message": format!("before {i}") }))["offset"].clone();
    }
    let b = server(&redis, "plain", &[]);
    // Every shard has subscribed, so each has read the offset first.
    wait_for("pub/sub up on every shard", Duration::from_secs(10), || {
        (b.metric("pubsub_up") == 1.0).then_some(())
    });
    let (mut c, w) = b.connect("");
    assert_eq!(w["offset"], last, "{w}");
    let r = publish(&a, json!({ "message": "after" }));
    assert_eq!(
        next_broadcast_frame(&mut c),
        json!({ "broadcast": "after", "offset": r["offset"] })
    );
}
