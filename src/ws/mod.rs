//! The WebSocket endpoint: the upgrade (`handshake`), the framing (`codec`),
//! and one socket's life from welcome to goodbye (`socket`); `echo` is the
//! conformance-test endpoint.

pub mod codec;
pub mod echo;
pub mod handshake;
pub mod socket;
