//! The web console (`GET /`, src/console.html) in a real headless Chromium,
//! driven by tests/console/console.test.mjs (playwright-core). Needs node, npm
//! and Debian's `chromium` at /usr/bin/chromium (or `$CHROMIUM`); fails, never
//! skips, when one is missing.
//!
//! The drain step needs a second server on the same port: the script writes
//! `ready-for-b` into a handshake directory once the page is connected to
//! server A (alone on the port until then); this test then starts server B on
//! A's port (SO_REUSEPORT) and writes B's pid into `go`; the script SIGTERMs A
//! and checks that the page reconnects to B with its session and count.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::{chromium, require_node, Reaped};
use common::{http, Redis, Server, TempDir, TEST_API_KEY};

/// Server B, on A's port (SO_REUSEPORT): the drain's destination.
fn start_second_server(redis: &Redis, port: u16) -> Server {
    Server::builder(redis)
        .shards(2)
        .arg("--listen", &format!("127.0.0.1:{port}"))
        .arg("--color", "green")
        .arg("--heartbeat-interval", "1s")
        .arg("--permessage-deflate", "true")
        .start()
}

#[test]
fn console_in_a_real_browser() {
    let console_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    require_node(&console_dir);
    let chromium = chromium();

    let redis = Redis::start();
    let mut a = Server::builder(&redis)
        .shards(2)
        .arg("--color", "blue")
        .arg("--heartbeat-interval", "1s")
        .arg("--shutdown-grace", "5s")
        .arg("--permessage-deflate", "true")
        .start();

    // The page itself, as any client sees it.
    let (code, body) = a.get("/");
    assert_eq!(code, 200, "GET /");
    assert!(body.contains("id=\"count\""), "GET / is not the console");
    let (code, body) = http(a.addr, "HEAD", "/", "");
    assert_eq!((code, body.as_str()), (200, ""), "HEAD /");

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("console-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("console.png");
    let _ = std::fs::remove_file(&shot);
    let hs = TempDir::new("console");

    let mut node = Command::new("node");
    node.arg(console_dir.join("console.test.mjs"))
        .arg(format!("http://{}", a.addr))
        .arg(&shot)
        .arg(a.pid().to_string())
        .arg(&hs.0)
        .env("CHROMIUM", &chromium)
        .env("API_KEY", TEST_API_KEY)
        .current_dir(&console_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut node = Reaped(node.spawn().expect("spawn node"));
    let mut pipes = Vec::new();
    for out in [
        Box::new(node.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(node.0.stderr.take().unwrap()),
    ] {
        pipes.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
            }
        }));
    }

    let limit = Duration::from_secs(90);
    let t0 = Instant::now();
    let mut b: Option<Server> = None;
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        if b.is_none() && hs.0.join("ready-for-b").exists() {
            let server = start_second_server(&redis, a.addr.port());
            let pid = server.pid();
            println!("[console.rs] server B (pid {pid}) listening on {}", a.addr);
            b = Some(server);
            let tmp = hs.0.join("go.tmp");
            std::fs::write(&tmp, pid.to_string()).unwrap();
            std::fs::rename(&tmp, hs.0.join("go")).unwrap();
        }
        assert!(
            t0.elapsed() < limit,
            "the browser script took over {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for p in pipes {
        let _ = p.join();
    }
    assert!(status.success(), "the browser script failed: {status}");
    assert!(b.is_some(), "the script passed without reaching the drain");
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)),
        Some(0),
        "server A's exit code after its drain"
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    println!("[console.rs] screenshot: {}", shot.display());
}
