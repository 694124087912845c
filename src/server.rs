//! The process: starts the shards with the service's entry point, carries
//! drain and stop orders to them, and records startup and shutdown times.
//!
//! [`Server::start`] takes a config and returns once every shard serves; the
//! caller decides when to drain. `main` wires that to signals, tests call it
//! directly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shards::{Control, Runtime, RuntimeConfig};

use crate::api::{Call, Mailboxes};
use crate::apikey::ApiKeys;
use crate::config::Config;
use crate::context::Shared;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::redis::stream::Tls;
use crate::tls::ca_roots;

/// How long start waits for the shards' first Redis connection.
const REDIS_START_WAIT: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] shards::RuntimeError),
    #[error("cannot create a shard's API mailbox: {0}")]
    Mailbox(std::io::Error),
    #[error("redis TLS: {0}")]
    RedisCa(#[from] crate::tls::TlsError),
    #[error("redis TLS: {0}")]
    RedisTls(#[from] crate::redis::stream::TlsError),
    #[error("--io: {0}")]
    Io(#[from] crate::ws::plane::PlaneError),
}

/// The TLS client the shards' Redis links share; none when no link uses
/// TLS.
fn redis_tls(cfg: &Config) -> Result<Tls, StartError> {
    if !cfg.redis_wants_tls() {
        return Ok(Tls::default());
    }
    let ca = cfg.redis_tls_ca_file.as_deref().map(ca_roots).transpose()?;
    Ok(Tls::new(ca)?)
}

/// A running server.
pub struct Server {
    runtime: Runtime,
    shared: Arc<Shared>,
    /// The shards' API mailboxes, until the admin listener takes them.
    calls: Option<Mailboxes>,
}

impl Server {
    /// Starts every shard and returns when all of them accept connections.
    pub fn start(mut cfg: Config) -> Result<Server, StartError> {
        let started = Instant::now();
        // Decided once for every shard, so that /status and the metrics
        // name the plane that runs.
        let (io, fallback) = crate::ws::plane::resolve(cfg.io)?;
        if let Some(why) = fallback {
            tracing::warn!(reason = %why, "io_uring unavailable: the socket plane uses epoll");
        }
        cfg.io = io;
        let rt_cfg = RuntimeConfig {
            shards: cfg.shards,
            listen: cfg.listen,
            backlog: cfg.backlog,
            pin: cfg.pin,
            ..RuntimeConfig::default()
        };
        let n = shards::runtime::shard_count(&rt_cfg);
        let metrics = Arc::new(Metrics::new(n, &cfg.color).with_io(io));
        metrics
            .app
            .connections_limit
            .set((cfg.max_connections * n) as u64);
        let redis_tls = redis_tls(&cfg)?;
        let shared = Arc::new(Shared {
            api_keys: ApiKeys::new(&cfg.api_key),
            // Validated with the rest of the settings, so it parses.
            redis_target: cfg
                .redis_target()
                .expect("the redis settings were validated"),
            redis_tls,
            cfg,
            metrics,
            readiness: Arc::new(Readiness::new(n)),
            run_id: format!("{:016x}", rand::random::<u64>()),
            started,
        });
        let mut calls = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) =
                shards::control::channel::<Call>(crate::api::QUEUE).map_err(StartError::Mailbox)?;
            calls.push(tx);
            inboxes.push(Some(rx));
        }
        // Each shard takes its own inbox by id, once, on its own thread.
        let inboxes = Arc::new(Mutex::new(inboxes));
        let entry_shared = shared.clone();
        let runtime = shards::start(&rt_cfg, move |ctx| {
            let inbox = inboxes
                .lock()
                .ok()
                .and_then(|mut all| all.get_mut(ctx.id).and_then(Option::take));
            crate::shard::run(ctx, entry_shared.clone(), inbox)
        })?;
        // Wait for the shards to run their accept loops, so that a test or
        // an operator that sees "listening" can connect at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !shared.readiness.all_serving() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Give Redis a moment, so the first clients can resume at once; the
        // service serves without it after that (readiness says so).
        let deadline = Instant::now() + REDIS_START_WAIT;
        while !shared.readiness.redis_up() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        shared
            .metrics
            .app
            .startup_micros
            .set(started.elapsed().as_micros() as u64);
        tracing::info!(
            listen = %runtime.local_addr(),
            shards = runtime.shards(),
            startup_ms = started.elapsed().as_millis() as u64,
            version = env!("CARGO_PKG_VERSION"),
            io = io.name(),
            "listening"
        );
        Ok(Server {
            runtime,
            shared,
            calls: Some(calls),
        })
    }

    /// The shards' API mailboxes, for the admin listener (once).
    pub fn take_calls(&mut self) -> Mailboxes {
        self.calls.take().unwrap_or_default()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts a drain: readiness turns 503 at once, listeners close, every
    /// socket gets its goodbye and Close 1001.
    pub fn drain(&self, by: Instant) {
        self.shared.metrics.drain_began();
        self.shared.readiness.begin_drain();
        self.runtime.broadcast(Control::Drain { by });
    }

    /// Stops every shard now.
    pub fn stop(&self) {
        self.runtime.broadcast(Control::Stop);
    }

    /// Waits for the shards to exit; past `limit` tells them to stop.
    /// Returns true when they exited within `limit`.
    pub fn wait(&self, limit: Duration) -> bool {
        let clean = self.runtime.wait_exited(limit);
        if !clean {
            self.stop();
            self.runtime.wait_exited(Duration::from_secs(2));
        }
        clean
    }

    /// A receiver that yields a shard id as each shard exits.
    pub fn exited(&self) -> &crossbeam_channel::Receiver<usize> {
        self.runtime.exited()
    }

    /// Joins the shard threads and logs the shutdown summary.
    pub fn finish(self, drain_started: Instant) {
        let elapsed = drain_started.elapsed();
        self.shared
            .metrics
            .app
            .shutdown_micros
            .set(elapsed.as_micros() as u64);
        let m = &self.shared.metrics;
        let total: u64 = m.shards.iter().map(|s| s.connections_total.get()).sum();
        let messages: u64 = m.shards.iter().map(|s| s.messages_total.get()).sum();
        let unflushed: u64 = m
            .shards
            .iter()
            .map(|s| s.redis_unflushed_increments.get())
            .sum();
        for (i, r) in self.runtime.join().into_iter().enumerate() {
            if let Err(e) = r {
                tracing::error!(shard = i, error = %e, "shard ended with an error");
            }
        }
        tracing::info!(
            shutdown_ms = elapsed.as_millis() as u64,
            connections_served = total,
            messages,
            unflushed_increments = unflushed,
            "stopped"
        );
    }
}
