//! One accepted TCP connection until it is either answered over plain HTTP
//! or upgraded: reads the request head within `handshake_timeout` and a size
//! cap, then hands it to the route table or the WebSocket endpoint.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::context::Slot;
use crate::http::{self, HeadError, Request};
use crate::metrics::ErrorKind;
use crate::ws::counter::Sockets;
use crate::ws::echo::EchoSockets;

/// Paths of the WebSocket endpoint.
pub fn is_ws_path(path: &str) -> bool {
    path == "/ws/chat/" || path == "/ws/chat"
}

/// Answers a connection over the shard's limit and closes it.
pub async fn refuse_full(mut stream: TcpStream) {
    let body = http::error(503, "connection limit reached");
    let _ = glommio::timer::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&body).await;
        Ok(())
    })
    .await;
}

/// The planes a connection may hand its socket to: the counter's, and the
/// conformance echo's when `--conformance-echo` is on.
pub struct Planes {
    pub counter: Rc<Sockets>,
    pub echo: Option<Rc<EchoSockets>>,
}

/// Reads the request head and answers plain HTTP, or runs the upgrade up to
/// the welcome and hands the socket to a plane. The connection's task,
/// holding its slot under `max_connections`.
pub async fn front(slot: Slot, planes: &Planes, mut stream: TcpStream) {
    let shard = &slot.ctx().clone();
    let cfg = shard.cfg();
    let m = shard.metrics();
    // A socket that stops reading cannot hold a task forever.
    stream.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let read = glommio::timer::timeout(cfg.handshake_timeout, async {
        Ok(http::read_request(&mut stream, cfg.max_header_bytes).await)
    })
    .await;
    let req = match read {
        Err(_) => {
            m.error(ErrorKind::HandshakeTimeout);
            if let Some(unlogged) = shard.log_gate(ErrorKind::HandshakeTimeout) {
                tracing::info!(unlogged, "request head timed out: socket dropped");
            }
            return;
        }
        Ok(Err(HeadError::TooLarge)) => {
            m.error(ErrorKind::HeaderTooLarge);
            tracing::info!("request head over the limit: 431");
            let _ = stream
                .write_all(&http::error(431, "request header fields too large"))
                .await;
            return;
        }
        Ok(Err(HeadError::Malformed(why))) => {
            m.error(ErrorKind::BadRequest);
            tracing::info!(reason = %why, "malformed request: 400");
            let _ = stream
                .write_all(&http::error(400, "malformed request"))
                .await;
            return;
        }
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::Io(_))) => {
            m.error(ErrorKind::Io);
            return;
        }
        Ok(Ok(req)) => req,
    };

    if let (Some(echo), Some(_)) = (&planes.echo, req.header("upgrade")) {
        Box::pin(conformance_echo(slot, echo, stream, req)).await;
        return;
    }
    if is_ws_path(&req.path) {
        // Boxed, as are the answers below: their state is kilobytes and only
        // a finished head needs it, while the task of a head still being
        // read (thousands at once in a slowloris) stays small.
        return Box::pin(crate::ws::socket::open(slot, &planes.counter, stream, req)).await;
    }
    let answer = if req.header("upgrade").is_some() {
        // An upgrade anywhere else is a wrong URL, not a wrong protocol.
        m.error(ErrorKind::NotFound);
        http::error(404, "no websocket endpoint here")
    } else {
        Box::pin(crate::routes::answer(shard, &req)).await
    };
    let answer = if req.method == "HEAD" {
        http::head_only(answer)
    } else {
        answer
    };
    let _ = stream.write_all(&answer).await;
    let _ = stream.close().await;
}

/// `--conformance-echo`: the upgrade checks of the real endpoint, then the
/// socket joins the shard's echo plane, which runs the same transport as
/// the counter's (reads, write queues, close) with the echo as its handler.
async fn conformance_echo(
    slot: Slot,
    echo: &Rc<EchoSockets>,
    mut stream: TcpStream,
    mut req: Request,
) {
    let accept = match crate::ws::handshake::validate(&req) {
        Ok(a) => a,
        Err(r) => {
            let _ = stream.write_all(&http::error(r.status, r.reason)).await;
            return;
        }
    };
    stream.set_nodelay(true).ok();
    let rest = std::mem::take(&mut req.rest);
    let conn = slot.ctx().next_conn_id();
    let Some(fd) = crate::ws::socket::take_fd(stream) else {
        return;
    };
    let agreed = crate::ws::handshake::deflate(&req, slot.ctx().cfg().permessage_deflate);
    let first = crate::ws::handshake::accept_response(&accept, agreed.as_ref());
    let mode = agreed.map_or(Default::default(), |a| a.mode);
    echo.adopt(conn, fd, rest, &first, mode, slot);
}
