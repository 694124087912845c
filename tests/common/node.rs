//! Node, npm and Chromium for the tests that drive JavaScript: the console
//! in a browser, and the JavaScript client in Node and in a browser. Each
//! tool missing is a failure that says how to get it, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Kills and reaps a child process when dropped, on success and on panic.
pub struct Reaped(pub Child);

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

/// Node on PATH, and `dir`'s npm packages installed (`npm ci` the first
/// time).
pub fn require_node(dir: &Path) {
    assert!(
        has("node", "--version"),
        "this test needs node on PATH (Debian: apt-get install -y nodejs npm)"
    );
    if !dir.join("node_modules").exists() {
        assert!(
            has("npm", "--version"),
            "this test needs npm to install {}'s packages (Debian: apt-get install -y npm)",
            dir.display()
        );
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .expect("run npm ci")
            .success();
        assert!(ok, "`npm ci` in {} failed", dir.display());
    }
}

/// The Chromium to drive: `$CHROMIUM`, or Debian's.
pub fn chromium() -> PathBuf {
    let chromium = PathBuf::from(
        std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string()),
    );
    assert!(
        chromium.exists(),
        "this test needs a Chromium at {} (Debian: apt-get install -y chromium; \
         or set CHROMIUM=/path/to/chromium)",
        chromium.display()
    );
    chromium
}
