//! Every WebSocket row of the wire contract, one test each, against the real
//! binary and a real Redis: welcome, counting, heartbeats, goodbyes, every
//! close code, rate limiting, pings, paths, resume and its refusals, DELETE.

mod common;

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

fn start(redis: &Redis) -> Server {
    Server::builder(redis).shards(2).start()
}

/// A server-issued id must be a canonical (lowercase, hyphenated) random v4 UUID.
fn assert_v4(id: &str) {
    let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(u.get_version_num(), 4, "{id} is not a v4 UUID");
    assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
    assert_eq!(
        u.hyphenated().to_string(),
        id,
        "{id} is not in canonical form"
    );
}

fn assert_fresh(welcome: &Value, not: &str) {
    let id = session_id(welcome);
    assert_v4(&id);
    assert_ne!(id, not, "the server adopted a client-chosen id");
    assert_eq!(welcome["count"], 0, "{welcome}");
    assert_eq!(welcome["resumed"], false, "{welcome}");
}

/// Client Close, then the goodbye with `total`, the echo, and the TCP close.
fn close_cleanly(c: &mut Client, total: u64) {
    c.send_close(1000);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1000));
    let last = before.last().expect("no goodbye before the Close").json();
    assert_eq!(last, json!({"bye": true, "total": total}));
}

/// Opens a socket, counts once, sends `bytes`, and expects the server's Close
/// with `code` and no count for what it sent. A resume then shows the count
/// still at 1, which is the proof that nothing in `bytes` was counted.
fn assert_refused(server: &Server, bytes: &[u8], code: u16, what: &str) {
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("before"), 1, "{what}");
    // The server may close before reading every byte we meant to send.
    let _ = std::io::Write::write_all(&mut c.stream, bytes);
    let (before, got) = c.until_close();
    assert_eq!(
        got,
        Some(code),
        "{what}: wrong close code (frames before: {before:?})"
    );
    for f in &before {
        assert!(
            f.opcode != 1 || f.json().get("count").is_none(),
            "{what}: counted {f:?}"
        );
    }
    // Answer the Close as RFC 6455 asks; the server then ends the TCP connection.
    let _ = std::io::Write::write_all(&mut c.stream, &Client::frame(0x88, &code.to_be_bytes()));
    assert!(
        c.is_closed(),
        "{what}: server kept the socket open after its Close"
    );
    let (_, again) = server.connect(&format!("session_id={id}"));
    assert_eq!(again["resumed"], true, "{what}: {again}");
    assert_eq!(again["count"], 1, "{what}: the refused frame was counted");
}

/// Milliseconds since the epoch of a `YYYY-MM-DDTHH:MM:SS.mmmZ` stamp; panics
/// on any other shape (offsets, missing or extra fraction digits, lowercase z).
fn parse_utc_millis(ts: &str) -> u64 {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 24, "{ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    for (at, want) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        assert_eq!(b[at], want, "{ts:?}: expected {:?} at {at}", want as char);
    }
    let num = |from: usize, to: usize| -> i64 {
        assert!(b[from..to].iter().all(u8::is_ascii_digit), "{ts:?}");
        ts[from..to].parse().unwrap()
    };
    let (y, mo, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (h, mi, s, ms) = (num(11, 13), num(14, 16), num(17, 19), num(20, 23));
    assert!((1..=12).contains(&mo) && (1..=31).contains(&d), "{ts:?}");
    assert!(h < 24 && mi < 60 && s < 61, "{ts:?}");
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (((days * 24 + h) * 60 + mi) * 60 + s) as u64 * 1000 + ms as u64
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn welcome_frame_comes_first_with_a_fresh_v4_id() {
    let redis = Redis::start();
    let server = start(&redis);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        // `connect` fails unless the very first frame after the 101 is text.
        let (mut c, welcome) = server.connect("");
        let plain = contract_welcome(&welcome);
        let obj = plain.as_object().expect("welcome is a JSON object");
        assert_eq!(
            obj.len(),
            3,
            "welcome has exactly session_id, count, resumed, and an offset: {welcome}"
        );
        let id = session_id(&welcome);
        assert_v4(&id);
        assert_eq!(welcome["count"], 0);
        assert_eq!(welcome["resumed"], false);
        assert!(ids.insert(id), "the server issued the same id twice");
        assert_eq!(
            c.count("first"),
            1,
            "the welcome is not counted as a message"
        );
    }
}

