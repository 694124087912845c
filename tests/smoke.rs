mod common;
use common::*;

#[test]
fn counts_and_goodbye() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(2).start();
    let (mut c, welcome) = server.connect("");
    assert_eq!(welcome["count"], 0);
    assert_eq!(welcome["resumed"], false);
    for i in 1..=5 {
        assert_eq!(c.count("hi"), i);
    }
    c.send_close(1000);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1000));
    assert_eq!(before.last().unwrap().json()["bye"], true);
    assert_eq!(before.last().unwrap().json()["total"], 5);
    let id = welcome["session_id"].as_str().unwrap();
    assert_eq!(redis.session_count(id), Some(5));
}

/// Each way to the kernel serves the counter, and says which it is in
/// `/status`, the metrics and the start's log line. Without `--io` the
/// plane is the one `SHARDCAST_IO` names (the suite's second pass runs on
/// epoll), else io_uring where the kernel allows it.
#[test]
fn each_plane_serves_and_names_itself() {
    let redis = Redis::start();
    for io in ["uring", "epoll"] {
        let server = Server::builder(&redis).arg("--io", io).start();
        let (mut c, _) = server.connect("");
        assert_eq!(c.count("hi"), 1, "{io}");
        assert_eq!(c.count("hi"), 2, "{io}");
        let (_, body) = server.get("/status");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["io"], io);
        let info = format!(
            "app_info{{version=\"{}\",color=\"blue\",io=\"{io}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(server.metric(&info), 1.0, "{info}");
        assert_eq!(server.wait_log("listening")["io"], io);
    }
    let server = Server::builder(&redis).start();
    let (_, body) = server.get("/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    match std::env::var("SHARDCAST_IO") {
        Ok(want) if want != "auto" => assert_eq!(status["io"], want.as_str()),
        _ => assert!(
            status["io"] == "uring" || status["io"] == "epoll",
            "{status}"
        ),
    }
}
