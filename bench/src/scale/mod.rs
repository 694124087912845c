//! `scale`: a scale-out test of a multi-node cluster. It spreads sockets over
//! every node and every room, then proves in phases that broadcasts reach
//! everyone once, room broadcasts reach members only, sessions follow their
//! sockets from node to node, and a node's death loses no acknowledged count.
//!
//! Map:
//! - [`args`]: the options and their check, into a [`args::ScaleSpec`].
//! - [`run`]: the orchestrator: workers, phases, broadcasts, the kill, the assertions.
//! - [`worker`]: one worker process: the scale run's handler on the load
//!   engine ([`crate::engine`]), each socket's life through every phase, every
//!   answer checked, broadcast texts tallied, the counters.
//! - [`proto`]: the JSON lines between the orchestrator and its workers.
//! - [`report`]: figures, assertions, the summary table and the JSON.
//! - [`layout`]: which node and room a socket belongs to, and where it flees.
//! - [`check`]: the verdict on a count resumed after a node died.
//! - [`tag`], [`node`], [`http`]: broadcast tags, node addresses and the
//!   broadcast POST. Server frames are read by [`crate::reply`], as in every
//!   other run.

pub mod args;
pub mod check;
pub mod http;
pub mod layout;
pub mod node;
pub mod proto;
pub mod report;
pub mod run;
pub mod tag;
pub mod worker;

pub use args::{ScaleArgs, ScaleSpec, UsageError};
pub use report::ScaleReport;
pub use run::{run, ScaleError};
