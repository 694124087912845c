//! The per-core runtime: one pinned glommio executor per CPU, each with its own
//! SO_REUSEPORT listener on one shared address, and a control path from the
//! control thread to every shard.
//!
//! It knows nothing about the protocol it serves: the caller hands it a shard
//! entry point, and each shard gets a [`ShardContext`] with its listener and
//! its control receiver.
//!
//! - [`listener`]: binding N listening sockets that share one port.
//! - [`control`]: messages from any thread to a shard (drain, stop, and the
//!   service's own kinds).
//! - [`runtime`]: starting, pinning, naming and joining the executors.

pub mod control;
pub mod listener;
pub mod runtime;

pub use control::{Control, ControlReceiver, ControlSender, PendingReceiver};
pub use runtime::{start, Runtime, RuntimeConfig, RuntimeError, ShardContext};
