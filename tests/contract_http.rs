//! Every HTTP row of the wire contract, one test each, against the real binary
//! and a real Redis: health, readiness, metrics, status, the session API,
//! broadcast, and every refusal (404, 400, 431, 426, the handshake deadline).

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

fn start(redis: &Redis) -> Server {
    Server::builder(redis).shards(2).start()
}

/// A whole response as the server sent it, and whether it then closed.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
    closed: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends raw bytes as one request and reads until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before it reads everything we send.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
        closed,
    }
}

/// A request with the test servers' API key (the server API needs one).
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nX-API-Key: {TEST_API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req.as_bytes())
}

/// An upgrade request to `/ws/chat/` with `headers` replacing the usual set.
fn upgrade_with(addr: SocketAddr, method: &str, headers: &str) -> Reply {
    let extra = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let req = format!("{method} /ws/chat/ HTTP/1.1\r\nHost: test\r\n{extra}{headers}\r\n");
    exchange(addr, req.as_bytes())
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";

/// A refusal: the status, a short JSON reason, and the connection closed.
fn assert_refusal(r: &Reply, statuses: &[u16], what: &str) {
    assert!(statuses.contains(&r.status), "{what}: got {r:?}");
    let reason = r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no reason in {:?}", r.body))
        .to_string();
    assert!(
        !reason.is_empty() && reason.len() <= 80,
        "{what}: the reason must be short: {reason:?}"
    );
    assert!(
        r.closed,
        "{what}: the server must close the connection after a refusal"
    );
}

/// Every sample of a Prometheus text exposition, by series (name and labels
/// as written), and every family's declared type. Panics on a line that is not
/// valid 0.0.4 text, or on a sample whose family has no `# TYPE` before it.
fn parse_prometheus(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "two TYPE lines: {line}"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .expect(line);
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').expect(line);
                assert!(valid_name(k), "bad label name: {line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate series: {line}"
        );
    }
    (samples, types)
}

fn scrape(server: &Server) -> HashMap<String, f64> {
    let r = request(server.addr, "GET", "/metrics", "");
    assert_eq!(r.status, 200);
    parse_prometheus(&r.body).0
}

#[test]
fn healthz_is_200_ok() {
    let redis = Redis::start();
    let server = start(&redis);
    let r = request(server.addr, "GET", "/healthz", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.closed);
}

#[test]
fn readyz_is_200_ready_once_serving() {
    let redis = Redis::start();
    let server = start(&redis);
    let r = wait_for("/readyz to answer 200", LIMIT, || {
        let r = request(server.addr, "GET", "/readyz", "");
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.json(), json!({"status": "ready"}));
}

#[test]
fn readyz_is_503_redis_unavailable_without_redis() {
    let mut redis = Redis::not_started();
    let server = start(&redis);
    let r = wait_for("/readyz to report redis_unavailable", LIMIT, || {
        let r = request(server.addr, "GET", "/readyz", "");
        (r.body.contains("redis_unavailable")).then_some(r)
    });
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"status": "redis_unavailable"}));
    // Liveness does not depend on Redis: restarting the process would not help.
    assert_eq!(request(server.addr, "GET", "/healthz", "").status, 200);
    assert_eq!(
        request(server.addr, "GET", "/status", "").json()["redis"],
        "down"
    );
    // Readiness follows Redis back up without a restart.
    redis.spawn();
    server.wait_ready_state("ready", LIMIT);
    assert_eq!(request(server.addr, "GET", "/readyz", "").status, 200);
}

/// The names PROTOCOL.md lists, with the type each must be exposed as.
const CONTRACT_METRICS: [(&str, &str); 15] = [
    ("ws_connections_active", "gauge"),
    ("ws_connections_total", "counter"),
    ("ws_messages_total", "counter"),
    ("ws_heartbeats_sent_total", "counter"),
    ("ws_broadcasts_delivered_total", "counter"),
    ("ws_errors_total", "counter"),
    ("ws_closes_total", "counter"),
    ("ws_sessions_resumed_total", "counter"),
    ("ws_message_duration_seconds", "histogram"),
    ("redis_commands_total", "counter"),
    ("redis_errors_total", "counter"),
    ("redis_up", "gauge"),
    ("app_startup_seconds", "gauge"),
    ("app_shutdown_seconds", "gauge"),
    ("app_info", "gauge"),
];

