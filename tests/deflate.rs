//! permessage-deflate (RFC 7692) end to end: what the server answers to an
//! offer, which frames it compresses (and which it leaves, under the
//! threshold or to sockets that did not ask), compressed messages from the
//! client counted like any, a client's window under 32 KiB honoured, the
//! option off by default, and Python `websockets` (its zlib, not ours) as
//! the client. Chromium negotiates it in tests/console.rs; Autobahn's cases
//! 12 and 13 run in tests/autobahn.rs.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn server(redis: &Redis, on: bool) -> Server {
    Server::builder(redis)
        .arg("--permessage-deflate", if on { "true" } else { "false" })
        .start()
}

/// The extension the 101 agreed to, if any.
fn agreed(c: &Client) -> Option<String> {
    c.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim().to_string())
    })
}

fn connect(s: &Server, headers: &str) -> (Client, Frame) {
    let mut c = Client::try_connect_with(s.addr, "", headers).expect("upgrade");
    let welcome = c.recv();
    (c, welcome)
}

#[test]
fn frames_over_the_threshold_go_compressed_to_sockets_that_asked() {
    let redis = Redis::start();
    let s = server(&redis, true);
    let (mut zipped, welcome) = connect(&s, OFFER);
    assert_eq!(
        agreed(&zipped).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert!(welcome.compressed, "the welcome is over 128 bytes");
    assert!(welcome.json()["session_id"].is_string());
    let (mut plain, welcome) = connect(&s, "");
    assert_eq!(agreed(&plain), None);
    assert!(!welcome.compressed);

    // A compressed message is counted like any; the reply is short, so
    // it goes as it is.
    let text = "a chat message that says the same thing again and again ".repeat(8);
    zipped.send_raw(&{
        let mut f = Vec::new();
        shardcast_kit::wire::masked(&mut f, 0xC1, &deflate(text.as_bytes()), [1, 2, 3, 4]);
        f
    });
    let reply = zipped.recv_skipping_heartbeats();
    assert!(!reply.compressed);
    assert_eq!(reply.json(), json!({ "count": 1 }));
    assert_eq!(plain.count("plain"), 1);

    let long = "deploy at 18:00, all hands ".repeat(20);
    publish(&s, json!({ "message": long }));
    let f = next_broadcast_raw(&mut zipped);
    assert!(f.compressed, "a long broadcast goes compressed");
    assert_eq!(f.json()["broadcast"], json!(long));
    let f = next_broadcast_raw(&mut plain);
    assert!(!f.compressed, "and as it is to the socket that did not ask");
    assert_eq!(f.json()["broadcast"], json!(long));
    publish(&s, json!({ "message": "short" }));
    let f = next_broadcast_raw(&mut zipped);
    assert_eq!(f.json()["broadcast"], "short");
    assert!(
        f.compressed,
        "with history on, even a short broadcast's frame (offset, position) is over 128 bytes"
    );
}

#[test]
fn a_window_under_32_kib_is_honoured_and_a_bad_offer_declined() {
    let redis = Redis::start();
    let s = server(&redis, true);
    let (mut c, welcome) = connect(
        &s,
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n",
    );
    assert_eq!(
        agreed(&c).as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9"
        )
    );
    assert!(welcome.compressed);
    let long = "x".repeat(4000);
    publish(&s, json!({ "message": long }));
    let f = next_broadcast_raw(&mut c);
    assert!(f.compressed);
    assert_eq!(f.json()["broadcast"], json!(long));
    // Huffman-only: no match reaches back, so a run of one letter still
    // costs a bit a byte at least (with matches it would be a few dozen).
    assert!(f.wire * 8 >= f.payload.len(), "{} on the wire", f.wire);
    let (mut full, _) = connect(&s, OFFER);
    publish(&s, json!({ "message": long }));
    let f = next_broadcast_raw(&mut full);
    assert!(f.wire < 200, "{} on the wire with matches", f.wire);

    let (c, _) = connect(
        &s,
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n",
    );
    assert_eq!(agreed(&c), None, "a window under 8 bits is not one");
}

#[test]
fn off_by_default_an_offer_is_ignored_and_a_compressed_frame_refused() {
    let redis = Redis::start();
    let s = Server::builder(&redis).start();
    let (mut c, welcome) = connect(&s, OFFER);
    assert_eq!(agreed(&c), None);
    assert!(!welcome.compressed);
    let mut f = Vec::new();
    shardcast_kit::wire::masked(&mut f, 0xC1, &deflate(b"hello"), [1, 2, 3, 4]);
    c.send_raw(&f);
    let (_, code) = c.until_close();
    assert_eq!(code, Some(1002));
}

/// Python `websockets`, with zlib, offers permessage-deflate by default
/// (with windows of its own choosing), compresses what it sends and
/// inflates what it gets.
#[test]
fn python_websockets_negotiates_it_and_talks_compressed_both_ways() {
    let redis = Redis::start();
    let s = server(&redis, true);
    let script = r#"
import asyncio, json, sys, urllib.request
import websockets
addr, key = sys.argv[1], sys.argv[2]
async def main():
    async with websockets.connect(f"ws://{addr}/ws/chat/", max_size=None) as ws:
        ext = ws.response_headers.get("Sec-WebSocket-Extensions")
        welcome = json.loads(await ws.recv())
        long = "counted though compressed " * 50
        await ws.send(long)
        reply = json.loads(await ws.recv())
        req = urllib.request.Request(f"http://{addr}/api/broadcast", method="POST",
            data=json.dumps({"message": long}).encode(),
            headers={"content-type": "application/json", "x-api-key": key})
        urllib.request.urlopen(req).read()
        while True:
            frame = json.loads(await ws.recv())
            if "broadcast" in frame:
                break
        print(json.dumps({"ext": ext, "session": welcome["session_id"], "reply": reply,
                          "whole": frame["broadcast"] == long}))
asyncio.run(main())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.addr.to_string(), TEST_API_KEY])
        .output()
        .expect("python3 with websockets (python3 -m pip install websockets==13.1)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["ext"].as_str().unwrap_or_default().starts_with(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{v}"
    );
    assert_eq!(v["reply"], json!({ "count": 1 }), "{v}");
    assert_eq!(v["whole"], true, "{v}");
}