#[test]
fn each_text_frame_gets_its_running_count_in_order() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, _) = server.connect("");
    let messages = [
        r#"{"type":"chat","text":"hello"}"#,
        "plain words, not JSON",
        "{\"count\":999}",
        "[1,2,3]",
        "h\u{e9}llo w\u{f6}rld \u{2713} \u{1f600}",
        "null",
    ];
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(c.count(m), i as u64 + 1, "message {m:?}");
    }
    // Pipelined: all in one write, then one reply per message in order.
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(Client::frame(0x81, format!("burst {i}").as_bytes()));
    }
    c.send_raw(&burst);
    for want in 7..=56u64 {
        let reply = c.recv_skipping_heartbeats().json();
        assert_eq!(
            reply,
            json!({ "count": want }),
            "replies must be exactly {{\"count\":n}}, in order"
        );
    }
}

#[test]
fn empty_text_message_counts() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, _) = server.connect("");
    assert_eq!(c.count(""), 1);
    assert_eq!(c.count(""), 2);
    assert_eq!(c.count("not empty"), 3);
    // An empty message sent as fragments (all of them empty) is one message.
    let mut m = Client::frame(0x01, b"");
    m.extend(Client::frame(0x00, b""));
    m.extend(Client::frame(0x80, b""));
    c.send_raw(&m);
    assert_eq!(c.recv_skipping_heartbeats().json(), json!({"count": 4}));
}

#[test]
fn fragmented_message_counts_once() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, _) = server.connect("");
    let mut m = Client::frame(0x01, b"ab");
    m.extend(Client::frame(0x00, b"cd"));
    m.extend(Client::frame(0x80, b"ef"));
    c.send_raw(&m);
    assert_eq!(c.recv().json(), json!({"count": 1}));

    // A character split across fragments, and a ping between fragments
    // (control frames may interleave): still one message, and the pong
    // comes back before the count because the ping arrived first.
    let euro = "\u{20ac}".as_bytes();
    let mut m = Client::frame(0x01, &euro[..1]);
    m.extend(Client::frame(0x89, b"mid"));
    m.extend(Client::frame(0x00, &euro[1..2]));
    m.extend(Client::frame(0x80, &euro[2..]));
    c.send_raw(&m);
    let pong = c.recv();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0x0A, &b"mid"[..]));
    assert_eq!(c.recv().json(), json!({"count": 2}));
    assert_eq!(c.count("whole"), 3);
}

#[test]
fn heartbeat_reaches_every_open_socket_as_utc_millis() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--heartbeat-interval", "100ms")
        .start();
    let mut clients = sockets_on_every_shard(&server, 2);
    assert!(clients.len() >= 2);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut stamps = Vec::new();
        while stamps.len() < 2 {
            let v = c.recv().json();
            assert_eq!(
                v.as_object().map(|o| o.len()),
                Some(1),
                "socket {i}: heartbeat is only {{\"ts\"}}: {v}"
            );
            let ts = v["ts"]
                .as_str()
                .unwrap_or_else(|| panic!("socket {i}: expected a heartbeat, got {v}"));
            stamps.push(parse_utc_millis(ts));
        }
        // UTC, not local time: the stamp is close to the test's own clock.
        let now = now_millis();
        for t in &stamps {
            assert!(
                t.abs_diff(now) < 60_000,
                "socket {i}: ts {t} is far from now {now}"
            );
        }
        assert!(
            stamps[1] > stamps[0],
            "socket {i}: heartbeats must move forward: {stamps:?}"
        );
    }
    // Heartbeats do not disturb the count.
    assert_eq!(clients[0].count("after heartbeats"), 1);
}

#[test]
fn client_close_gets_goodbye_then_echo_of_its_code() {
    let redis = Redis::start();
    let server = start(&redis);
    for code in [1000u16, 1001, 4001] {
        let (mut c, welcome) = server.connect("");
        let id = session_id(&welcome);
        for i in 1..=3 {
            assert_eq!(c.count("m"), i);
        }
        c.send_close(code);
        let (before, got) = c.until_close();
        assert_eq!(got, Some(code), "the server must echo the client's code");
        assert_eq!(
            before.len(),
            1,
            "exactly one frame (the goodbye) before the Close: {before:?}"
        );
        assert_eq!(before[0].json(), json!({"bye": true, "total": 3}));
        // Stored before the Close frame went out, so no polling here.
        assert_eq!(
            redis.session_count(&id),
            Some(3),
            "count not in Redis at Close"
        );
        assert!(
            c.is_closed(),
            "the server must end the TCP connection after the echo"
        );
    }
}

