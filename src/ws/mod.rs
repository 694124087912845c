//! The WebSocket endpoint: the upgrade (`handshake`), the framing (`codec`),
//! and one socket's life from welcome to goodbye (`socket`).

pub mod codec;
pub mod handshake;
pub mod socket;
