//! Helpers for tests and runs that drive real processes: free loopback
//! ports, polling for readiness instead of sleeping, throwaway directories.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls `f` every few ms until it returns Some, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback port for a process that cannot bind port 0 and say which
/// port it got (redis-server, nginx, Prometheus).
///
/// A port the kernel hands out for `bind(0)` is in its ephemeral range, so
/// between this check and the child's bind another test's `bind(0)`, or a
/// client's outgoing connection, may take it. Ports below that range are
/// never handed out by the kernel, so the only other takers are callers of
/// this function: each process takes its own stripe of them (by pid, so
/// test binaries run side by side do not meet) and walks it with a counter
/// (so threads of one test binary do not meet), skipping ports in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const STRIPE: u32 = 200;
    let low = ephemeral_start();
    // Ports 10000 and up, under the ephemeral range, in stripes.
    let stripes = (low.saturating_sub(10_000)) / STRIPE;
    if stripes == 0 {
        return kernel_port();
    }
    let base = 10_000 + (std::process::id() % stripes) * STRIPE;
    for _ in 0..STRIPE {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % STRIPE) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kernel_port()
}

/// A port the kernel just handed out for `bind(0)` and took back.
fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the kernel's ephemeral port range (`ip_local_port_range`) starts,
/// or Linux's default start when it cannot be read.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A fresh directory under the system's temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "shardcast-test-{tag}-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut seen = ports.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ports.len(), "{ports:?}");
        if ephemeral_start() > 10_200 {
            assert!(ports.iter().all(|&p| u32::from(p) < ephemeral_start()));
        }
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).expect("free when handed out");
        }
    }
}
