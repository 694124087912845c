//! The client side of shardcast, one copy for every crate that plays a
//! client: the service's own unit tests, the end-to-end tests, the bench and
//! the fuzz targets.
//!
//! - [`wire`]: RFC 6455 from the client's side: the upgrade request and
//!   answer, masked frames out (any first byte, so tests can send what a
//!   broken client would), server frames in.
//! - [`process`]: free ports, polling for readiness, throwaway directories.
//! - [`redis`]: real `redis-server`s, clusters and Sentinels on free ports.
//! - [`memredis`]: an in-memory Redis for the fast test tier, which needs
//!   no `redis-server`.

pub mod memredis;
pub mod process;
pub mod redis;
pub mod wire;
