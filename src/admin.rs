//! The admin listener: `/metrics`, `/healthz` and `/readyz` for anyone who
//! reaches it, and the console and the server API (`/status`, `/api/*`) on
//! the terms of [`Access`]. It runs on a thread of its own with a glommio
//! executor and stays up through a drain (the shards close their listeners
//! when it starts), so a scrape can watch a drain to its end.
//!
//! Every connection is a task of its own with one deadline for the whole
//! request (`admin_request_timeout`), and at most `admin_max_connections` are
//! served at once: a client that trickles bytes holds its own task until its
//! deadline and delays nobody else's probe or scrape. API calls are answered
//! by a shard, reached through its mailbox (`api`).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::api::{Call, Mailboxes};
use crate::apikey::{ApiKeys, Denied};
use crate::context::Shared;
use crate::http::{self, HeadError, Request};
use crate::loggate::LogGate;
use crate::metrics::Denial;
use crate::routes;

/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;
/// How long start waits for the admin thread's executor to come up.
const START_WAIT: Duration = Duration::from_secs(10);

/// Who may use the server API on the admin listener, decided once at start.
#[derive(Debug, Clone)]
pub enum Access {
    /// Only requests with one of these keys.
    Keys(ApiKeys),
    /// Anyone who reaches it: the listener is on loopback and no key is set,
    /// so only this machine's own users (the operator) can.
    Open,
    /// Nobody: no key is set and the listener is reachable from elsewhere.
    Off,
}

impl Access {
    pub fn of(addr: SocketAddr, keys: &ApiKeys) -> Access {
        match (keys.is_empty(), addr.ip().is_loopback()) {
            (false, _) => Access::Keys(keys.clone()),
            (true, true) => Access::Open,
            (true, false) => Access::Off,
        }
    }

    /// How the start-up log names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Access::Keys(_) => "key",
            Access::Open => "open",
            Access::Off => "off",
        }
    }

    fn check(&self, req: &Request) -> Result<(), Denied> {
        match self {
            Access::Keys(k) => k.check(req),
            Access::Open => Ok(()),
            Access::Off => Err(Denied::Disabled),
        }
    }
}

/// Why the admin listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind the admin listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the admin thread did not start: {0}")]
    Thread(String),
}

/// The admin listener's state, on its own thread.
struct Admin {
    shared: Arc<Shared>,
    access: Access,
    calls: Mailboxes,
    /// The shard the next API call goes to first.
    next: Cell<usize>,
    open: Cell<usize>,
    deadline: Duration,
    cap: usize,
    refusals: LogGate,
}

/// Binds `addr` and serves it on a thread named `admin`; returns the bound
/// address (for port 0) once the thread serves.
pub fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    calls: Mailboxes,
) -> Result<SocketAddr, AdminError> {
    // Bound here, so a taken port is this call's error, not a dead thread.
    let bind = |source| AdminError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    let local = std_listener.local_addr().map_err(bind)?;
    let fd = std_listener.into_raw_fd();
    let access = Access::of(local, &shared.api_keys);
    let (started_tx, started_rx) = crossbeam_channel::bounded(1);
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("admin")
        // Probes and scrapes are small: a small ring and no registered
        // buffers to speak of.
        .io_memory(64 << 10)
        .ring_depth(256)
        .spawn(move || async move {
            // SAFETY: a listening socket this thread now owns alone.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let cfg = &shared.cfg;
            let admin = Rc::new(Admin {
                deadline: cfg.admin_request_timeout,
                cap: cfg.admin_max_connections,
                shared: shared.clone(),
                access,
                calls,
                next: Cell::new(0),
                open: Cell::new(0),
                refusals: LogGate::default(),
            });
            let _ = started_tx.send(());
            serve(listener, admin).await;
        })
        .map_err(|e| AdminError::Thread(e.to_string()))?;
    started_rx
        .recv_timeout(START_WAIT)
        .map_err(|_| AdminError::Thread("its executor did not come up".into()))?;
    Ok(local)
}

async fn serve(listener: TcpListener, admin: Rc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or similar: do not spin on it.
                tracing::warn!(error = %e, "admin accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if admin.open.get() >= admin.cap {
            if let Some(unlogged) = admin.refusals.pass() {
                tracing::warn!(
                    limit = admin.cap,
                    unlogged,
                    "admin connection limit reached: connection closed"
                );
            }
            continue;
        }
        admin.open.set(admin.open.get() + 1);
        let admin = admin.clone();
        glommio::spawn_local(async move {
            let deadline = admin.deadline;
            let mut stream = stream;
            let served = glommio::timer::timeout(deadline, async {
                Ok(connection(&admin, &mut stream).await)
            })
            .await;
            if let Ok(Err(e)) = served {
                tracing::debug!(error = %e, "admin request failed");
            }
            let _ = stream.close().await;
            admin.open.set(admin.open.get() - 1);
        })
        .detach();
    }
}

/// Reads one request and writes its answer; the connection closes after.
async fn connection(admin: &Admin, stream: &mut TcpStream) -> Result<(), HeadError> {
    let req = match http::read_request(stream, MAX_HEAD).await {
        Ok(r) => r,
        Err(HeadError::TooLarge) => {
            let answer = http::error(431, "request header fields too large");
            return Ok(stream.write_all(&answer).await?);
        }
        Err(HeadError::Malformed(_)) => {
            return Ok(stream
                .write_all(&http::error(400, "malformed request"))
                .await?)
        }
        Err(e) => return Err(e),
    };
    let head = req.method == "HEAD";
    let answer = route(admin, req).await;
    let answer = if head {
        http::head_only(answer)
    } else {
        answer
    };
    Ok(stream.write_all(&answer).await?)
}

async fn route(admin: &Admin, req: Request) -> Vec<u8> {
    if let Some(answer) = routes::probe(&admin.shared, &req.method, &req.path) {
        return answer;
    }
    let page = routes::is_page(&req.method, &req.path);
    if !page && !routes::is_api(&req.path) {
        return http::error(404, "not found");
    }
    // The console's page holds nothing, and a browser cannot send a key
    // with a page load: it is served wherever the API is, and asks for the
    // key itself.
    if page && !matches!(admin.access, Access::Off) {
        return routes::page(&req.path);
    }
    if let Err(why) = admin.access.check(&req) {
        let denial = Denial::from(why);
        admin.shared.metrics.app.admin_denials[denial as usize].inc();
        if let Some(unlogged) = admin.refusals.pass() {
            tracing::info!(path = %req.path, reason = why.as_str(), unlogged, "admin API call refused: {}", why.status());
        }
        return routes::denied(why);
    }
    forward(admin, req).await
}

/// Hands the call to a shard, in turn; a shard whose mailbox is full or
/// gone passes it on to the next.
async fn forward(admin: &Admin, req: Request) -> Vec<u8> {
    let n = admin.calls.len();
    let first = admin.next.get();
    admin.next.set(first.wrapping_add(1));
    for i in 0..n {
        let (reply, answer) = futures_channel::oneshot::channel();
        let call = Call {
            req: req.clone(),
            reply,
        };
        if admin.calls[(first + i) % n].send(call).is_ok() {
            return answer
                .await
                .unwrap_or_else(|_| http::error(503, "shard_unavailable"));
        }
    }
    // Every shard has ended (the drain is over) or is swamped.
    http::error(503, "shards_unavailable")
}
