//! The WebSocket endpoint: the upgrade (`handshake`), the framing (`codec`),
//! a socket's upgrade (`socket`), the shard's transport (`plane`: the table
//! of open sockets, its event loop, buffers, write queues and sweeps), the
//! handlers it runs (`counter`, the service; `echo`, the conformance echo),
//! permessage-deflate (`deflate`), the commands a client sends on its socket
//! (`control`), a socket's rooms on the way in and what it recovers there
//! (`rooms`), and a counting socket's end (`goodbye`). Dependencies
//! run one way: socket → counter → plane, socket and counter → rooms, and
//! counter → goodbye.

pub mod codec;
pub mod control;
pub mod counter;
pub mod deflate;
pub mod echo;
pub mod goodbye;
pub mod handshake;
pub mod plane;
pub mod rooms;
pub mod socket;
pub mod uring;
