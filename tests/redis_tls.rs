//! Redis over TLS and as an ACL user, as managed Redis services require: a
//! real `redis-server` with a certificate from a CA made for the test and
//! the `default` user off, and a real `shardcast` that must count through it,
//! or say in one line why it cannot.

mod common;

use std::time::Duration;

use common::*;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

/// `redis[s]://user:password@127.0.0.1:port`.
fn url_as(redis: &Redis, user: &str, password: &str) -> String {
    redis
        .url()
        .replacen("://", &format!("://{user}:{password}@"), 1)
}

/// Counts once on `server` and checks that Redis holds the count.
fn counts_reach(server: &Server, redis: &Redis) {
    let (mut c, welcome) = server.connect("");
    assert_eq!(c.count("hello"), 1);
    assert_eq!(c.count("hello"), 2);
    let id = session_id(&welcome);
    wait_for("the count in redis", Duration::from_secs(10), || {
        (redis.session_count(&id) == Some(2)).then_some(())
    });
}

/// The one `redis unreachable` line of a one-shard server, and that no
/// line anywhere shows `secret`.
fn the_reason(server: &Server, secret: &str) -> String {
    let line = server.wait_log("redis unreachable; retrying with backoff");
    // Other tasks (the subscription) fail the same way, quietly.
    wait_for("a retry", Duration::from_secs(10), || {
        (server.metric("redis_errors_total") >= 2.0).then_some(())
    });
    let lines = server.log_lines();
    let said = lines
        .iter()
        .filter(|l| l["msg"] == "redis unreachable; retrying with backoff")
        .count();
    assert_eq!(said, 1, "one line, not one per retry");
    for l in server.logs.lock().unwrap().iter() {
        assert!(!l.contains(secret), "a log line shows the password: {l}");
    }
    let (status, _) = server.get("/readyz");
    assert_eq!(status, 503, "ready without redis");
    line["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_tls_redis_with_an_acl_user_counts() {
    let ca = TestCa::new();
    let redis = Redis::start_tls_acl(&ca, USER, PASSWORD);
    // The server refuses anyone else: no plain port, no default user.
    assert!(!redis.url().starts_with("redis://"));
    let server = Server::builder_url(&url_as(&redis, USER, PASSWORD), true)
        .shards(2)
        .arg("--redis-tls-ca-file", ca.files().ca.to_str().unwrap())
        .start();
    counts_reach(&server, &redis);
    // The subscription link is up too: every shard's, over TLS.
    wait_for("pub/sub up", Duration::from_secs(10), || {
        (server.metric("pubsub_up") == 1.0).then_some(())
    });
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let as_app = clients
        .lines()
        .filter(|l| l.contains(&format!(" user={USER} ")))
        .count();
    assert!(as_app >= 4, "two links per shard as {USER}: {clients}");
}

#[test]
fn a_wrong_password_is_one_clear_line_without_the_password() {
    let ca = TestCa::new();
    let redis = Redis::start_tls_acl(&ca, USER, PASSWORD);
    let server = Server::builder_url(&url_as(&redis, USER, "not-the-pw"), false)
        .shards(1)
        .arg("--redis-tls-ca-file", ca.files().ca.to_str().unwrap())
        .start();
    let error = the_reason(&server, "not-the-pw");
    assert!(
        error.contains("login failed") && error.contains(&format!("user {USER}")),
        "unclear error: {error}"
    );
    assert!(error.contains("WRONGPASS"), "{error}");
}

#[test]
fn without_its_ca_the_self_signed_certificate_is_refused() {
    let ca = TestCa::new();
    let redis = Redis::start_tls_acl(&ca, USER, PASSWORD);
    // No CA file: the built-in public roots, which never signed it.
    let server = Server::builder_url(&url_as(&redis, USER, PASSWORD), false)
        .shards(1)
        .start();
    let error = the_reason(&server, PASSWORD);
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "unclear error: {error}"
    );
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
}

#[test]
fn a_plain_redis_with_an_acl_user_counts() {
    let redis = Redis::start_acl(USER, PASSWORD);
    // The user in the URL...
    let server = Server::builder_url(&url_as(&redis, USER, PASSWORD), true).start();
    counts_reach(&server, &redis);
    drop(server);
    // ...or in its own settings, beside a URL with none.
    let server = Server::builder(&redis)
        .arg("--redis-username", USER)
        .arg("--redis-password", PASSWORD)
        .start();
    counts_reach(&server, &redis);
    drop(server);
    // A password alone is the `default` user's, which is off.
    let server = Server::builder_url(
        &format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port),
        false,
    )
    .shards(1)
    .start();
    let error = the_reason(&server, PASSWORD);
    assert!(error.contains("user default"), "unclear error: {error}");
}

/// Sentinel as a managed service runs it: the Sentinel and the master it
/// names both TLS only, each letting in only its own ACL user; the master's
/// certificate is for the IP the Sentinel names it by.
#[test]
fn a_tls_sentinel_names_a_tls_master() {
    let ca = TestCa::new();
    let master = Redis::start_tls_acl(&ca, USER, PASSWORD);
    let sentinel = Sentinel::start_as(&master, "main", 1, Some("watcher"), Some("watch-pw"));
    let server = Server::builder_sentinels(&[sentinel.addr()], "main", true)
        .shards(2)
        .arg("--redis-tls", "true")
        .arg("--redis-sentinel-tls", "true")
        .arg("--redis-tls-ca-file", ca.files().ca.to_str().unwrap())
        .arg("--redis-username", USER)
        .arg("--redis-password", PASSWORD)
        .arg("--redis-sentinel-username", "watcher")
        .arg("--redis-sentinel-password", "watch-pw")
        .start();
    counts_reach(&server, &master);
    let clients = sentinel.cli(&["CLIENT", "LIST"]);
    assert!(
        client_list_has(&clients, "watcher", "subscribe"),
        "no subscription as watcher: {clients}"
    );
}