#[test]
fn client_close_without_payload_is_echoed_as_1000() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, _) = server.connect("");
    assert_eq!(c.count("one"), 1);
    assert_eq!(c.count("two"), 2);
    c.send_raw(&Client::frame(0x88, b""));
    let (before, got) = c.until_close();
    assert_eq!(got, Some(1000));
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].json(), json!({"bye": true, "total": 2}));
    assert!(c.is_closed());
}

#[test]
fn binary_frame_closes_1003_and_is_not_counted() {
    let redis = Redis::start();
    let server = start(&redis);
    assert_refused(
        &server,
        &Client::frame(0x82, b"\x00\x01binary"),
        1003,
        "binary frame",
    );
    assert_refused(
        &server,
        &Client::frame(0x82, b""),
        1003,
        "empty binary frame",
    );
    // A binary message that starts fragmented is still binary.
    assert_refused(
        &server,
        &Client::frame(0x02, b"part"),
        1003,
        "fragmented binary",
    );
}

#[test]
fn invalid_utf8_closes_1007() {
    let redis = Redis::start();
    let server = start(&redis);
    let euro = "\u{20ac}".as_bytes();
    let mut split_bad = Client::frame(0x01, b"ok so far ");
    split_bad.extend(Client::frame(0x80, &[0xC3, 0x28]));
    let cases: [(&str, Vec<u8>); 5] = [
        ("bytes 0xff 0xfe", Client::frame(0x81, &[0xff, 0xfe])),
        ("overlong NUL", Client::frame(0x81, &[b'a', 0xC0, 0x80])),
        ("UTF-16 surrogate", Client::frame(0x81, &[0xED, 0xA0, 0x80])),
        (
            "message ends inside a character",
            Client::frame(0x81, &euro[..2]),
        ),
        ("bad byte in the last fragment", split_bad),
    ];
    for (what, bytes) in cases {
        assert_refused(&server, &bytes, 1007, what);
    }
}

#[test]
fn message_over_max_message_bytes_closes_1009() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--max-message-bytes", "1024")
        .start();
    // Exactly at the limit is allowed.
    let (mut c, _) = server.connect("");
    assert_eq!(c.count(&"a".repeat(1024)), 1);
    c.send_raw(&Client::frame(0x81, &[b'a'; 1024]));
    assert_eq!(c.recv().json(), json!({"count": 2}));

    assert_refused(
        &server,
        &Client::frame(0x81, &[b'a'; 1025]),
        1009,
        "one frame of 1025 bytes",
    );
    let mut parts = Client::frame(0x01, &[b'a'; 600]);
    parts.extend(Client::frame(0x80, &[b'a'; 600]));
    assert_refused(&server, &parts, 1009, "two fragments of 600 bytes");
    // Only the header of a frame claiming 4 GiB: refused without waiting for it.
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&(4u64 << 30).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert_refused(&server, &huge, 1009, "a 4 GiB length");
}

#[test]
fn unmasked_frame_closes_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    assert_refused(&server, &[0x81, 0x02, b'h', b'i'], 1002, "unmasked text");
    assert_refused(&server, &[0x89, 0x00], 1002, "unmasked ping");
}

#[test]
fn reserved_opcode_closes_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    for opcode in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_refused(
            &server,
            &Client::frame(0x80 | opcode, b"x"),
            1002,
            &format!("opcode {opcode:#x}"),
        );
    }
}

#[test]
fn reserved_bits_close_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    for (bit, name) in [(0x40u8, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        // No extension was negotiated, so any RSV bit is a violation.
        assert_refused(&server, &Client::frame(0x81 | bit, b"x"), 1002, name);
    }
}

#[test]
fn fragmented_control_frame_closes_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    assert_refused(
        &server,
        &Client::frame(0x09, b"p"),
        1002,
        "ping without FIN",
    );
    assert_refused(
        &server,
        &Client::frame(0x0A, b"p"),
        1002,
        "pong without FIN",
    );
    assert_refused(
        &server,
        &Client::frame(0x08, &1000u16.to_be_bytes()),
        1002,
        "close without FIN",
    );
}

#[test]
fn oversized_control_frame_closes_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    assert_refused(
        &server,
        &Client::frame(0x89, &[b'p'; 126]),
        1002,
        "ping of 126 bytes",
    );
    assert_refused(
        &server,
        &Client::frame(0x8A, &[b'p'; 200]),
        1002,
        "pong of 200 bytes",
    );
}

