//! The admin listener: `/metrics`, `/healthz` and `/readyz` on an address of
//! their own, served by one plain thread. The shards close their listeners
//! when a drain starts; this one stays up until the process exits, so a
//! scrape can watch a drain to its end (`app_drain_seconds`).
//!
//! One request at a time: scrapes and probes are rare and small, and each
//! socket gets at most `IO_TIMEOUT` to send its head and take its answer, so
//! a stuck client delays the next one by that much and no more.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Shared;
use crate::http;

const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Binds `addr` and serves it on a thread named `admin`; returns the bound
/// address (for port 0).
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(s, &shared) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    // Out of descriptors or similar: do not spin on it.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(local)
}

fn serve(mut s: TcpStream, shared: &Shared) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let req = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        match http::parse_head(&head) {
            Ok(Some(req)) => break req,
            Ok(None) if head.len() < MAX_HEAD => continue,
            _ => return s.write_all(&http::error(400, "malformed request")),
        }
    };
    let answer = crate::routes::probe(shared, &req.method, &req.path)
        .unwrap_or_else(|| http::error(404, "not found"));
    s.write_all(&if req.method == "HEAD" {
        http::head_only(answer)
    } else {
        answer
    })
}
