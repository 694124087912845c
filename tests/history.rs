//! Broadcast history: offsets, epochs and positions in frames and
//! welcomes, recovery with a position (and with `since`, as before), the
//! seam between history and live delivery, trimmed, expired and lost
//! history said plainly, and the refusals of a bad position or `since`.

mod common;

use std::time::Duration;

use common::offset_of as offset;
use common::{
    check_followed, follow, next_broadcast_frame, piece_offset, position_of, publish, publish_at,
    session_id, wait_for, Client, Redis, Server,
};
use serde_json::json;

fn server(redis: &Redis, mode: &str, extra: &[(&str, &str)]) -> Server {
    let mut b = Server::builder(redis).shards(2).arg("--pubsub", mode);
    for (k, v) in extra {
        b = b.arg(k, v);
    }
    b.start()
}

/// A broadcast frame as the contract has it, its position checked and
/// taken out (it depends on what else the socket is in).
fn without_position(f: &serde_json::Value) -> serde_json::Value {
    let mut f = f.clone();
    let p = f.as_object_mut().unwrap().remove("position");
    position_of(&p.unwrap_or_else(|| panic!("a frame with history carries a position: {f}")));
    f
}

/// Publishes an end on the global channel and on `room` (each follower
/// stops once it has one on each of its channels), keeps their offsets in
/// `published`, and waits for the followers.
fn end_and_join(
    at: std::net::SocketAddr,
    room: &str,
    published: &mut Vec<((u64, u64), bool)>,
    followers: Vec<(bool, std::thread::JoinHandle<common::Followed>)>,
) -> Vec<(bool, common::Followed)> {
    for room in [None, Some(room)] {
        let r = publish_at(at, json!({ "message": "end", "room": room }));
        published.push((offset(&r["offset"]), room.is_some()));
    }
    followers
        .into_iter()
        .map(|(in_room, f)| (in_room, f.join().unwrap()))
        .collect()
}

