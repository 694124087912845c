//! The WebSocket endpoint: the upgrade (`handshake`), the framing (`codec`),
//! the shard's table of open sockets and its event loop (`plane`), and a
//! socket's upgrade and close (`socket`); `echo` is the conformance-test
//! endpoint.

pub mod codec;
pub mod echo;
pub mod handshake;
pub mod plane;
pub mod socket;
