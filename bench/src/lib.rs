//! `shardcast-bench`: a load generator for the shardcast wire contract that
//! measures the server, never itself, and checks every answer as it goes.
//!
//! Map:
//! - [`cli`]: subcommands and options, turned into a [`run::RunSpec`].
//! - [`run`]: the coordinator: worker processes, progress, /proc samples, the report.
//! - [`engine`]: the load engine: one process's sockets on one epoll loop, the
//!   transport; what the sockets do is a handler's.
//! - [`worker`]: the single-node runs' handler, every answer checked.
//! - [`plan`]: what a worker is told to do, and how a run is split over workers.
//! - [`pool`]: the worker processes of a run (single-node or scale) and their lines.
//! - [`wire`]: client-side WebSocket framing and the upgrade (the `shardcast-kit` crate's,
//!   shared with the tests and the fuzz targets).
//! - [`reply`]: what the server's text frames mean.
//! - [`stats`]: counters, fault kinds and histograms that merge across workers.
//! - [`report`]: the summary table, JSON and the HTML page.
//! - [`chart`]: the report's charts, as SVG for the page and as one PNG.
//! - [`suite`]: the standard suite behind `make bench`: its runs, on HEAD's tree.
//! - [`provenance`]: the commit, tree state, date, CPU and kernel of a suite run.
//! - [`goals`]: the suite's figures and the goals set for them, verbatim, with their checks.
//! - [`results`]: a suite run as data, `bench/results/latest.json`.
//! - [`figures`]: a run's text: its `bench/RESULTS.md` section and the generated blocks of
//!   README.md and docs/BENCHMARKS.md (`make figures`).
//! - [`scale`]: the multi-node scale-out test: its phases, on the same engine.
//! - [`epoll`], [`sys`]: the thin layer over the kernel.

pub mod chart;
pub mod cli;
pub mod deflate;
pub mod engine;
pub mod epoll;
pub mod fanout;
pub mod figures;
pub mod goals;
pub mod held;
pub mod plan;
pub mod pool;
pub mod provenance;
pub mod reply;
pub mod report;
pub mod results;
pub mod run;
pub mod scale;
pub mod stats;
pub mod suite;
pub mod sys;
pub use shardcast_kit::wire;
pub mod worker;
