//! Silent sockets: the server pings a socket that has sent nothing for half
//! of `idle_timeout`, and closes one still silent after all of it with the
//! goodbye (reason `idle`) and Close 1001, its count stored first. A peer
//! that answers the pings stays, and so does everyone else. The Ping rides
//! the heartbeat's send when one comes near the half.
mod common;
use common::*;

#[test]
fn a_silent_socket_is_pinged_then_closed_with_its_count_stored() {
    let redis = Redis::start();
    let server = Server::builder(&redis).arg("--idle-timeout", "2s").start();
    let (mut silent, welcome) = server.connect("");
    let id = session_id(&welcome);
    for i in 1..=3 {
        assert_eq!(silent.count("x"), i);
    }
    // From here on it never answers: a Ping first, then the goodbye.
    let (frames, code) = silent.until_close();
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert!(
        opcodes.contains(&0x9),
        "a Ping before the close: {opcodes:?}"
    );
    let bye = goodbye(&frames);
    assert_eq!(bye["bye"], true);
    assert_eq!(bye["reason"], "idle");
    assert_eq!(bye["total"], 3);
    assert_eq!(code, Some(1001));
    assert_eq!(redis.session_count(&id), Some(3), "stored before the Close");
    assert_eq!(server.metric("ws_errors_total{kind=\"idle_timeout\"}"), 1.0);
    assert!(server
        .log_lines()
        .iter()
        .any(|l| l["msg"] == "closing a silent socket"));
}

#[test]
fn a_peer_that_answers_pings_stays() {
    let redis = Redis::start();
    let server = Server::builder(&redis).arg("--idle-timeout", "2s").start();
    let (mut quiet, _) = server.connect("");
    assert_eq!(quiet.count("hello"), 1);
    // Three answered pings: at least 1.5 idle timeouts without a message.
    let mut pings = 0;
    while pings < 3 {
        let f = quiet.recv();
        match f.opcode {
            0x9 => {
                quiet.send_raw(&Client::frame(0x8A, &f.payload));
                pings += 1;
            }
            0x1 => assert!(
                f.json()["ts"].is_string(),
                "only heartbeats: {:?}",
                f.json()
            ),
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert_eq!(quiet.count("still here"), 2);
    assert_eq!(server.metric("ws_errors_total{kind=\"idle_timeout\"}"), 0.0);
}

/// With heartbeats more frequent than half the timeout, each idle Ping goes
/// out right behind a heartbeat, in the same send, and only once per half
/// timeout: after the Pong, the next heartbeat goes alone.
#[test]
fn the_idle_ping_rides_the_heartbeat() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--idle-timeout", "4s")
        .arg("--heartbeat-interval", "1s")
        .start();
    let (mut quiet, _) = server.connect("");
    assert_eq!(quiet.count("hello"), 1);
    // Frames as they came: 'h' a heartbeat, 'p' a Ping.
    let mut seen = String::new();
    while seen.matches('p').count() < 3 {
        let f = quiet.recv();
        match f.opcode {
            0x9 => {
                quiet.send_raw(&Client::frame(0x8A, &f.payload));
                seen.push('p');
            }
            0x1 if f.json()["ts"].is_string() => seen.push('h'),
            other => panic!("unexpected frame {other}: {:?}", f.payload),
        }
    }
    assert!(!seen.contains("pp"), "a Ping without a heartbeat: {seen}");
    assert!(
        !seen.contains("hphp"),
        "a Ping on two heartbeats in a row: {seen}"
    );
    let total = server.metric("ws_idle_pings_total");
    let rode = server.metric("ws_idle_pings_with_heartbeat_total");
    assert!(total >= 3.0, "{total} idle pings");
    assert!(rode >= 2.0, "{rode} of {total} pings went with a heartbeat");
    assert_eq!(quiet.count("still here"), 2);
}
