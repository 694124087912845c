//! The conformance echo (`--conformance-echo`): a handler on the shard's
//! plane that sends every message back as it was sent, text or binary, so
//! an RFC 6455 test suite (Autobahn) checks the transport the service's own
//! sockets run on: its reads, decoder, write queues and close. No session,
//! no count, no Redis. Never enable it in production: it holds whole
//! messages, up to `max_message_bytes`.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::config::Config;
use crate::context::Slot;
use crate::ws::codec::{self, Payload};
use crate::ws::goodbye::Exit;
use crate::ws::plane::{Flow, Handler, Left, Limits, Message, Plane, PlaneError};

/// How long an echo socket's Close may take to write.
const CLOSE_WRITE: Duration = Duration::from_secs(2);

/// The shard's echo sockets.
pub type EchoSockets = Plane<Echo>;

/// The echo's payload sink: keeps each message whole until it is echoed.
#[derive(Debug, Default)]
pub struct Keep {
    message: Vec<u8>,
    /// The last complete message: whether it was binary, and its bytes.
    done: Option<(bool, Vec<u8>)>,
}

impl Keep {
    /// The last complete message, once: whether it was binary, its bytes.
    pub fn take_done(&mut self) -> Option<(bool, Vec<u8>)> {
        self.done.take()
    }
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

/// The echo handler; a socket's state is its slot under `max_connections`.
pub struct Echo;

/// The shard's echo plane, with the service's transport limits.
pub fn plane(cfg: &Config) -> Result<Rc<EchoSockets>, PlaneError> {
    Plane::new(Echo, Limits::of(cfg))
}

impl Handler for Echo {
    type State = Slot;
    type Payload = Keep;

    fn payload(&self) -> Keep {
        Keep::default()
    }

    fn message(&self, plane: &Rc<EchoSockets>, msg: Message<'_, Self>, out: &mut Vec<u8>) -> Flow {
        if let Some((binary, payload)) = msg.payload.take_done() {
            let op = if binary { Data::Binary } else { Data::Text };
            let min = plane.limits().deflate_min;
            codec::encode_for(out, OpCode::Data(op), &payload, msg.deflate, min);
        }
        Flow::Go
    }

    fn ended(&self, left: Left<Slot>) {
        glommio::spawn_local(close(left)).detach();
    }
}

/// The Close the exit calls for (the peer's code echoed, 1000 for an empty
/// one), then the end of the TCP connection: the server closes first.
async fn close(left: Left<Slot>) {
    let Left {
        fd, exit, unsent, ..
    } = left;
    // SAFETY: the descriptor is open and owned; the stream takes it over.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let Some((code, reason)) = exit.close() else {
        return;
    };
    let mut out = if matches!(exit, Exit::SlowReader) {
        Vec::new()
    } else {
        unsent
    };
    codec::encode_close(&mut out, code, reason);
    let _ = glommio::timer::timeout(CLOSE_WRITE, async { Ok(stream.write_all(&out).await) }).await;
    let _ = stream.close().await;
}