fn frames_carry_offsets_and_recovery_replays_in_order(mode: &str) {
    let redis = Redis::start();
    let a = server(&redis, mode, &[]);
    let b = server(&redis, mode, &[]);
    let (mut lobby, w) = a.connect("room=lobby");
    offset(&w["offset"]);
    assert!(w.get("recovered").is_none(), "no position, no verdict: {w}");
    let id = session_id(&w);

    // Live: each frame carries the offset and epoch the 202 named, its
    // room, and the socket's position on both of its channels.
    let r = publish(&b, json!({ "message": "hello" }));
    let f = next_broadcast_frame(&mut lobby);
    assert_eq!(
        without_position(&f),
        json!({ "broadcast": "hello", "offset": r["offset"], "epoch": r["epoch"] })
    );
    assert_eq!(piece_offset(&f["position"], ""), Some(offset(&r["offset"])));
    let r = publish(&a, json!({ "message": "in lobby", "room": "lobby" }));
    let f = next_broadcast_frame(&mut lobby);
    assert_eq!(
        without_position(&f),
        json!({ "broadcast": "in lobby", "offset": r["offset"], "epoch": r["epoch"], "room": "lobby" })
    );
    let pieces = position_of(&f["position"]);
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_eq!(
        piece_offset(&f["position"], "lobby"),
        Some(offset(&r["offset"]))
    );
    let last = f["position"].as_str().unwrap().to_string();
    drop(lobby);

    // Away: the global channel, this room, and a room it is not in.
    let (mut global, mut room) = (Vec::new(), Vec::new());
    for i in 0..12 {
        let body = match i % 3 {
            0 => json!({ "message": format!("g{i}") }),
            1 => json!({ "message": format!("l{i}"), "room": "lobby" }),
            _ => json!({ "message": format!("o{i}"), "room": "other" }),
        };
        let r = publish(if i % 2 == 0 { &a } else { &b }, body.clone());
        match i % 3 {
            0 => global.push((body["message"].clone(), r["offset"].clone())),
            1 => room.push((body["message"].clone(), r["offset"].clone())),
            _ => {}
        }
    }
    // Back, on the other process: all it missed, each channel in publish
    // order (the global one first), then live.
    let (mut back, w) = b.connect(&format!("session_id={id}&room=lobby&position={last}"));
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(w["resumed"], true);
    assert_eq!(
        w["position"],
        last.as_str(),
        "the welcome starts where it left"
    );
    let mut position = last;
    for (message, at) in global.iter().chain(&room) {
        let f = next_broadcast_frame(&mut back);
        assert_eq!(&f["broadcast"], message, "{f}");
        assert_eq!(&f["offset"], at, "{f}");
        assert_eq!(f["recovered"], true, "a replay says so: {f}");
        position = f["position"].as_str().unwrap().to_string();
    }
    assert_eq!(
        piece_offset(&json!(position), ""),
        Some(offset(&global[3].1))
    );
    assert_eq!(
        piece_offset(&json!(position), "lobby"),
        Some(offset(&room[3].1))
    );
    let r = publish(&a, json!({ "message": "live again" }));
    let f = next_broadcast_frame(&mut back);
    assert_eq!(
        without_position(&f),
        json!({ "broadcast": "live again", "offset": r["offset"], "epoch": r["epoch"] }),
        "nothing between the recovered and the live ones"
    );

    // The parameter of before: `since`, one offset, on the global channel.
    let mid = global[1].1.as_str().unwrap();
    let (mut c, w) = a.connect(&format!("since={mid}"));
    assert_eq!(w["recovered"], true);
    for (message, at) in &global[2..] {
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
    let followed = end_and_join(addrs[0], "seam", &mut published, followers);
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
    assert_eq!(
        c.recv().json(),
        json!({ "unrecovered": { "reason": "trimmed" } })
    );
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
        (redis.cli(&["EXISTS", "{shardcast:events}:h"]).trim() == "0").then_some(())
    });
    let (_c, w) = s.connect(&format!("since={}", offsets[296].as_str().unwrap()));
    assert_eq!(w["recovered"], false, "{w}");
    // Nothing was published after the newest offset either, but it is
    // older than the ttl: history cannot vouch for what followed it.
    let (_c, w) = s.connect(&format!("since={}", offsets[299].as_str().unwrap()));
    assert_eq!(w["recovered"], false, "{w}");
}

#[test]
fn a_bad_since_or_position_is_refused_and_a_future_one_misses_nothing() {
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
    for bad in ["", "abc", "1.", "1.!!", "2.W10", "1.e30"] {
        let refused = Client::try_connect(s.addr, &format!("position={bad}"));
        let Err((status, body)) = refused else {
            panic!("position={bad:?} was accepted");
        };
        assert_eq!(status, 400, "position={bad:?}: {body}");
        assert!(body.contains("position must be a token"), "{body}");
    }
    let (mut c, w) = s.connect("since=99999999999999-0");
    assert_eq!(
        w["recovered"], true,
        "an offset from the future missed nothing: {w}"
    );
    let r = publish(&s, json!({ "message": "after" }));
    assert_eq!(next_broadcast_frame(&mut c)["offset"], r["offset"]);
    // Each refusal counted and logged once.
    assert_eq!(s.metric("ws_errors_total{kind=\"bad_request\"}"), 15.0);
    let logged = |msg: &str| s.log_lines().iter().filter(|l| l["msg"] == msg).count();
    assert_eq!(logged("upgrade refused: bad since: 400"), 9);
    assert_eq!(logged("upgrade refused: bad position: 400"), 6);
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
    assert_eq!(redis.cli(&["EXISTS", "{shardcast:events}:h"]).trim(), "0");
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
    assert_eq!(piece_offset(&w["position"], ""), Some(offset(&last)));
    let r = publish(&a, json!({ "message": "after" }));
    assert_eq!(next_broadcast_frame(&mut c)["offset"], r["offset"]);
}