#[test]
fn out_of_sequence_continuation_closes_1002() {
    let redis = Redis::start();
    let server = start(&redis);
    assert_refused(
        &server,
        &Client::frame(0x80, b"x"),
        1002,
        "continuation with no message",
    );
    let mut two = Client::frame(0x01, b"a");
    two.extend(Client::frame(0x81, b"b"));
    assert_refused(&server, &two, 1002, "new message inside a fragmented one");
}

#[test]
fn rate_limited_message_gets_an_error_and_is_not_counted() {
    let redis = Redis::start();
    let server = rate_limited(&redis);
    let (mut c, _) = server.connect("");
    // Six in one write: the burst of five is spent within microseconds.
    let mut six = Vec::new();
    for i in 0..6 {
        six.extend(Client::frame(0x81, format!("m{i}").as_bytes()));
    }
    c.send_raw(&six);
    for want in 1..=5u64 {
        assert_eq!(c.recv().json(), json!({ "count": want }));
    }
    assert_eq!(c.recv().json(), json!({"error": "rate_limited"}));
    // One refusal does not close the socket.
    c.send_raw(&Client::frame(0x89, b"still here?"));
    let pong = c.recv();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0x0A, &b"still here?"[..])
    );
    // The goodbye's total proves the refused message was not counted.
    close_cleanly(&mut c, 5);
}

#[test]
fn rate_limit_abuse_that_goes_on_closes_1008() {
    let redis = Redis::start();
    let server = rate_limited(&redis);
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    let mut flood = Vec::new();
    for i in 0..20 {
        flood.extend(Client::frame(0x81, format!("m{i}").as_bytes()));
    }
    c.send_raw(&flood);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1008), "frames before: {before:?}");
    let replies: Vec<Value> = before.iter().map(Frame::json).collect();
    let want: Vec<Value> = (1..=5).map(|n| json!({ "count": n })).collect();
    assert!(
        replies.len() >= 5 && replies[..5] == want[..],
        "the burst of 5 counts first: {replies:?}"
    );
    let errors = &replies[5..];
    assert!(
        !errors.is_empty() && errors.len() < 3,
        "1 or 2 refusals before the 3rd strike closes: {replies:?}"
    );
    assert!(
        errors
            .iter()
            .all(|v| *v == json!({"error": "rate_limited"})),
        "{replies:?}"
    );
    let (_, again) = server.connect(&format!("session_id={id}"));
    assert_eq!(again["count"], 5, "refused messages were counted: {again}");
}

fn rate_limited(redis: &Redis) -> Server {
    Server::builder(redis)
        .shards(2)
        .arg("--rate-limit", "5")
        .arg("--rate-burst", "5")
        .arg("--rate-strikes", "3")
        .start()
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, _) = server.connect("");
    let binary: Vec<u8> = (0..125u8).map(|b| b.wrapping_mul(7) ^ 0xA5).collect();
    for payload in [&b""[..], b"hello", b"{\"count\":1}", &binary] {
        c.send_raw(&Client::frame(0x89, payload));
        let pong = c.recv();
        assert_eq!(pong.opcode, 0x0A, "expected a Pong, got {pong:?}");
        assert_eq!(
            pong.payload, payload,
            "the Pong must carry the Ping's payload"
        );
    }
    // Pings are not messages; an unsolicited Pong gets no answer at all.
    c.send_raw(&Client::frame(0x8A, b"unsolicited"));
    assert_eq!(c.count("now a message"), 1);
}

#[test]
fn ws_chat_without_trailing_slash_is_the_same_endpoint() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut first, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(first.count("a"), 1);
    assert_eq!(first.count("b"), 2);
    close_cleanly(&mut first, 2);

    // An independent client library, on the path without the slash.
    let url = format!("ws://{}/ws/chat", server.addr);
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let (mut ws, resp) =
        tungstenite::client::client(url.as_str(), stream).expect("upgrade on /ws/chat");
    assert_eq!(resp.status(), 101);
    let welcome: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_v4(&session_id(&welcome));
    assert_eq!(welcome["resumed"], false);
    ws.send(tungstenite::Message::text("hi")).unwrap();
    let reply: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply, json!({"count": 1}));

    // Resume works there too.
    let url = format!("ws://{}/ws/chat?session_id={id}", server.addr);
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let (mut ws, _) =
        tungstenite::client::client(url.as_str(), stream).expect("upgrade on /ws/chat?session_id");
    let welcome: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(
        contract_welcome(&welcome),
        json!({"session_id": id, "count": 2, "resumed": true})
    );
}

