//! The WebSocket endpoint: the upgrade (`handshake`), the framing (`codec`),
//! a socket's upgrade (`socket`), the shard's table of open sockets and its
//! event loop (`plane`), the commands a client sends on its socket
//! (`control`), and a socket's end (`goodbye`); `echo` is the
//! conformance-test endpoint. Dependencies run one way: socket → plane →
//! goodbye.

pub mod codec;
pub mod control;
pub mod echo;
pub mod goodbye;
pub mod handshake;
pub mod plane;
pub mod socket;