/// A stream lost while a client was away (deleted here by hand, as a
/// restart without persistence or a failover to a replica that never had
/// it would lose it): the epoch tells, and the client is told, for that
/// channel only, while the other recovers in full.
#[test]
fn a_lost_stream_is_told_by_its_epoch_never_a_silent_gap() {
    let redis = Redis::start();
    let s = server(&redis, "plain", &[]);
    let (mut c, w) = s.connect("room=lobby");
    let id = session_id(&w);
    publish(&s, json!({ "message": "l0", "room": "lobby" }));
    let f = next_broadcast_frame(&mut c);
    let old_epoch = f["epoch"].clone();
    let position = f["position"].as_str().unwrap().to_string();
    drop(c);

    let g = publish(&s, json!({ "message": "g1" }));
    publish(&s, json!({ "message": "l1", "room": "lobby" }));
    // The room's stream and its head are gone; the next publish starts a
    // new life with a new epoch.
    redis.cli(&[
        "DEL",
        "{shardcast:room:lobby}:h",
        "{shardcast:room:lobby}:e",
    ]);
    let l2 = publish(&s, json!({ "message": "l2", "room": "lobby" }));
    assert_ne!(l2["epoch"], old_epoch, "a new life, a new epoch");
    assert!(l2["epoch"].as_str().is_some_and(|e| e.len() == 16));

    let (mut back, w) = s.connect(&format!("session_id={id}&room=lobby&position={position}"));
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(
        back.recv().json(),
        json!({ "unrecovered": { "room": "lobby", "reason": "epoch_changed" } })
    );
    // The global channel recovers all the same; the room starts at its
    // new life's head, so l2 is not sent again.
    let f = next_broadcast_frame(&mut back);
    assert_eq!(
        (&f["broadcast"], &f["offset"]),
        (&json!("g1"), &g["offset"])
    );
    assert_eq!(
        piece_offset(&f["position"], "lobby"),
        Some(offset(&l2["offset"]))
    );
    let l3 = publish(&s, json!({ "message": "l3", "room": "lobby" }));
    let f = next_broadcast_frame(&mut back);
    assert_eq!((&f["broadcast"], &f["epoch"]), (&json!("l3"), &l3["epoch"]));
    assert_eq!(s.metric("ws_recoveries_incomplete_total"), 1.0);

    // A stream that was never there when the position was made: all of it
    // is new to the client.
    let (c, w) = s.connect("room=fresh");
    let fresh = piece_offset(&w["position"], "fresh");
    assert_eq!(fresh, Some((0, 0)), "{w}");
    let position = w["position"].as_str().unwrap().to_string();
    drop(c);
    let first = publish(&s, json!({ "message": "f0", "room": "fresh" }));
    let (mut back, w) = s.connect(&format!("room=fresh&position={position}"));
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(next_broadcast_frame(&mut back)["offset"], first["offset"]);
}

