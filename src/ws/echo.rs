//! The conformance echo endpoint (`--conformance-echo`): every message comes
//! back as it was sent, text or binary, so an RFC 6455 test suite (Autobahn)
//! can check the framing code the service uses. No session, no count, no
//! Redis; the service's own sockets never run this. Never enable it in
//! production: it holds whole messages, up to `max_message_bytes`.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::codec::{self, Decoder, Event, Payload};

const READ: usize = 64 << 10;

/// The echo's payload sink: keeps each message whole until it is echoed.
#[derive(Debug, Default)]
struct Keep {
    message: Vec<u8>,
    /// The last complete message: whether it was binary, and its bytes.
    done: Option<(bool, Vec<u8>)>,
}

impl Payload for Keep {
    const BINARY: bool = true;

    fn piece(&mut self, data: &[u8], _: bool) {
        self.message.extend_from_slice(data);
    }

    fn complete(&mut self, binary: bool) {
        self.done = Some((binary, std::mem::take(&mut self.message)));
    }
}

/// Serves an upgraded socket until it closes. `rest` holds bytes that came
/// after the request head.
pub async fn serve(mut stream: TcpStream, rest: Vec<u8>, max_message: usize) {
    let mut decoder = Decoder::with(max_message, Keep::default());
    let mut buf = rest;
    buf.reserve(READ);
    let mut start = 0;
    let mut out = Vec::new();
    loop {
        // Handle everything buffered, then read more.
        loop {
            match decoder.decode(&mut buf[start..]) {
                Ok((None, 0)) => break,
                Ok((None, n)) => start += n,
                Ok((Some(ev), n)) => {
                    let at = start;
                    start += n;
                    match ev {
                        Event::Text | Event::Binary => {
                            if let Some((binary, payload)) = decoder.payload_mut().done.take() {
                                let op = if binary { Data::Binary } else { Data::Text };
                                codec::encode(&mut out, OpCode::Data(op), &payload);
                            }
                        }
                        Event::Ping(r) => {
                            let payload = buf[at + r.start..at + r.end].to_vec();
                            codec::encode_pong(&mut out, &payload);
                        }
                        Event::Pong => {}
                        Event::Close(code) => {
                            // Echo the code (1000 for an empty Close), then
                            // end the TCP connection: the server closes first.
                            codec::encode_close(&mut out, code.unwrap_or(1000), "");
                            let _ = stream.write_all(&out).await;
                            let _ = stream.close().await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    codec::encode_close(&mut out, e.code(), e.reason());
                    let _ = stream.write_all(&out).await;
                    let _ = stream.close().await;
                    return;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        buf.drain(..start);
        start = 0;
        let len = buf.len();
        buf.resize(len + READ, 0);
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.truncate(len + n),
        }
    }
}
