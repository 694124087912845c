//! Upgrades with `--auth-secret`: a valid HS256 token (query or bearer
//! header) opens a socket and names its subject in the logs; a missing,
//! forged, expired or `alg: none` token gets 401 with one log line and a
//! metric, and a witness never notices. Plain HTTP needs no token.
mod common;
use common::*;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "test-secret-0123456789";

fn token(alg: &str, claims: &str, secret: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let p = URL_SAFE_NO_PAD.encode(claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

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