#[test]
fn metrics_is_prometheus_text_with_every_contract_metric() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--color", "green")
        .start();
    let r = request(server.addr, "GET", "/metrics", "");
    assert_eq!(r.status, 200);
    let ctype = r.header("content-type").unwrap_or("");
    assert!(
        ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
        "Content-Type {ctype:?}"
    );
    let (samples, types) = parse_prometheus(&r.body);
    for (name, kind) in CONTRACT_METRICS {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{name} must be declared as a {kind}"
        );
        assert!(
            samples.keys().any(|s| s == name
                || s.starts_with(&format!("{name}{{"))
                || s.starts_with(&format!("{name}_"))),
            "{name} has no sample"
        );
    }
    let io = std::env::var("SHARDCAST_IO")
        .ok()
        .filter(|io| io != "auto")
        .unwrap_or_else(|| "uring".into());
    let info = samples
        .iter()
        .find(|(k, _)| k.starts_with("app_info{"))
        .map(|(k, v)| (k.as_str(), *v));
    assert!(
        [io.as_str(), "epoll"].iter().any(|io| info
            == Some((
                &*format!("app_info{{version=\"0.1.0\",color=\"green\",io=\"{io}\"}}"),
                1.0
            ))),
        "app_info carries version, color and the plane: {info:?}"
    );
    for code in ["1000", "1001", "1002", "1003", "1007", "1008", "1009"] {
        assert!(
            samples.contains_key(&format!("ws_closes_total{{code=\"{code}\"}}")),
            "ws_closes_total{{code=\"{code}\"}} missing"
        );
    }
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("ws_errors_total{kind=")),
        "ws_errors_total has no kind label"
    );
    // Histogram buckets are cumulative and end in +Inf == _count.
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("ws_message_duration_seconds_bucket{le=\"")?;
            let le = le.strip_suffix("\"}")?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 2 && buckets.last().unwrap().0.is_infinite());
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(
        Some(&buckets.last().unwrap().1),
        samples.get("ws_message_duration_seconds_count")
    );
    server.wait_ready_state("ready", LIMIT);
    assert!(scrape(&server)["app_startup_seconds"] > 0.0);
    assert_eq!(scrape(&server)["redis_up"], 1.0);
}

#[test]
fn metrics_counts_move_with_traffic() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--heartbeat-interval", "100ms")
        .start();
    let before = scrape(&server);
    assert_eq!(before["ws_messages_total"], 0.0);
    assert_eq!(before["ws_connections_total"], 0.0);

    let (mut a, welcome) = server.connect("");
    let id = session_id(&welcome);
    for i in 1..=4 {
        assert_eq!(a.count("a"), i);
    }
    a.send_close(1000);
    assert_eq!(a.until_close().1, Some(1000));
    let (mut b, again) = server.connect(&format!("session_id={id}"));
    assert_eq!(again["resumed"], true);
    for _ in 0..3 {
        b.count("b");
    }
    let (mut c, _) = server.connect("");
    c.send_raw(&Client::frame(0x82, b"bin"));
    assert_eq!(c.until_close().1, Some(1003));
    let (status, _) = http(server.addr, "POST", "/api/broadcast", r#"{"message":"hi"}"#);
    assert_eq!(status, 202);
    // `b` sees the broadcast and a heartbeat, so both were delivered.
    let (mut saw_broadcast, mut saw_heartbeat) = (false, false);
    while !(saw_broadcast && saw_heartbeat) {
        let v = b.recv().json();
        saw_broadcast |= v.get("broadcast").is_some();
        saw_heartbeat |= v.get("ts").is_some();
    }

    let want = [
        ("ws_messages_total", 7.0),
        ("ws_message_duration_seconds_count", 7.0),
        ("ws_connections_total", 3.0),
        ("ws_connections_active", 1.0),
        ("ws_closes_total{code=\"1000\"}", 1.0),
        ("ws_closes_total{code=\"1003\"}", 1.0),
        ("ws_errors_total{kind=\"binary\"}", 1.0),
        ("ws_sessions_resumed_total", 1.0),
        ("ws_broadcasts_delivered_total", 1.0),
    ];
    // A shard counts a heartbeat once its slice of sends is done, so a
    // client may read the frame a moment before the counter moves.
    let last = wait_for("metrics to reflect the traffic", LIMIT, || {
        let m = scrape(&server);
        let heartbeats = m.get("ws_heartbeats_sent_total").is_some_and(|&n| n >= 1.0);
        (heartbeats && want.iter().all(|(k, v)| m.get(*k) == Some(v))).then_some(m)
    });
    assert!(last["ws_heartbeats_sent_total"] >= 1.0);
    assert!(last["redis_commands_total"] > before["redis_commands_total"]);
    assert!(last["ws_message_duration_seconds_sum"] > 0.0);
}

