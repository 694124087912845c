//! Who may open a socket from a browser: `--allowed-origins` refuses other
//! origins with 403 (one log line, one metric), lets listed ones and clients
//! without an Origin header through, and no other client notices.
mod common;
use common::*;

use std::process::Command;

/// An upgrade with the given Origin header; returns the answer's status.
fn upgrade_with_origin(server: &Server, origin: Option<&str>) -> (u16, String) {
    let header = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    match Client::try_connect_with(server.addr, "", &header) {
        Ok(_) => (101, String::new()),
        Err(refusal) => refusal,
    }
}

#[test]
fn only_listed_origins_may_open_sockets() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .arg(
            "--allowed-origins",
            "https://app.example,https://admin.example:8443",
        )
        .start();
    let (mut witness, _) = server.connect("");
    assert_eq!(witness.count("before"), 1);

    let (code, head) = upgrade_with_origin(&server, Some("https://evil.example"));
    assert_eq!(code, 403, "{head}");
    let (code, _) = upgrade_with_origin(&server, Some("https://app.example:8443"));
    assert_eq!(code, 403, "the port is part of the origin");
    for ok in [
        Some("https://app.example"),
        Some("HTTPS://APP.EXAMPLE"),
        Some("https://admin.example:8443"),
        None,
    ] {
        let (code, head) = upgrade_with_origin(&server, ok);
        assert_eq!(code, 101, "{ok:?}: {head}");
    }

    assert_eq!(
        server.metric("ws_errors_total{kind=\"forbidden_origin\"}"),
        2.0
    );
    let refusals = server
        .log_lines()
        .iter()
        .filter(|l| l["msg"] == "upgrade refused: origin not allowed: 403")
        .count();
    assert_eq!(refusals, 2, "one log line per refusal");
    assert_eq!(witness.count("after"), 2, "the witness never noticed");
}

#[test]
fn without_the_flag_any_origin_may_connect() {
    let redis = Redis::start();
    let server = Server::builder(&redis).start();
    let (code, _) = upgrade_with_origin(&server, Some("https://anything.example"));
    assert_eq!(code, 101);
}

#[test]
fn an_origin_that_is_not_an_origin_is_a_config_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "--allowed-origins",
            "app.example",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allowed_origins") && err.contains("app.example"),
        "{err}"
    );
}
