//! The `shardcast` binary: flags → config → logs → start → wait for a
//! signal → drain → exit code. Everything else lives in the library.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::error::ErrorKind;
use shardcast::config::{Config, ConfigError, EXIT_CONFIG};
use shardcast::Server;
use signal_hook::consts::{SIGINT, SIGTERM};

#[global_allocator]
static GLOBAL: shardcast::alloc::Malloc = shardcast::alloc::Malloc;

fn main() -> ExitCode {
    shardcast::alloc::tune();
    let cfg = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        // Asked for, not refused: the text is the answer, on stdout.
        Err(ConfigError::Cli(e))
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let line = e.to_string();
            let first = line
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid configuration");
            eprintln!("shardcast: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    shardcast::logging::init(cfg.log_format, &cfg.log_level, &cfg.color);
    shardcast::logging::install_panic_hook();
    match run(cfg) {
        Ok(_) if shardcast::logging::panicked() => ExitCode::FAILURE,
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let grace = cfg.shutdown_grace;
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(8);
    // A registered handler replaces the default action, so the watcher must
    // keep a way out: a second SIGINT exits at once.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if sig_tx.send(s).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;

    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let admin = cfg.admin_listen.0;
    let mut server = Server::start(cfg).context("starting shards")?;
    let calls = server.take_calls();
    if let Some(addr) = admin {
        let bound = shardcast::admin::start(addr, server.shared().clone(), calls)?;
        let access = shardcast::admin::Access::of(bound, &server.shared().api_keys);
        tracing::info!(admin = %bound, api = access.as_str(), "admin listening");
    }

    let first = crossbeam_channel::select! {
        recv(sig_rx) -> s => s.ok(),
        recv(server.exited()) -> _ => None,
    };
    let Some(sig) = first else {
        // A shard that panicked logged why (logging::install_panic_hook).
        tracing::error!("a shard exited on its own; stopping");
        server.stop();
        server.wait(Duration::from_secs(2));
        server.finish(Instant::now());
        return Ok(ExitCode::FAILURE);
    };
    let t = Instant::now();
    tracing::info!(
        signal = sig,
        grace_ms = grace.as_millis() as u64,
        "drain started"
    );
    let deadline = t + grace;
    server.drain(deadline);
    // Wait for every shard to exit; a second SIGINT cuts it short.
    let mut left = server.shared().metrics.shards.len();
    while left > 0 {
        crossbeam_channel::select! {
            recv(server.exited()) -> r => { if r.is_ok() { left -= 1 } else { break } },
            recv(sig_rx) -> s => {
                if s == Ok(SIGINT) {
                    tracing::warn!("second SIGINT: exiting now");
                    std::process::exit(130);
                }
            },
            default(deadline.saturating_duration_since(Instant::now())) => {
                tracing::warn!("grace period over; stopping shards");
                server.stop();
                server.wait(Duration::from_secs(1));
                break;
            }
        }
    }
    server.finish(t);
    Ok(ExitCode::SUCCESS)
}
