//! The server API behind its keys: on the service port only with a valid
//! key (either header, any of several keys, so keys rotate), nothing of it
//! there without a configured key; on the admin listener open on loopback
//! when no key is set and behind the key when one is; refusals are 401 or
//! 404 with a JSON reason and counted. And the admin listener serves many
//! clients at once: clients that trickle bytes never hold up `/metrics`.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

const OLD: &str = "old-key-0123456789abcdef";
const NEW: &str = "new-key-0123456789abcdef";

fn key(k: &str) -> String {
    format!("X-API-Key: {k}\r\n")
}

fn reason(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_service_port_serves_the_api_only_with_a_valid_key() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--api-key", &format!("{OLD},{NEW}"))
        .start();
    let (mut witness, _) = server.connect("");
    let addr = server.addr;
    let body = r#"{"message":"hi"}"#;
    // Both keys (rotation), in both headers.
    for header in [
        key(OLD),
        key(NEW),
        format!("Authorization: apikey {NEW}\r\n"),
        format!("authorization: ApiKey {OLD}\r\n"),
    ] {
        let (code, answer) = http_with(addr, "POST", "/api/broadcast", &header, body);
        assert_eq!(code, 202, "{header}: {answer}");
    }
    for _ in 0..4 {
        assert_eq!(next_broadcast(&mut witness), "hi");
    }
    // Wrong, missing, or a bearer token where a key belongs.
    let refusals = [
        (key("old-key-0123456789abcdeX"), "invalid_key"),
        (String::new(), "missing_key"),
        (format!("Authorization: Bearer {NEW}\r\n"), "missing_key"),
    ];
    for (header, why) in &refusals {
        for (method, path) in [
            ("POST", "/api/broadcast"),
            ("GET", "/api/sessions/8c1d6d4e-0000-4000-8000-000000000000"),
            (
                "DELETE",
                "/api/sessions/8c1d6d4e-0000-4000-8000-000000000000",
            ),
            ("GET", "/status"),
            ("GET", "/metrics"),
        ] {
            let (code, answer) = http_with(addr, method, path, header, body);
            assert_eq!(code, 401, "{method} {path} with {header:?}: {answer}");
            assert_eq!(reason(&answer), *why, "{method} {path}");
        }
    }
    assert_eq!(
        server.metric(r#"auth_denied_total{reason="invalid_key"}"#),
        5.0
    );
    assert_eq!(
        server.metric(r#"auth_denied_total{reason="missing_key"}"#),
        10.0
    );
    // Probes and the console stay open.
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(http_with(addr, "GET", path, "", "").0, 200, "{path}");
    }
    assert!(
        try_recv_broadcast(&mut witness).is_none(),
        "no refused call got through"
    );
    assert_eq!(witness.count("still here"), 1, "the witness never noticed");

    // The old key retired: a restart with the new one alone refuses it.
    drop(server);
    let server = Server::builder(&redis).arg("--api-key", NEW).start();
    let (code, answer) = http_with(server.addr, "POST", "/api/broadcast", &key(OLD), body);
    assert_eq!((code, reason(&answer)), (401, "invalid_key".into()));
    assert_eq!(
        http_with(server.addr, "POST", "/api/broadcast", &key(NEW), body).0,
        202
    );
}

/// Whether a read says the server closed the connection (not a timeout).
fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// The next broadcast within a short wait, if any.
fn try_recv_broadcast(c: &mut Client) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        if let Some(f) = c.try_recv() {
            let v = f.json();
            if v.get("broadcast").is_some() {
                return Some(v);
            }
        }
    }
    None
}

