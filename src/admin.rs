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

use serde_json::json;

use crate::http;
use crate::server::Shared;

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
    let (method, path) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            _ => return s.write_all(&http::error(400, "malformed request")),
        }
    };
    let path = path.split('?').next().unwrap_or("");
    let mut answer = match (method.as_str(), path) {
        ("GET" | "HEAD", "/metrics") => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &[],
            shared.metrics.render().as_bytes(),
        ),
        ("GET" | "HEAD", "/healthz") => http::json(200, &json!({ "status": "ok" })),
        ("GET" | "HEAD", "/readyz") => {
            let state = crate::routes::readiness(shared);
            let code = if state == "ready" { 200 } else { 503 };
            http::json(code, &json!({ "status": state }))
        }
        (_, "/metrics" | "/healthz" | "/readyz") => http::response(
            405,
            "application/json",
            &[],
            br#"{"error":"method not allowed"}"#,
        ),
        _ => http::error(404, "not found"),
    };
    if method == "HEAD" {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            answer.truncate(end + 4);
        }
    }
    s.write_all(&answer)
}
