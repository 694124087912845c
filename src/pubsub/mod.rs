//! Broadcasts and session kicks between shards, processes and nodes through
//! Redis pub/sub: each shard holds one subscription connection, which
//! carries the events channel plus one channel per room that the shard's
//! sockets are in.
//!
//! Rooms are channels of their own (`shardcast:room:<name>`), not a field of
//! one shared channel: a shard then receives only the rooms it serves, and in
//! sharded mode a Redis Cluster places each room on its slot's node, which
//! is what spreads the fan-out over the cluster.
//!
//! Map of the folder:
//!
//! - `room`: channel names and the rules for room names;
//! - `verbs`: the plain and sharded command sets, and the publishes they
//!   build;
//! - `subscriber`: a shard's rooms, their members and which connection
//!   each channel rides;
//! - `lane`: the subscription connection(s) that [`run`] holds for the
//!   shard's life.

mod lane;
mod room;
mod subscriber;
mod verbs;

pub use lane::run;
pub use room::{check_room, room_channel, RoomError, EVENTS_CHANNEL, MAX_ROOM_LEN, ROOM_PARAM};
pub use subscriber::{Subscriber, Target};
pub use verbs::{Publish, Verbs};