#[test]
fn upgrade_on_any_other_path_is_404() {
    let redis = Redis::start();
    let server = start(&redis);
    for path in [
        "/",
        "/ws",
        "/ws/",
        "/ws/chat/x",
        "/ws/chat//",
        "/ws/chatroom",
        "/WS/CHAT/",
        "/healthz",
        "/api/sessions/x",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        let (status, _) = raw_response(&mut s);
        assert_eq!(status, 404, "an upgrade on {path} must get 404");
    }
}

/// Counts 3 on a fresh session, closes, and resumes it with `?{alias}=<id>`.
fn resume_via(alias: &str) {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    for i in 1..=3 {
        assert_eq!(c.count("m"), i);
    }
    close_cleanly(&mut c, 3);
    let (mut r, again) = server.connect(&format!("{alias}={id}"));
    assert_eq!(
        contract_welcome(&again),
        json!({"session_id": id, "count": 3, "resumed": true}),
        "resume via {alias}"
    );
    assert_eq!(r.count("next"), 4);
    close_cleanly(&mut r, 4);
    // The id is found among other query parameters too.
    let (mut r, again) = server.connect(&format!("lang=en&{alias}={id}&x"));
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(r.count("next"), 5);
}

#[test]
fn resume_via_session_id() {
    resume_via("session_id");
}

#[test]
fn resume_via_session_uuid_alias() {
    resume_via("session_uuid");
}

#[test]
fn resume_via_session_alias() {
    resume_via("session");
}

/// Closes and resumes the same session `rounds` times at once, counting once
/// each time. Each new connection has a new source port, so the kernel
/// spreads them over both shards; a shard that held the session a moment ago
/// must not answer from a stale copy.
fn resume_round_trips(server: &Server, rounds: u64) {
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("m"), 1);
    close_cleanly(&mut c, 1);
    for n in 2..=rounds {
        let (mut c, again) = server.connect(&format!("session_id={id}"));
        assert_eq!(
            contract_welcome(&again),
            json!({"session_id": id, "count": n - 1, "resumed": true}),
            "round {n}"
        );
        assert_eq!(c.count("m"), n, "round {n}");
        close_cleanly(&mut c, n);
    }
}

#[test]
fn resume_right_after_a_close_continues_the_count_on_any_shard() {
    let redis = Redis::start();
    let server = start(&redis);
    // Reconnecting at once is what clients do after a drop; the count was in
    // Redis before the Close frame, so every resume must continue from it.
    resume_round_trips(&server, 40);
}

#[test]
fn resume_right_after_the_welcome_works_on_any_shard() {
    let redis = Redis::start();
    let server = start(&redis);
    // Twenty tries: the second connection lands on the other shard about half
    // the time, so a shard-local view of new sessions cannot pass by luck.
    for attempt in 0..20 {
        let (mut a, welcome) = server.connect("");
        let id = session_id(&welcome);
        assert_eq!(a.count("m"), 1);
        let (mut b, again) = server.connect(&format!("session_id={id}"));
        // Only the id and `resumed` are checked: a count up to one flush
        // interval old is what async durability allows a second live socket.
        assert_eq!(
            (session_id(&again), &again["resumed"]),
            (id.clone(), &json!(true)),
            "attempt {attempt}: a live, welcomed session was not found: {again}"
        );
        b.count("m");
        wait_for("both increments in Redis", LIMIT, || {
            (redis.session_count(&id) == Some(2)).then_some(())
        });
    }
}

#[test]
fn unknown_session_id_is_never_adopted() {
    let redis = Redis::start();
    let server = start(&redis);
    for _ in 0..5 {
        let unknown = uuid::Uuid::new_v4().to_string();
        let (mut c, welcome) = server.connect(&format!("session_id={unknown}"));
        assert_fresh(&welcome, &unknown);
        assert_eq!(c.count("m"), 1);
        let fresh = session_id(&welcome);
        wait_for("the fresh session in Redis", LIMIT, || {
            redis.session_count(&fresh)
        });
        assert_eq!(
            redis.session_count(&unknown),
            None,
            "the client-chosen id was stored"
        );
    }
}

