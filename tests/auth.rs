//! Upgrades with `--auth-secret`: a valid HS256 token (query or bearer
//! header) opens a socket and names its subject in the logs; a missing,
//! forged, expired or `alg: none` token gets 401 with one log line and a
//! metric, and a witness never notices. Plain HTTP needs no token.
mod common;
use common::jwt as token;
use common::*;

use serde_json::Value;
use std::time::Duration;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An upgrade with a query (with its `?`) and extra header lines; returns
/// the answer's status and, for a refusal, the whole answer.
fn upgrade(server: &Server, query: &str, header: &str) -> (u16, String) {
    match Client::try_connect_with(server.addr, query.trim_start_matches('?'), header) {
        Ok(_) => (101, String::new()),
        Err(refusal) => refusal,
    }
}

#[test]
fn only_valid_tokens_open_sockets() {
    let redis = Redis::start();
    let server = Server::builder(&redis).arg("--auth-secret", SECRET).start();
    let good = token(
        "HS256",
        &format!(r#"{{"sub":"ana","exp":{}}}"#, now() + 600),
        SECRET,
    );
    let (mut witness, welcome) = server.connect(&format!("token={good}"));
    assert_eq!(welcome["resumed"], false);
    assert_eq!(witness.count("hi"), 1);

    let (code, head) = upgrade(&server, "", &format!("Authorization: Bearer {good}\r\n"));
    assert_eq!(code, 101, "{head}");

    let refused = [
        ("no token", String::new(), String::new()),
        (
            "other secret",
            format!(
                "?token={}",
                token("HS256", r#"{"sub":"eve"}"#, "another-secret-0123456")
            ),
            String::new(),
        ),
        (
            "expired",
            format!(
                "?token={}",
                token("HS256", &format!(r#"{{"exp":{}}}"#, now() - 5), SECRET)
            ),
            String::new(),
        ),
        (
            "alg none",
            format!("?token={}", token("none", r#"{"sub":"eve"}"#, SECRET)),
            String::new(),
        ),
        (
            "garbage bearer",
            String::new(),
            "Authorization: Bearer not.a.token\r\n".to_string(),
        ),
    ];
    for (what, query, header) in &refused {
        let (code, head) = upgrade(&server, query, header);
        assert_eq!(code, 401, "{what}: {head}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{what}: {head}");
    }
    assert_eq!(
        server.metric("ws_errors_total{kind=\"unauthorized\"}"),
        refused.len() as f64
    );
    let logs = server.log_lines();
    let lines = logs
        .iter()
        .filter(|l| l["msg"] == "upgrade refused: 401")
        .count();
    assert_eq!(lines, refused.len(), "one log line per refusal");
    assert!(
        logs.iter()
            .any(|l| l["msg"] == "ws open" && l["sub"] == "ana"),
        "the subject is in the open line"
    );
    // Plain HTTP is not behind the token.
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(witness.count("still here"), 2, "the witness never noticed");
}

#[test]
fn a_short_secret_is_a_config_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["--listen", "127.0.0.1:0"])
        .env("SHARDCAST_AUTH_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth_secret"));
}

/// A token for `sub` with `exp` seconds from now and a `rooms` claim (JSON,
/// or None for no claim).
fn token_for(sub: &str, exp_in: i64, rooms: Option<&str>) -> String {
    let exp = now() as i64 + exp_in;
    let claims = match rooms {
        Some(r) => format!(r#"{{"sub":"{sub}","exp":{exp},"rooms":{r}}}"#),
        None => format!(r#"{{"sub":"{sub}","exp":{exp}}}"#),
    };
    token("HS256", &claims, SECRET)
}

#[test]
fn the_rooms_claim_decides_which_rooms_a_socket_joins() {
    let redis = Redis::start();
    let server = Server::builder(&redis).arg("--auth-secret", SECRET).start();
    let lobby = token_for("ana", 600, Some(r#"["lobby"]"#));
    let (mut witness, _) = server.connect(&format!("token={lobby}&room=lobby"));
    assert_eq!(witness.count("in the lobby"), 1);
    // No room at all is always fine: the global channel only.
    let (mut global, _) = server.connect(&format!("token={lobby}"));
    assert_eq!(global.count("x"), 1);
    let any = token_for("ops", 600, Some(r#"["*"]"#));
    assert_eq!(
        upgrade(&server, &format!("?token={any}&room=ops"), "").0,
        101
    );

    let none = token_for("bob", 600, None);
    let empty = token_for("bob", 600, Some("[]"));
    for (what, query) in [
        (
            "a room the claim does not name",
            format!("token={lobby}&room=ops"),
        ),
        (
            "a name that only starts alike",
            format!("token={lobby}&room=lobby2"),
        ),
        ("no rooms claim", format!("token={none}&room=lobby")),
        ("an empty rooms claim", format!("token={empty}&room=lobby")),
    ] {
        let (code, answer) = upgrade(&server, &format!("?{query}"), "");
        assert_eq!(code, 403, "{what}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"], "forbidden", "{what}");
        assert!(
            body["reason"].as_str().unwrap().contains("rooms claim"),
            "{what}"
        );
    }
    assert_eq!(
        server.metric(r#"auth_denied_total{reason="room_not_allowed"}"#),
        4.0
    );
    let lines = server
        .log_lines()
        .iter()
        .filter(|l| l["msg"] == "upgrade refused: room not in the token: 403")
        .count();
    assert_eq!(lines, 4, "one log line per refusal");
    assert_eq!(witness.count("still here"), 2, "the witness never noticed");
}

#[test]
fn a_live_socket_is_closed_when_its_token_expires_and_kept_when_refreshed() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg("--auth-secret", SECRET)
        // The sweep reads every socket for idle checks once per 10 s at
        // this timeout; one with a token's deadline is read every second.
        .arg("--idle-timeout", "240s")
        .start();
    let long = token_for("ana", 600, Some(r#"["lobby"]"#));
    let (mut witness, _) = server.connect(&format!("token={long}"));

    // Expires in 2 s, no refresh: closed with 4001 within a sweep (1 s).
    let exp = now() + 2;
    let short = token("HS256", &format!(r#"{{"sub":"ana","exp":{exp}}}"#), SECRET);
    let (mut doomed, _) = server.connect(&format!("token={short}"));
    assert_eq!(doomed.count("before"), 1);
    let (frames, code) = doomed.until_close();
    let closed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(code, Some(4001));
    let bye = goodbye(&frames);
    assert_eq!(bye["reason"], "token_expired", "{bye}");
    assert_eq!(bye["total"], 1);
    assert!(
        closed_at >= exp as f64 && closed_at < exp as f64 + 2.0,
        "closed at {closed_at}, exp {exp}: within a sweep of it"
    );

    // Refreshed before it expires: the socket lives on past the old exp.
    let exp = now() + 2;
    let short = token(
        "HS256",
        &format!(r#"{{"sub":"cy","exp":{exp},"rooms":["lobby"]}}"#),
        SECRET,
    );
    let (mut kept, _) = server.connect(&format!("token={short}&room=lobby"));
    let newer = token_for("cy", 600, Some(r#"["lobby"]"#));
    kept.send_refresh(&newer);
    let answer = kept.recv_skipping_heartbeats().json();
    assert_eq!(answer["refreshed"], true, "{answer}");
    let new_exp = answer["exp"].as_f64().expect("the new exp") as u64;
    assert!(new_exp >= now() + 590, "{answer}");
    wait_for(
        "the old token's exp and a sweep to pass",
        Duration::from_secs(10),
        || (now() > exp + 1).then_some(()),
    );
    assert_eq!(
        kept.count("after the old exp"),
        1,
        "still open, still counting"
    );
    assert_eq!(witness.count("witness"), 1, "the witness never noticed");

    // A refresh for another subject, or that drops the socket's room, or
    // that does not verify, closes the socket with 4001.
    for (what, bad) in [
        (
            "another subject",
            token_for("mallory", 600, Some(r#"["lobby"]"#)),
        ),
        (
            "without the socket's room",
            token_for("cy", 600, Some(r#"["ops"]"#)),
        ),
        (
            "a forged signature",
            token("HS256", r#"{"sub":"cy"}"#, "not-the-secret-at-all"),
        ),
        ("already expired", token_for("cy", -5, Some(r#"["lobby"]"#))),
    ] {
        let (mut c, _) = server.connect(&format!("token={newer}&room=lobby"));
        c.send_refresh(&bad);
        let (frames, code) = c.until_close();
        assert_eq!(code, Some(4001), "{what}");
        let bye = goodbye(&frames);
        assert_eq!(bye["reason"], "token_refused", "{what}: {bye}");
    }
    assert_eq!(
        server.metric(r#"auth_denied_total{reason="refresh_refused"}"#),
        4.0
    );
    assert_eq!(
        server.metric(r#"auth_denied_total{reason="token_expired"}"#),
        1.0
    );
    assert_eq!(server.metric(r#"ws_closes_total{code="4001"}"#), 5.0);

    // A binary message that is not a control frame is refused as before.
    let (mut c, _) = server.connect(&format!("token={newer}"));
    c.send_raw(&Client::frame(0x82, b"not json"));
    assert_eq!(c.until_close().1, Some(1003));
    assert_eq!(witness.count("witness"), 2, "the witness never noticed");
}
