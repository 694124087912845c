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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, wait_for, Redis, Server, TempDir, TEST_API_KEY};
use serde_json::Value;

/// Kills and reaps a child process when dropped, on success and on panic.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Node, npm (for the first install) and the browser, or a panic that says
/// how to get them.
fn require_tools(console_dir: &Path) -> PathBuf {
    assert!(
        has("node", "--version"),
        "the console test needs node on PATH (Debian: apt-get install -y nodejs npm)"
    );
    let chromium = PathBuf::from(
        std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string()),
    );
    assert!(
        chromium.exists(),
        "the console test needs a Chromium at {} (Debian: apt-get install -y chromium; \
         or set CHROMIUM=/path/to/chromium)",
        chromium.display()
    );
    if !console_dir.join("node_modules/playwright-core").exists() {
        assert!(
            has("npm", "--version"),
            "the console test needs npm to install playwright-core \
             (Debian: apt-get install -y npm), or run `npm ci` in tests/console"
        );
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(console_dir)
            .status()
            .expect("run npm ci")
            .success();
        assert!(ok, "`npm ci` in {} failed", console_dir.display());
    }
    chromium
}

/// Server B, spawned by hand on A's port (the fixture always listens on :0).
fn start_second_server(redis: &Redis, port: u16) -> (Reaped, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &redis.url()])
        .args(["--shards", "2", "--pin", "false", "--log-level", "info"])
        .args(["--color", "green", "--heartbeat-interval", "1s"])
        .args(["--permessage-deflate", "true"])
        .args(["--api-key", TEST_API_KEY, "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shardcast (server B)");
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let child = Reaped(child);
    wait_for("server B's listening line", Duration::from_secs(20), || {
        lines.lock().unwrap().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["msg"] == "listening").then_some(())
        })
    });
    (child, pid)
}

#[test]
fn console_in_a_real_browser() {
    let console_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let chromium = require_tools(&console_dir);

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
    let mut b: Option<Reaped> = None;
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        if b.is_none() && hs.0.join("ready-for-b").exists() {
            let (child, pid) = start_second_server(&redis, a.addr.port());
            println!("[console.rs] server B (pid {pid}) listening on {}", a.addr);
            b = Some(child);
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
