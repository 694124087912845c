//! shardcast: a thread-per-core WebSocket counter service.
//!
//! Map of the crate (the per-core runtime itself is the `shards` crate):
//!
//! - [`config`]: the one `Config` struct, from flags, env, TOML and defaults.
//! - [`logging`]: JSON log lines with `shard` and `color`.
//! - [`server`]: the process: start shards, drain, stop.
//! - [`shard`]: one shard's loop: its tasks, accept, timers, drain.
//! - [`conn`]: one TCP connection until it is answered or upgraded.
//! - [`http`]: request heads and plain responses.
//! - [`routes`]: health, readiness, metrics, status, session API, broadcast.
//! - [`ws`]: the WebSocket endpoint: handshake, framing, the shard's socket
//!   plane, a socket's upgrade and close.
//! - [`context`]: a shard's state, handed to everything below its loop.
//! - [`deliver`]: broadcasts and kicks from Redis to a shard's sockets, in
//!   each channel's order, with gaps read back from history.
//! - [`drain`]: a shard's drain: its deadline and the wait for the last
//!   connection, woken rather than polled.
//! - [`protocol`]: the JSON payloads of the wire contract.
//! - [`readiness`]: whether the process should get traffic (`/readyz`).
//! - [`pubsub`]: broadcasts, rooms and kicks through Redis pub/sub.
//! - [`presence`]: who is in each room, across nodes: entries in Redis
//!   renewed in batches by the heartbeat walk, and the changes as frames.
//! - [`history`]: each channel's stream, offsets and epoch, positions, the
//!   recovery of what a reconnecting socket missed, and gaps on live ones.
//! - [`session`]: a session's id and count parts.
//! - [`store`]: a shard's sessions and their way to Redis.
//! - [`table`]: entries found by the key each carries (sockets, sessions).
//! - [`addr`]: where Redis is, plain data shared by the settings and the
//!   client.
//! - [`redis`]: Redis over a shard's own glommio sockets: the command
//!   connection, the wire, and the master that Sentinels name.
//! - [`metrics`]: per-shard cells summed at scrape.
//! - [`admin`]: the admin listener (probes, metrics, and the server API on
//!   loopback or behind its key) that outlives a drain.
//! - [`api`]: the server API's calls from the admin listener to a shard.
//! - [`apikey`]: the server API's keys and how a request presents one.
//! - [`loggate`]: one log line a second for limits that act on input.
//! - [`alloc`]: mimalloc set up for many idle sockets.
//! - [`tls`]: the CA bundle a setting names, for Redis over TLS.
//! - [`auth`]: HS256 tokens for upgrades (`--auth-secret`): subject, rooms
//!   and lifetime.

pub mod addr;
pub mod admin;
pub mod alloc;
pub mod api;
pub mod apikey;
pub mod auth;
pub mod config;
pub mod conn;
pub mod context;
pub mod deliver;
pub mod drain;
pub mod history;
pub mod http;
pub mod loggate;
pub mod logging;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod readiness;
pub mod redis;
pub mod routes;
pub mod server;
pub mod session;
pub mod shard;
pub mod store;
pub mod table;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use server::Server;
