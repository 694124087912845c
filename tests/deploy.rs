//! Blue/green deploys through a real nginx and a real Redis: 300 clients
//! keep sending while `promote` runs to green and back to blue, and not one
//! handshake fails, not one close is unexpected, and every count continues
//! exactly; meanwhile broadcasts stream in, and clients that come back with
//! `since` end with every one, in order, once. A new color that never gets ready is refused while the old one
//! keeps serving every client untouched.
mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// shardcast-bench, built beside this crate's binary by `cargo test --workspace --features shardcast/full-tier`.
fn bench_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast")).with_file_name("shardcast-bench");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `make test` (cargo test --workspace --features shardcast/full-tier)",
        bin.display()
    );
    bin
}

/// One deployment: its own ports, run directory and Redis, torn down on drop.
struct Deploy {
    dir: PathBuf,
    /// Removed after `dev-down` has stopped everything that wrote into it.
    _tmp: TempDir,
    env: Vec<(String, String)>,
    nginx: u16,
    blue: u16,
    green: u16,
    redis: Redis,
}

impl Deploy {
    fn new() -> Deploy {
        let redis = Redis::start();
        let tmp = TempDir::new("deploy");
        let dir = tmp.0.clone();
        let (nginx, blue, green) = (free_port(), free_port(), free_port());
        let env = vec![
            ("DEPLOY_DIR".into(), dir.display().to_string()),
            ("NGINX_PORT".into(), nginx.to_string()),
            ("BLUE_PORT".into(), blue.to_string()),
            ("GREEN_PORT".into(), green.to_string()),
            ("BLUE_ADMIN_PORT".into(), free_port().to_string()),
            ("GREEN_ADMIN_PORT".into(), free_port().to_string()),
            ("REDIS_URL".into(), redis.url()),
            (
                "SHARDCAST_BIN".into(),
                env!("CARGO_BIN_EXE_shardcast").into(),
            ),
            ("BENCH_BIN".into(), bench_bin().display().to_string()),
            ("SHARDS".into(), "2".into()),
            ("GRACE".into(), "5s".into()),
            ("NGINX_WORKERS".into(), "2".into()),
            ("READY_TIMEOUT".into(), "20s".into()),
            // Room for every broadcast of a run, so the streams are the
            // record of what was published.
            ("SHARDCAST_ARGS".into(), "--history-size 20000".into()),
            ("SHARDCAST_API_KEY".into(), TEST_API_KEY.into()),
        ];
        Deploy {
            dir,
            _tmp: tmp,
            env,
            nginx,
            blue,
            green,
            redis,
        }
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(root().join("scripts/deploy"));
        cmd.args(args).current_dir(root());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("scripts/deploy");
        eprintln!(
            "--- deploy {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) {
        assert!(
            self.run(args, &[]).status.success(),
            "deploy {args:?} failed"
        );
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.nginx).parse().unwrap()
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws/chat/", self.nginx)
    }

    fn status(&self, port: u16) -> Option<Value> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::net::TcpStream::connect(addr).ok()?;
        serde_json::from_str(&http(addr, "GET", "/status", "").1).ok()
    }

    fn connections(&self, port: u16) -> u64 {
        self.status(port)
            .and_then(|s| s["connections"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        let _ = self.run(&["dev-down"], &[]);
    }
}

/// A load through nginx: `rate` mode, reconnecting after drains; the JSON
/// report is written to `json`.
fn start_load(d: &Deploy, sockets: u32, rate: u32, secs: u32, json: &Path) -> Child {
    Command::new(bench_bin())
        .args(["rate", &d.url(), "-n", &sockets.to_string()])
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs}s"),
        ])
        .args(["--reconnect", "--quiet", "--timeout", "10s", "--json"])
        .arg(json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shardcast-bench")
}

fn finish_load(child: Child, json: &Path) -> Value {
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "--- load: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(json).expect("bench report"))
        .expect("bench report JSON");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the load saw faults: {}",
        report["faults"]
    );
    report
}