#[test]
fn status_reports_version_color_shards_connections_uptime_and_redis() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--color", "green")
        .start();
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect("").0).collect();
    for c in &mut clients {
        c.count("x");
    }
    publish(&server, serde_json::json!({ "message": "to all three" }));
    for c in &mut clients {
        next_broadcast(c);
    }
    let v = wait_for("/status to count 3 connections", LIMIT, || {
        let r = request(server.addr, "GET", "/status", "");
        assert_eq!(r.status, 200);
        let v = r.json();
        (v["connections"] == 3).then_some(v)
    });
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["color"], "green");
    assert_eq!(v["shards"], 2);
    let per_shard: Vec<u64> = v["connections_per_shard"]
        .as_array()
        .expect("connections_per_shard is an array")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 2);
    assert_eq!(per_shard.iter().sum::<u64>(), 3);
    // Running totals per shard, which the console charts as rates.
    let totals = |key: &str| -> Vec<u64> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array"))
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    };
    assert_eq!(totals("messages_per_shard").iter().sum::<u64>(), 3);
    assert_eq!(totals("broadcasts_per_shard").iter().sum::<u64>(), 3);
    assert_eq!(totals("messages_per_shard").len(), 2);
    assert_eq!(v["redis"], "up");
    let first = v["uptime_s"].as_u64().expect("uptime_s is a number");
    wait_for("uptime to advance", LIMIT, || {
        let v = request(server.addr, "GET", "/status", "").json();
        (v["uptime_s"].as_u64() > Some(first)).then_some(())
    });
}

#[test]
fn get_session_returns_its_count_and_ttl() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    for i in 1..=3 {
        assert_eq!(c.count("m"), i);
    }
    let path = format!("/api/sessions/{id}");
    // Counts reach Redis within the flush interval, so poll.
    let v = wait_for("the API to show count 3", LIMIT, || {
        let r = request(server.addr, "GET", &path, "");
        (r.status == 200 && r.json()["count"] == 3).then(|| r.json())
    });
    assert_eq!(
        v.as_object().unwrap().len(),
        4,
        "exactly session_id, count, rooms, ttl_s: {v}"
    );
    assert_eq!(v["session_id"], id.as_str());
    assert_eq!(v["rooms"], serde_json::json!([]), "joined none: {v}");
    let ttl = v["ttl_s"].as_u64().expect("ttl_s is a number");
    assert!(
        (3590..=3600).contains(&ttl),
        "ttl_s {ttl} should be close to the default 1 h"
    );
    c.send_close(1000);
    c.until_close();
    let r = request(server.addr, "GET", &path, "");
    assert_eq!((r.status, r.json()["count"].clone()), (200, json!(3)));
}

