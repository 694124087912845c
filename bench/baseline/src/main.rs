//! `tt-counter`: the baseline server that `bench/` measures shardcast against.
//!
//! It is what a Rust user would write instead: plain tokio (multi-thread runtime) plus
//! tokio-tungstenite 0.30, one task per connection, with 4 KiB read and write buffers.
//! From the wire contract (`PROTOCOL.md`, section "WebSocket") it implements:
//! the upgrade on `/ws/chat/` or `/ws/chat` (any other path gets 404), the welcome
//! `{"session_id":"<uuid v4>","count":0,"resumed":false}`, one `{"count":N}` per text
//! message, Close 1003 on a binary message, the 64 KiB message limit, and the Close
//! echo (Ping/Pong is answered by tungstenite).
//!
//! Left out on purpose, because the bench compares the hot path, not the features:
//! no Redis (counts live and die with the connection), no resume (`?session_id=` is
//! ignored, every session is new), no drain (SIGTERM/SIGINT exit at once), no
//! heartbeat, no rate limit. Errors (bad UTF-8, oversize, protocol violations) end
//! the connection without a specific close code, as tungstenite reports them. The
//! `{"bye":...}` frame before the Close echo is missing too: see `serve`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage: tt-counter [--listen ADDR] [--threads N]";

fn main() -> ExitCode {
    let (listen, threads) = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tt-counter: {e}; {USAGE}");
            return ExitCode::from(64);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(listen));
    // Connection tasks are not drained: dropping them closes their sockets.
    rt.shutdown_background();
    code
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, usize), String> {
    let mut listen: SocketAddr = "127.0.0.1:8081".parse().expect("default address");
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|_| format!("bad --listen {v:?}"))?;
            }
            "--threads" => {
                let v = value()?;
                threads = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("bad --threads {v:?}")),
                };
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok((listen, threads))
}

async fn run(listen: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tt-counter: bind {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().expect("local_addr");
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, r#"{{"msg":"listening","listen":"{local}"}}"#);
        let _ = out.flush();
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(64 << 10))
        .max_frame_size(Some(64 << 10));

    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, config));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = accept_loop => {}
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}

// The signature is tungstenite's `Callback`; its error type is a full HTTP response.
#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    match req.uri().path() {
        "/ws/chat/" | "/ws/chat" => Ok(resp),
        _ => {
            let mut err = ErrorResponse::new(Some("not found".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    }
}

async fn serve(stream: TcpStream, config: WebSocketConfig) {
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)).await
    else {
        return;
    };
    let welcome = format!(
        r#"{{"session_id":"{}","count":0,"resumed":false}}"#,
        uuid::Uuid::new_v4()
    );
    if ws.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let mut count: u64 = 0;
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { return };
        match msg {
            Message::Text(_) => {
                count += 1;
                let reply = format!(r#"{{"count":{count}}}"#);
                if ws.send(Message::text(reply)).await.is_err() {
                    return;
                }
            }
            Message::Binary(_) => {
                let close = CloseFrame {
                    code: CloseCode::Unsupported,
                    reason: "binary frames are not supported".into(),
                };
                let _ = ws.close(Some(close)).await;
                return;
            }
            Message::Close(_) => {
                // The contract wants `{"bye":true,"total":N}` before the Close echo, but
                // tungstenite queues the echo as soon as it reads the client's Close and
                // from then on refuses every send (`SendAfterClosing`, even `close()`).
                // So the baseline only flushes the queued echo; the bye is missing.
                let _ = ws.flush().await;
                return;
            }
            // Ping is answered by tungstenite; Pong and raw frames need nothing.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