#[test]
fn without_a_key_the_api_is_only_on_the_loopback_admin_listener() {
    let redis = Redis::start();
    let server = Server::builder(&redis).without_api_key().start();
    let (mut witness, welcome) = server.connect("");
    let id = session_id(&welcome);
    let body = r#"{"message":"from the admin port"}"#;
    // The service port has no server API at all, whatever is sent.
    for header in [String::new(), key(TEST_API_KEY)] {
        for (method, path) in [
            ("POST", "/api/broadcast"),
            ("GET", "/status"),
            ("GET", "/metrics"),
        ] {
            let (code, answer) = http_with(server.addr, method, path, &header, body);
            assert_eq!(code, 404, "{method} {path}: {answer}");
            assert_eq!(reason(&answer), "api_disabled");
        }
    }
    // The admin listener, on loopback, serves it to whoever reaches it.
    let admin = server.admin();
    assert_eq!(server.wait_log("admin listening")["api"], "open");
    let (code, answer) = http_with(admin, "POST", "/api/broadcast", "", body);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(next_broadcast(&mut witness), "from the admin port");
    let (code, answer) = http_with(admin, "GET", &format!("/api/sessions/{id}"), "", "");
    assert_eq!(code, 200, "{answer}");
    let (code, status) = http_with(admin, "GET", "/status", "", "");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&status).unwrap()["connections"],
        1
    );
    assert_eq!(
        http_with(admin, "HEAD", &format!("/api/sessions/{id}"), "", "").0,
        200
    );
    assert!(http_with(admin, "GET", "/", "", "")
        .1
        .contains("shardcast console"));
    let (code, _) = http_with(admin, "DELETE", &format!("/api/sessions/{id}"), "", "");
    assert_eq!(code, 204);
    assert_eq!(
        witness.until_close().1,
        Some(1008),
        "the deleted session's socket"
    );
}

#[test]
fn with_a_key_the_admin_listener_wants_it_too() {
    let redis = Redis::start();
    let server = Server::builder(&redis).arg("--api-key", NEW).start();
    let admin = server.admin();
    assert_eq!(server.wait_log("admin listening")["api"], "key");
    let body = r#"{"message":"m"}"#;
    let (code, answer) = http_with(admin, "POST", "/api/broadcast", "", body);
    assert_eq!((code, reason(&answer)), (401, "missing_key".into()));
    let (code, answer) = http_with(admin, "GET", "/status", &key(OLD), "");
    assert_eq!((code, reason(&answer)), (401, "invalid_key".into()));
    assert_eq!(
        http_with(admin, "POST", "/api/broadcast", &key(NEW), body).0,
        202
    );
    // Probes and metrics stay open on the admin listener, and the console's
    // page (its calls need the key, which it asks for).
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        assert_eq!(http_with(admin, "GET", path, "", "").0, 200, "{path}");
    }
    let (_, m) = http_with(admin, "GET", "/metrics", "", "");
    let denied = |why: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("auth_denied_total{{reason=\"{why}\"}} ")))
            .map(|v| v.trim().parse::<f64>().unwrap())
    };
    assert_eq!(denied("missing_key"), Some(1.0));
    assert_eq!(denied("invalid_key"), Some(1.0));
}

#[test]
fn trickling_clients_never_hold_up_the_admin_listener() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--admin-request-timeout", "2s")
        .arg("--admin-max-connections", "150")
        .start();
    let admin = server.admin();
    // 100 clients that sent part of a request and nothing more.
    let mut stalled: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let (code, body) = http_with(admin, "GET", "/metrics", "", "");
        worst = worst.max(t.elapsed());
        assert_eq!(code, 200);
        assert!(body.contains("ws_connections_active"));
        let t = Instant::now();
        assert_eq!(http_with(admin, "GET", "/readyz", "", "").0, 200);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(50),
        "slowest answer {worst:?} beside 100 stalled clients"
    );
    // Each stalled client is cut off at the request deadline.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "closed at its deadline"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "the stalled clients were closed after {took:?}, at their 2 s deadline"
    );
}

#[test]
fn past_the_connection_cap_the_admin_listener_closes_at_once() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--admin-max-connections", "5")
        .start();
    let admin = server.admin();
    let held: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(admin).unwrap()).collect();
    // The five are served (waiting for their heads); one more is closed.
    wait_for(
        "a connection past the cap to be closed",
        Duration::from_secs(10),
        || {
            let mut s = TcpStream::connect(admin).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 16];
            closed(s.read(&mut b)).then_some(())
        },
    );
    drop(held);
    wait_for(
        "/metrics once the held ones are gone",
        Duration::from_secs(10),
        || (try_http(admin, "GET", "/metrics", "").ok()?.0 == 200).then_some(()),
    );
}