#[test]
fn get_unknown_or_malformed_session_is_404() {
    let redis = Redis::start();
    let server = start(&redis);
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [
        unknown.as_str(),
        "nope",
        "00000000-0000-0000-0000-000000000000",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "../../etc/passwd",
        "",
        "%00",
    ] {
        let r = request(server.addr, "GET", &format!("/api/sessions/{id}"), "");
        assert_eq!(r.status, 404, "id {id:?}: {r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
    }
}

#[test]
fn delete_session_is_204_and_removes_it() {
    let redis = Redis::start();
    let server = start(&redis);
    let (mut c, welcome) = server.connect("");
    let id = session_id(&welcome);
    assert_eq!(c.count("m"), 1);
    c.send_close(1000);
    c.until_close();
    let path = format!("/api/sessions/{id}");
    assert_eq!(request(server.addr, "GET", &path, "").status, 200);

    let r = request(server.addr, "DELETE", &path, "");
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty(), "204 has no body: {:?}", r.body);
    assert_eq!(request(server.addr, "GET", &path, "").status, 404);
    assert_eq!(redis.session_count(&id), None);
    // Deleting is idempotent.
    assert_eq!(request(server.addr, "DELETE", &path, "").status, 204);
}

#[test]
fn broadcast_is_202_and_reaches_every_socket_on_every_shard() {
    let redis = Redis::start();
    let server = start(&redis);
    let mut clients = sockets_on_every_shard(&server, 2);
    let message = "deploy at 5 \"sharp\" \u{2713}\nsecond line";
    let body = json!({ "message": message }).to_string();
    let r = request(server.addr, "POST", "/api/broadcast", &body);
    assert_eq!(r.status, 202, "{r:?}");
    let answer = serde_json::from_str::<Value>(&r.body).unwrap();
    let (offset, epoch) = (answer["offset"].clone(), answer["epoch"].clone());
    assert!(offset.is_string() && epoch.is_string(), "{r:?}");
    for (i, c) in clients.iter_mut().enumerate() {
        let mut f = c.recv().json();
        let position = f.as_object_mut().unwrap().remove("position");
        assert!(position.is_some_and(|p| p.is_string()), "socket {i}");
        assert_eq!(
            f,
            json!({ "broadcast": message, "offset": offset, "epoch": epoch }),
            "socket {i}"
        );
        assert_eq!(
            c.count("after"),
            1,
            "socket {i}: broadcasts are not counted"
        );
    }
    let n = clients.len() as f64;
    wait_for("ws_broadcasts_delivered_total", LIMIT, || {
        (server.metric("ws_broadcasts_delivered_total") == n).then_some(())
    });
}

#[test]
fn broadcast_without_a_message_is_400() {
    let redis = Redis::start();
    let server = start(&redis);
    for body in ["", "not json", r#"{"msg":"x"}"#, r#"{"message":5}"#, "[]"] {
        let r = request(server.addr, "POST", "/api/broadcast", body);
        assert_refusal(&r, &[400], &format!("broadcast body {body:?}"));
    }
}

#[test]
fn unknown_path_is_404() {
    let redis = Redis::start();
    let server = start(&redis);
    for (method, path) in [
        ("POST", "/"),
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/sessions"),
        ("GET", "/healthz/extra"),
        ("GET", "/ws/chat/extra"),
        ("POST", "/api/other"),
    ] {
        let r = request(server.addr, method, path, "");
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(r.json()["error"].is_string());
        assert!(r.closed);
    }
}