#[test]
fn malformed_session_ids_are_never_adopted() {
    let redis = Redis::start();
    let server = start(&redis);
    let long = "a".repeat(2000);
    let cases = [
        "",
        "not-a-uuid",
        "..%2F..%2Fetc%2Fpasswd",
        "00000000-0000-0000-0000-000000000000",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8", // v1
        "zzzzzzzz-zzzz-4zzz-8zzz-zzzzzzzzzzzz",
        "123e4567-e89b-42d3-a456-42661417400", // one digit short
        "123e4567-e89b-42d3-a456-4266141740000", // one digit long
        "%27%20OR%201%3D1",
        long.as_str(),
    ];
    for alias in ["session_id", "session_uuid", "session"] {
        for bad in cases {
            let (mut c, welcome) = server.connect(&format!("{alias}={bad}"));
            assert_fresh(&welcome, bad);
            assert_eq!(c.count("m"), 1, "{alias}={bad}");
        }
    }
}

#[test]
fn guessed_session_id_is_never_adopted() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, welcome) = server.connect("");
    let real = session_id(&welcome);
    for i in 1..=3 {
        assert_eq!(c.count("m"), i);
    }
    close_cleanly(&mut c, 3);
    // Neighbours of a real id: its last digit changed, its first digit changed.
    let flip = |s: &str, at: usize| {
        let mut b = s.as_bytes().to_vec();
        b[at] = if b[at] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    for guess in [flip(&real, 35), flip(&real, 0)] {
        let (mut g, welcome) = server.connect(&format!("session_id={guess}"));
        assert_fresh(&welcome, &guess);
        assert_ne!(session_id(&welcome), real);
        assert_eq!(g.count("m"), 1);
    }
    let (_, again) = server.connect(&format!("session_id={real}"));
    assert_eq!(
        contract_welcome(&again),
        json!({"session_id": real, "count": 3, "resumed": true}),
        "guesses touched the real session"
    );
}

#[test]
fn expired_session_is_never_adopted() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--session-ttl", "1s")
        .start();
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("m"), 1);
    close_cleanly(&mut c, 1);
    wait_for("the session to expire in Redis", LIMIT, || {
        redis.session_count(&id).is_none().then_some(())
    });
    let (_, again) = server.connect(&format!("session_id={id}"));
    assert_fresh(&again, &id);
}

#[test]
fn deleted_session_id_is_never_adopted() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("m"), 1);
    close_cleanly(&mut c, 1);
    let (status, _) = http(server.addr, "DELETE", &format!("/api/sessions/{id}"), "");
    assert_eq!(status, 204);
    for _ in 0..4 {
        let (_, again) = server.connect(&format!("session_id={id}"));
        assert_fresh(&again, &id);
    }
}

#[test]
fn delete_closes_live_sockets_of_that_session_with_1008() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut a, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(a.count("m"), 1);
    let (mut b, again) = server.connect(&format!("session_id={id}"));
    assert_eq!(again["resumed"], true);
    let (mut bystander, _) = server.connect("");
    assert_eq!(bystander.count("m"), 1);

    let (status, body) = http(server.addr, "DELETE", &format!("/api/sessions/{id}"), "");
    assert_eq!(status, 204, "{body}");
    for (name, c) in [("first", &mut a), ("second", &mut b)] {
        let (before, code) = c.until_close();
        assert_eq!(
            code,
            Some(1008),
            "{name} socket of the deleted session: frames {before:?}"
        );
        for f in &before {
            assert!(f.opcode != 1 || f.json().get("count").is_none(), "{f:?}");
        }
    }
    assert_eq!(
        bystander.count("m"),
        2,
        "another session's socket must stay open"
    );
}

#[test]
fn two_live_connections_of_one_session_both_count() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut a, welcome) = server.connect("");
    let id = session_id(&welcome);
    for i in 1..=3 {
        assert_eq!(a.count("a"), i);
    }
    // The resume's welcome shows what Redis holds; async flushing may lag
    // by one interval, and this test is about the increments, not that lag.
    wait_for("the first 3 in Redis", LIMIT, || {
        (redis.session_count(&id) == Some(3)).then_some(())
    });
    let (mut b, again) = server.connect(&format!("session_id={id}"));
    assert_eq!(again["resumed"], true);
    assert_eq!(again["count"], 3);
    for _ in 0..4 {
        a.count("a");
        b.count("b");
    }
    a.send_close(1000);
    a.until_close();
    b.send_close(1000);
    b.until_close();
    // Increments from both are kept: 3 + 4 + 4.
    wait_for("Redis to hold both connections' increments", LIMIT, || {
        (redis.session_count(&id) == Some(11)).then_some(())
    });
    let (_, last) = server.connect(&format!("session_id={id}"));
    assert_eq!(last["count"], 11, "{last}");
}