#[test]
fn promote_there_and_back_under_load_loses_nothing() {
    let d = Deploy::new();
    d.ok(&["dev-up"]);
    let json = d.dir.join("load.json");
    let load = start_load(&d, 300, 900, 24, &json);
    wait_for("300 sockets on blue", Duration::from_secs(20), || {
        (d.connections(d.blue) >= 300).then_some(())
    });
    // Followers ride both drains through nginx and come back with a position,
    // half of them in a room, while a broadcaster posts every 20 ms.
    let followers: Vec<_> = (0..10)
        .map(|i| {
            let room = (i % 2 == 0).then(|| "deploy".to_string());
            (room.is_some(), follow(vec![d.addr()], room, None))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // The proxy keeps the server API from the outside; callers reach a
    // color's own port, with the key.
    let (code, body) = http(d.addr(), "POST", "/api/broadcast", r#"{"message":"x"}"#);
    assert_eq!((code, body.as_str()), (404, r#"{"error":"not found"}"#));
    let colors: Vec<SocketAddr> = [d.blue, d.green]
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let broadcaster = {
        let (colors, stop) = (colors.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let room = (i % 3 == 2).then_some("deploy");
                let body = serde_json::json!({ "message": format!("b{i}"), "room": room });
                // To whichever color answers; a refusal mid-switch is
                // retried by the next round, and the streams say what was
                // published.
                let _ = colors.iter().find(|addr| {
                    try_http(**addr, "POST", "/api/broadcast", &body.to_string())
                        .is_ok_and(|(code, _)| code == 202)
                });
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    d.ok(&["promote"]);
    eprintln!("promote to green took {:?}", t.elapsed());
    wait_for(
        "300 sockets back, on green",
        Duration::from_secs(20),
        || (d.connections(d.green) >= 300).then_some(()),
    );
    assert_eq!(d.status(d.blue), None, "blue is gone after its drain");
    let t = Instant::now();
    d.ok(&["promote"]);
    eprintln!("promote to blue took {:?}", t.elapsed());
    wait_for("300 sockets back, on blue", Duration::from_secs(20), || {
        (d.connections(d.blue) >= 300).then_some(())
    });
    assert_eq!(d.status(d.green), None, "green is gone after its drain");
    stop.store(true, Ordering::SeqCst);
    broadcaster.join().unwrap();
    // An end on each channel: a follower stops once it has both.
    for body in [
        r#"{"message":"end"}"#,
        r#"{"message":"end","room":"deploy"}"#,
    ] {
        wait_for("the end broadcasts", Duration::from_secs(10), || {
            (http(colors[0], "POST", "/api/broadcast", body).0 == 202).then_some(())
        });
    }
    let followed: Vec<_> = followers
        .into_iter()
        .map(|(in_room, f)| (in_room, f.join().unwrap()))
        .collect();
    let mut published: Vec<_> = d
        .redis
        .stream_offsets("{shardcast:events}:h")
        .into_iter()
        .map(|o| (o, false))
        .collect();
    published.extend(
        d.redis
            .stream_offsets("{shardcast:room:deploy}:h")
            .into_iter()
            .map(|o| (o, true)),
    );
    assert!(published.len() > 100, "{} broadcasts", published.len());
    let checked = check_followed(&published, &followed);
    let reconnects: usize = followed.iter().map(|(_, f)| f.reconnects).sum();
    assert!(
        reconnects >= 20,
        "every follower came back twice: {reconnects}"
    );
    eprintln!(
        "broadcasts: {} published, {checked} deliveries checked over {reconnects} reconnects",
        published.len()
    );
    let r = finish_load(load, &json);
    assert_eq!(r["fault_total"], 0, "{}", r["faults"]);
    assert_eq!(r["connected"], 300);
    let c = &r["counters"];
    // Every socket was drained twice, each time with the goodbye and 1001,
    // and came back with its count exactly where it was.
    assert!(c["goodbyes"].as_u64().unwrap() >= 600, "{c}");
    assert_eq!(c["resumed"], c["goodbyes"], "{c}");
    assert!(c["replies"].as_u64().unwrap() > 5_000, "{c}");
    eprintln!(
        "reconnect after 1001: {} ; within 1 s: {}",
        r["reconnect_ms"], r["reconnected_within_1s"]
    );
    // Both old colors said they stopped after a clean drain.
    for color in ["blue", "green"] {
        let log = std::fs::read_to_string(d.dir.join(format!("{color}.log"))).unwrap();
        assert!(
            log.contains("\"msg\":\"stopped\""),
            "{color} never stopped cleanly"
        );
    }
}

#[test]
fn a_color_that_never_gets_ready_is_refused_and_the_old_one_serves_on() {
    let d = Deploy::new();
    d.ok(&["dev-up"]);
    let json = d.dir.join("load.json");
    let load = start_load(&d, 50, 150, 12, &json);
    wait_for("50 sockets on blue", Duration::from_secs(20), || {
        (d.connections(d.blue) >= 50).then_some(())
    });
    // Green cannot reach Redis, so it never says ready.
    let out = d.run(
        &["promote"],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("READY_TIMEOUT", "4s"),
        ],
    );
    assert!(
        !out.status.success(),
        "a promote to a color that is not ready must fail"
    );
    assert_eq!(d.status(d.green), None, "the failed color is stopped");
    let active = std::fs::read_to_string(d.dir.join("active")).unwrap();
    assert_eq!(active.trim(), "blue");
    let r = finish_load(load, &json);
    assert_eq!(r["fault_total"], 0, "{}", r["faults"]);
    assert_eq!(r["counters"]["goodbyes"], 0, "no client was touched");
    assert_eq!(d.status(d.blue).unwrap()["color"], "blue");
}