#[test]
fn malformed_request_is_400() {
    let redis = Redis::start();
    let server = start(&redis);
    let cases: [(&str, &[u8]); 6] = [
        (
            "a TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        (
            "a header without a colon",
            b"GET / HTTP/1.1\r\nHost test\r\n\r\n",
        ),
        (
            "spaces in the method",
            b"G E T / HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "an unknown HTTP version",
            b"GET / HTTP/7.1\r\nHost: t\r\n\r\n",
        ),
        (
            "a NUL in a header",
            b"GET / HTTP/1.1\r\nHost: t\x00x\r\n\r\n",
        ),
        (
            "a non-numeric Content-Length",
            b"POST /api/broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let r = exchange(server.addr, bytes);
        assert_refusal(&r, &[400], what);
    }
}

#[test]
fn header_block_over_the_limit_is_431() {
    let redis = Redis::start();
    let server = start(&redis);
    // 64 KiB of headers, in few headers so only the size is over a limit.
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: test\r\n".to_vec();
    for i in 0..16 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(4096)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_refusal(&exchange(server.addr, &big), &[431], "64 KiB of headers");
    // The same on the WebSocket endpoint, before any upgrade.
    let ws = String::from_utf8(big)
        .unwrap()
        .replace("GET /healthz", "GET /ws/chat/");
    assert_refusal(
        &exchange(server.addr, ws.as_bytes()),
        &[431],
        "64 KiB of headers on /ws/chat/",
    );
    // A head that never ends is refused once it passes the limit.
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    endless.extend_from_slice(format!("X-Long: {}", "b".repeat(64 << 10)).as_bytes());
    assert_refusal(
        &exchange(server.addr, &endless),
        &[431],
        "one endless header",
    );
}

#[test]
fn plain_get_on_the_ws_endpoint_is_refused_with_a_short_reason() {
    let redis = Redis::start();
    let server = start(&redis);
    for path in ["/ws/chat/", "/ws/chat"] {
        let r = request(server.addr, "GET", path, "");
        assert_refusal(&r, &[400, 426], &format!("plain GET {path}"));
        if r.status == 426 {
            // RFC 9110: a 426 names the protocol to upgrade to.
            assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
        }
    }
}

#[test]
fn upgrade_without_sec_websocket_key_is_400() {
    let redis = Redis::start();
    let server = start(&redis);
    let r = upgrade_with(
        server.addr,
        "GET",
        &format!("{UPGRADE}Sec-WebSocket-Version: 13\r\n"),
    );
    assert_refusal(&r, &[400], "no Sec-WebSocket-Key");
    let r = upgrade_with(
        server.addr,
        "GET",
        &format!("{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"),
    );
    assert_refusal(&r, &[400], "a Sec-WebSocket-Key that is not 16 bytes");
}

#[test]
fn upgrade_with_version_8_is_426() {
    let redis = Redis::start();
    let server = start(&redis);
    for version in ["Sec-WebSocket-Version: 8\r\n", ""] {
        let r = upgrade_with(
            server.addr,
            "GET",
            &format!("{UPGRADE}{version}Sec-WebSocket-Key: {KEY}\r\n"),
        );
        assert_refusal(&r, &[426], &format!("version header {version:?}"));
        // RFC 6455 4.4: the refusal names the version the server speaks.
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "{r:?}");
    }
}

#[test]
fn upgrade_with_a_method_other_than_get_is_400() {
    let redis = Redis::start();
    let server = start(&redis);
    let headers = format!("{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n");
    for method in ["POST", "PUT", "DELETE"] {
        let r = upgrade_with(server.addr, method, &headers);
        assert_refusal(&r, &[400], &format!("{method} upgrade"));
    }
}

#[test]
fn unfinished_handshake_is_dropped_after_handshake_timeout() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(2)
        .arg("--handshake-timeout", "300ms")
        .start();
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial
        .write_all(b"GET /ws/chat/ HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n")
        .unwrap();
    // A socket that finished its handshake is not subject to the deadline.
    let (mut upgraded, _) = server.connect("");
    wait_for("the server to drop both sockets", LIMIT, || {
        (server_closed(&mut silent) && server_closed(&mut partial)).then_some(())
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "dropped after {took:?}, before the 300ms deadline"
    );
    assert_eq!(upgraded.count("still here"), 1);
    wait_for("ws_errors_total{kind=\"handshake_timeout\"}", LIMIT, || {
        (server.metric("ws_errors_total{kind=\"handshake_timeout\"}") >= 2.0).then_some(())
    });
}
