//! The `shardcast-bench` binary: parse, run, print, exit 0 only when every
//! answer was right. Everything else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use shardcast_bench::cli::{Cli, Cmd, Common};
use shardcast_bench::plan::{Load, OnGo, Plan};
use shardcast_bench::run::{self, Mode, RunSpec};
use shardcast_bench::{figures, pool, scale, suite, sys, worker};

/// Exit codes: 0 clean run, 1 faults seen, 2 the run could not take place, 64 usage.
const EXIT_FAULTS: u8 = 1;
const EXIT_SETUP: u8 = 2;
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    sys::raise_fd_limit();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardcast-bench: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (common, spec) = match cmd {
        Cmd::Worker { plan } => {
            let plan: Plan = serde_json::from_str(&plan).context("worker plan")?;
            sys::tight_timer_slack();
            let result = worker::Worker::new(plan)?.run()?;
            pool::emit(&worker::Line::Done(Box::new(result)));
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Millis { duration } => {
            println!("{}", duration.as_millis());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Scrape { shards, rounds } => {
            scrape(shards, rounds.max(1));
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Suite(args) => return Ok(suite::main(args)?),
        Cmd::Figures(args) => return Ok(figures::main(&args)?),
        Cmd::Scale(args) => return scale_run(&args),
        Cmd::Deflate(args) => {
            shardcast_bench::deflate::main(&args).context("deflate")?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Fanout(args) => {
            shardcast_bench::fanout::main(&args).context("fanout")?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::ScaleWorker { plan } => {
            scale::worker::main(&plan).context("scale worker")?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Mix {
            common,
            connect_rate,
            duration,
            chatters,
            churn,
            no_reconnect,
        } => {
            let load = Load::Mix {
                chatter_share: chatters,
                churn,
            };
            let spec = common.spec(Mode::Mix, load, |s| {
                (s.plan.connect_rate, s.plan.reconnect) = (connect_rate, !no_reconnect);
                s.duration = duration;
            });
            (common, spec)
        }
        Cmd::Throughput {
            common,
            window,
            duration,
            warmup,
        } => {
            let spec = common.spec(Mode::Throughput, Load::Closed { window }, |s| {
                (s.duration, s.warmup) = (duration, warmup);
            });
            (common, spec)
        }
        Cmd::Rate {
            common,
            rate,
            duration,
            reconnect,
        } => {
            let spec = common.spec(Mode::Rate, Load::Open { rate }, |s| {
                (s.plan.reconnect, s.duration) = (reconnect, duration);
            });
            (common, spec)
        }
        Cmd::Idle { common, hold } => {
            let spec = common.spec(Mode::Idle, Load::Idle, |s| s.duration = hold);
            (common, spec)
        }
        Cmd::Storm {
            common,
            prime,
            settle,
        } => {
            let spec = common.spec(Mode::Storm, Load::Idle, |s| {
                (s.plan.prime, s.plan.on_go, s.settle) = (prime, OnGo::DropAndResume, settle);
            });
            (common, spec)
        }
        Cmd::Drain {
            common,
            pids,
            hold,
            broadcast,
            connect_rate,
            prime,
        } => {
            let spec = common.spec(Mode::Drain, Load::Idle, |s| {
                s.plan.on_go = OnGo::ExpectDrain;
                (s.plan.connect_rate, s.plan.prime) = (connect_rate, prime);
                (s.more_pids, s.duration, s.broadcast) = (pids, hold, broadcast);
            });
            (common, spec)
        }
    };
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardcast-bench: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if let Some(list) = &common.cpu {
        let cpus = sys::parse_cpu_list(list).map_err(anyhow::Error::msg)?;
        sys::pin_to(&cpus).context("pinning to --cpu")?;
    }
    one_run(&spec, &common)
}

fn scale_run(args: &scale::ScaleArgs) -> anyhow::Result<ExitCode> {
    let spec = match args.spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardcast-bench: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let report = scale::run(&spec)?;
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAULTS)
    })
}

fn one_run(spec: &RunSpec, common: &Common) -> anyhow::Result<ExitCode> {
    let report = run::run(spec)?;
    print!("{}", report.summary());
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &common.html {
        std::fs::write(path, report.html().context("drawing the report's charts")?)
            .with_context(|| format!("writing {}", path.display()))?;
        let png = path.with_extension("png");
        std::fs::write(&png, report.png().context("drawing the report's PNG")?)
            .with_context(|| format!("writing {}", png.display()))?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAULTS)
    })
}

/// `shardcast-bench scrape`: the service's own renderer, timed in-process.
fn scrape(shards: usize, rounds: usize) {
    let m = shardcast::metrics::Metrics::new(shards, "blue");
    for (i, s) in m.shards.iter().enumerate() {
        s.messages_total.add(1_000_000 + i as u64);
        s.connections_active.set(150);
        s.close(1000);
        s.error(shardcast::metrics::ErrorKind::Protocol);
        for ns in [5_000, 80_000, 2_000_000] {
            s.message_duration.observe_ns(ns);
            s.redis_duration.observe_ns(ns);
        }
    }
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for round in 0..rounds {
        let t = std::time::Instant::now();
        let body = m.render(true);
        times.push(t.elapsed());
        bytes = body.len();
        if round > 0 && round % (rounds / 4).max(1) == 0 {
            eprintln!("scrape: {round} of {rounds} rounds");
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "scrape: {shards} shards, {rounds} rounds, {bytes} bytes: median {:?}, p99 {:?}, worst {:?}",
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}