/// Subscriptions cut while broadcasts stream in (Redis closes every pub/sub
/// connection, three times): each shard finds the gap (the next broadcast
/// names a predecessor it never got, or the head read on its new
/// connection is ahead) and reads it back from the stream, so every socket
/// ends with every broadcast of its channels after its welcome, in order,
/// none twice, without ever reconnecting.
#[test]
fn a_cut_subscription_is_found_and_its_gap_filled_on_live_sockets() {
    const MESSAGES: usize = 600;
    let redis = Redis::start();
    let probe = [("--history-probe-interval", "300ms")];
    let servers = [
        server(&redis, "plain", &probe),
        server(&redis, "plain", &probe),
    ];
    let addrs = [servers[0].addr, servers[1].addr];
    // Followers that never drop by themselves.
    let followers: Vec<_> = (0..6)
        .map(|i| {
            let in_room = i % 2 == 0;
            let at = vec![addrs[i % 2]];
            (
                in_room,
                follow(at, in_room.then(|| "cut".to_string()), None),
            )
        })
        .collect();
    let mut published = Vec::new();
    for i in 0..MESSAGES {
        if i % 150 == 75 {
            redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        let room = (i % 3 == 2).then_some("cut");
        let r = publish_at(
            addrs[i % 2],
            json!({ "message": format!("m{i}"), "room": room }),
        );
        published.push((offset(&r["offset"]), room.is_some()));
    }
    let followed = end_and_join(addrs[0], "cut", &mut published, followers);
    let reconnects: usize = followed.iter().map(|(_, f)| f.reconnects).sum();
    assert_eq!(reconnects, 0, "no socket had to reconnect");
    let checked = check_followed(&published, &followed);
    let sum = |name: &str| servers.iter().map(|s| s.metric(name)).sum::<f64>();
    let gaps = sum("ws_history_gaps_total");
    let filled = sum("ws_history_gap_recovered_total");
    assert!(gaps >= 1.0, "the cuts made no gap: nothing was tested");
    assert_eq!(sum("ws_history_gaps_unrecoverable_total"), 0.0);
    eprintln!("cut subscriptions: {checked} deliveries checked; {gaps} gaps found, {filled} broadcasts read back into them");
}

/// A room's stream lost while sockets listen live (deleted by hand): the
/// next broadcast is the first of a new life, and the sockets are told
/// before they get it.
#[test]
fn a_stream_lost_under_live_sockets_is_told_by_its_epoch() {
    let redis = Redis::start();
    let s = server(&redis, "plain", &[]);
    let (mut c, _) = s.connect("room=lost");
    let first = publish(&s, json!({ "message": "before", "room": "lost" }));
    assert_eq!(next_broadcast_frame(&mut c)["offset"], first["offset"]);
    redis.cli(&["DEL", "{shardcast:room:lost}:h", "{shardcast:room:lost}:e"]);
    let after = publish(&s, json!({ "message": "after", "room": "lost" }));
    assert_ne!(after["epoch"], first["epoch"]);
    assert_eq!(
        c.recv().json(),
        json!({ "unrecovered": { "room": "lost", "reason": "epoch_changed" } })
    );
    let f = next_broadcast_frame(&mut c);
    assert_eq!(
        (&f["broadcast"], &f["epoch"]),
        (&json!("after"), &after["epoch"])
    );
    assert_eq!(s.metric("ws_history_gaps_unrecoverable_total"), 1.0);
}

/// The next frame that is not a heartbeat.
fn next_frame(c: &mut Client) -> serde_json::Value {
    loop {
        let v = c.recv().json();
        if v.get("ts").is_none() {
            return v;
        }
    }
}

/// Redis losing its newest writes, as a failover to a replica that had not
/// got them does (here by hand: the newest entry deleted and the head set
/// back to the one before): a client whose token is past the stream's head
/// is told `rewound`; the shard that delivered the lost one sees the next
/// broadcast name an older predecessor and ends the stream's life; from
/// then on every reader, live or coming back with a token from before the
/// loss, is told `epoch_changed`. Never a silent gap, never one offset for
/// two broadcasts.
#[test]
fn a_stream_that_lost_its_newest_writes_starts_a_new_life() {
    let redis = Redis::start();
    let s = server(&redis, "plain", &[]);
    let (mut live, _) = s.connect("room=rw");
    let sent: Vec<serde_json::Value> = (0..3)
        .map(|i| publish(&s, json!({ "message": format!("m{i}"), "room": "rw" })))
        .collect();
    let got: Vec<serde_json::Value> = (0..3).map(|_| next_broadcast_frame(&mut live)).collect();
    let token = |f: &serde_json::Value| f["position"].as_str().unwrap().to_string();
    let epoch = sent[0]["epoch"].as_str().unwrap();
    let (stream, head) = ("{shardcast:room:rw}:h", "{shardcast:room:rw}:e");
    redis.cli(&["XDEL", stream, sent[2]["offset"].as_str().unwrap()]);
    let behind = format!("{epoch}:{}", sent[1]["offset"].as_str().unwrap());
    redis.cli(&["SET", head, &behind, "PX", "3600000"]);

    let (mut ahead, w) = s.connect(&format!("room=rw&position={}", token(&got[2])));
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(
        next_frame(&mut ahead),
        json!({ "unrecovered": { "room": "rw", "reason": "rewound" } })
    );

    // Its predecessor is m1, older than m2 which the live socket's shard
    // delivered: that shard ends the stream's life.
    let m3 = publish(&s, json!({ "message": "m3", "room": "rw" }));
    assert_eq!(
        m3["epoch"], sent[0]["epoch"],
        "the rewound life goes on until ended"
    );
    assert_eq!(next_broadcast_frame(&mut live)["offset"], m3["offset"]);
    assert_eq!(next_broadcast_frame(&mut ahead)["offset"], m3["offset"]);
    wait_for(
        "the rewound life to be ended",
        Duration::from_secs(10),
        || (redis.cli(&["EXISTS", head]).trim() == "0").then_some(()),
    );
    assert_eq!(s.metric("ws_history_rewound_total"), 1.0);

    // A client from before the loss (it had m0) cannot be given m1 and m2
    // as one life: it is told.
    let (mut before, w) = s.connect(&format!("room=rw&position={}", token(&got[0])));
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(
        next_frame(&mut before),
        json!({ "unrecovered": { "room": "rw", "reason": "epoch_changed" } })
    );

    let m4 = publish(&s, json!({ "message": "m4", "room": "rw" }));
    assert_ne!(m4["epoch"], sent[0]["epoch"], "a new life");
    for c in [&mut live, &mut ahead] {
        assert_eq!(
            next_frame(c),
            json!({ "unrecovered": { "room": "rw", "reason": "epoch_changed" } })
        );
        let f = next_broadcast_frame(c);
        assert_eq!((&f["offset"], &f["epoch"]), (&m4["offset"], &m4["epoch"]));
    }
    // Its shard tells every socket of the room when the new life comes,
    // this one again too (it is told at most twice, never missed).
    let mut f = next_frame(&mut before);
    if f.get("unrecovered").is_some() {
        f = next_frame(&mut before);
    }
    assert_eq!(f["offset"], m4["offset"], "{f}");
}

/// A subscription that dies without a word (a proxy drops what Redis sends
/// on it, and the connection stays open: no RST, no FIN): the probe finds
/// each channel's stream ahead of what the shard delivered and reads the
/// gap back, so the sockets behind that shard get every broadcast, in
/// order, without reconnecting.
#[test]
fn a_subscription_that_dies_without_a_word_is_caught_by_the_probe() {
    use common::blackhole::Blackhole;
    const MESSAGES: usize = 200;
    let redis = Redis::start();
    let hole = Blackhole::start(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let behind = Server::builder_url(&format!("redis://{}", hole.addr), true)
        .shards(2)
        .arg("--history-probe-interval", "300ms")
        .start();
    let direct = server(&redis, "plain", &[]);
    let followers: Vec<_> = (0..4)
        .map(|i| {
            let in_room = i % 2 == 0;
            let f = follow(
                vec![behind.addr],
                in_room.then(|| "quiet".to_string()),
                None,
            );
            (in_room, f)
        })
        .collect();
    wait_for("the shards to subscribe", Duration::from_secs(10), || {
        (hole.subscribers() >= 2).then_some(())
    });
    let mut published = Vec::new();
    for i in 0..MESSAGES {
        if i == MESSAGES / 4 {
            hole.silence();
        }
        let room = (i % 2 == 1).then_some("quiet");
        let r = publish(&direct, json!({ "message": format!("m{i}"), "room": room }));
        published.push((offset(&r["offset"]), room.is_some()));
    }
    let followed = end_and_join(direct.addr, "quiet", &mut published, followers);
    assert_eq!(followed.iter().map(|(_, f)| f.reconnects).sum::<usize>(), 0);
    let checked = check_followed(&published, &followed);
    let gaps = behind.metric("ws_history_gaps_total");
    let filled = behind.metric("ws_history_gap_recovered_total");
    assert!(gaps >= 1.0, "no gap was found: the silence was not met");
    eprintln!("silent subscription: {checked} deliveries checked; the probe found {gaps} gaps and read {filled} broadcasts back");
}
