//! One shard's loop: it builds the shard's context and data plane, runs
//! their tasks (Redis, pub/sub, the socket plane, heartbeats, sweeps,
//! flushes), accepts connections, and carries out its part of a drain.
//!
//! Everything below the loop is handed the [`Context`] and the planes;
//! nothing below reaches back up here.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use glommio::net::TcpStream;
use shards::{Control, ShardContext};

use crate::conn::Planes;
use crate::context::{Context, Shared};
use crate::deliver;
use crate::history::History;
use crate::metrics::ErrorKind;
use crate::presence::{self, Presence};
use crate::protocol;
use crate::pubsub::{self, Subscriber};
use crate::redis::replicas::Replicas;
use crate::redis::sentinel::{self, Switch};
use crate::redis::{Redis, RedisTarget};
use crate::store::Store;
use crate::ws::codec;
use crate::ws::counter::{self, Sockets};
use crate::ws::plane::{Idle, Slice, Sweep};

/// The end of a drain kept for the last flush of counts to Redis.
const FLUSH_RESERVE: Duration = Duration::from_millis(500);
/// A flush always gets this long, even past the drain's end: running a
/// little over the grace period loses less than counts never written.
const FLUSH_FLOOR: Duration = Duration::from_millis(100);
/// The last flush on a stop that no drain came before.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// Heartbeats to one slice of the table, with the idle Pings due.
fn heartbeat(ctx: &Context, plane: &Sockets, slice: Slice, idle: Option<Idle>) {
    let ts = crate::logging::rfc3339_millis(SystemTime::now());
    let mut frame = Vec::new();
    codec::encode_text(&mut frame, protocol::heartbeat(&ts).as_bytes());
    let beat = plane.heartbeat(&frame, slice, idle);
    let m = ctx.metrics();
    m.heartbeats_sent_total.add(beat.sent);
    m.idle_pings_total.add(beat.pinged);
    m.idle_pings_with_heartbeat_total.add(beat.pinged);
}

/// Calls `visit` for every slice of the socket table once per `period`, one
/// slice per tick, each of about `per_tick` sockets: the work of a walk is
/// spread over its period instead of landing in one loop turn. Slices are
/// sized for `capacity` sockets (or the table, if larger), not for the table
/// as it is when a period starts: a shard that starts empty and fills within
/// its first period would otherwise visit every socket in one tick.
///
/// Ticks are due at fixed offsets from the walk's start, not a sleep after
/// the last one: on a loaded shard each timer fires late, and sleeping a tick
/// after each visit would stretch the walk by every tick's lateness (a
/// heartbeat or a token's expiry many periods late). A late walk catches up,
/// still one slice per loop turn.
async fn walk(
    plane: Rc<Sockets>,
    period: Duration,
    per_tick: usize,
    capacity: usize,
    mut visit: impl FnMut(Slice),
) {
    let mut start = Instant::now();
    loop {
        let of = Slice::parts(capacity.max(plane.len()), per_tick, period);
        let tick = period / of as u32;
        for index in 0..of {
            let due = start + tick * (index as u32 + 1);
            glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
            visit(Slice::new(index, of));
        }
        // A walk that ended more than a period behind starts the next from
        // now: catching up on whole missed periods would only burst.
        start += period;
        let now = Instant::now();
        if now.saturating_duration_since(start) > period {
            start = now;
        }
    }
}

/// The shard's entry point, run by the `shards` runtime on its own core:
/// wires the shard, starts its tasks, serves until a drain or a stop.
pub async fn run(
    ctx: ShardContext,
    shared: Arc<Shared>,
    calls: Option<shards::PendingReceiver<crate::api::Call>>,
) {
    crate::logging::set_shard(ctx.id);
    let wired = wire(ctx.id, &shared);
    let shard = wired.shard.clone();
    let plane = match counter::plane(shard.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "shard cannot start its socket plane");
            return;
        }
    };
    glommio::spawn_local(plane.clone().run()).detach();
    let echo = match shared
        .cfg
        .conformance_echo
        .then(|| crate::ws::echo::plane(&shared.cfg))
    {
        None => None,
        Some(Ok(p)) => {
            glommio::spawn_local(p.clone().run()).detach();
            Some(p)
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "shard cannot start its echo plane");
            return;
        }
    };
    let planes = Rc::new(Planes {
        counter: plane.clone(),
        echo,
    });
    if let Some(calls) = calls {
        glommio::spawn_local(crate::api::serve(calls.into_async(), shard.clone())).detach();
    }
    start_redis(wired, &plane);
    start_walks(&shard, &plane);
    start_probe(&shard, &plane);
    glommio::spawn_local(measure_lag(shard.clone())).detach();
    glommio::spawn_local(flush_every(shard.clone(), shared.cfg.flush_interval)).detach();
    if shard.presence.enabled() {
        glommio::spawn_local(presence_every(shard.clone())).detach();
    }
    serve(ctx, &shard, &planes).await;
}

/// A shard's parts before anything runs: its Redis link, and the context
/// that holds its store, subscriber and history.
struct Wired {
    shard: Rc<Context>,
    redis: Redis,
    pubsub: Rc<Subscriber>,
    target: RedisTarget,
    switch: Rc<Switch>,
}

/// Builds shard `id`'s parts from the process's settings; starts only the
/// Sentinel watch, which the link's first connect needs.
fn wire(id: usize, shared: &Arc<Shared>) -> Wired {
    let cfg = &shared.cfg;
    let target = shared.redis_target.clone();
    let switch = Rc::new(Switch::default());
    if let RedisTarget::Sentinel {
        sentinels, master, ..
    } = &target
    {
        glommio::spawn_local(sentinel::watch(
            sentinels.clone(),
            shared.redis_tls.clone(),
            master.clone(),
            id,
            switch.clone(),
        ))
        .detach();
    }
    // Every script the shard calls by hash, loaded on each (re)connect.
    let scripts = [History::SCRIPTS, Store::SCRIPTS, Presence::SCRIPTS].concat();
    let mut init = Vec::new();
    for s in &scripts {
        init.extend(
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(*s)
                .get_packed_command(),
        );
    }
    let redis = Redis::new(
        target.clone(),
        shared.redis_tls.clone(),
        switch.clone(),
        (init, scripts.len()),
        shared.redis_observer(id),
        id,
    );
    let replicas = Rc::new(Replicas::new(cfg.redis_min_replicas));
    let store = Store::new(
        redis.clone(),
        &shared.run_id,
        id,
        (cfg.session_ttl, cfg.heartbeat_interval),
        cfg.max_unflushed_sessions,
        replicas.clone(),
        (shared.metrics.clone(), shared.readiness.clone()),
    );
    let history_on = cfg.history_size > 0;
    let pubsub = Subscriber::new(
        cfg.pubsub,
        cfg.max_rooms,
        history_on.then(History::global_head_key),
        redis.cluster(),
        shared.metrics.clone(),
        id,
    );
    let history = History::new(
        cfg.history_size,
        cfg.history_ttl.as_millis() as u64,
        pubsub.verbs().publish,
        replicas,
        cfg.max_rooms,
    );
    let presence = Presence::new(
        cfg.presence,
        cfg.presence_ttl.as_millis() as u64,
        cfg.presence_events.clone(),
    );
    let shard = Rc::new(Context::new(
        id,
        shared.clone(),
        store,
        pubsub.clone(),
        (history, presence),
    ));
    Wired {
        shard,
        redis,
        pubsub,
        target,
        switch,
    }
}

/// The command link's task and the subscription's, whose events reach
/// the plane's sockets.
fn start_redis(wired: Wired, plane: &Rc<Sockets>) {
    let Wired {
        shard,
        redis,
        pubsub,
        target,
        switch,
    } = wired;
    glommio::spawn_local(redis.run()).detach();
    let tls = shard.shared.redis_tls.clone();
    let p = plane.clone();
    glommio::spawn_local(pubsub::run(
        pubsub,
        target,
        tls,
        switch,
        move |to, payload| deliver::on_bus_event(&shard, &p, to, payload),
    ))
    .detach();
}

/// With history on, the probe of every channel the shard delivers.
fn start_probe(shard: &Rc<Context>, plane: &Rc<Sockets>) {
    let every = shard.cfg().history_probe_interval;
    if shard.history.enabled() && !every.is_zero() {
        let (s, p) = (shard.clone(), plane.clone());
        glommio::spawn_local(deliver::probe_every(s, p, every)).detach();
    }
}

/// The heartbeat and the sweep, each a walk over the socket table.
fn start_walks(shard: &Rc<Context>, plane: &Rc<Sockets>) {
    let cfg = shard.cfg();
    // What one shard may hold, for sizing the walks' slices.
    let capacity = cfg.max_connections;
    // A heartbeat is a send per socket: about 64 of them per tick keeps a
    // tick near a millisecond.
    let idle = Idle::new(cfg.idle_timeout, cfg.heartbeat_interval);
    let (s, p) = (shard.clone(), plane.clone());
    glommio::spawn_local(walk(
        plane.clone(),
        cfg.heartbeat_interval,
        64,
        capacity,
        move |slice| heartbeat(&s, &p, slice, idle),
    ))
    .detach();
    // The sweep (pings, idle closes, stalled writers, expired tokens) passes
    // over the sockets a few times per idle timeout, instead of a timer per
    // socket re-armed on every message.
    let (s, p) = (shard.clone(), plane.clone());
    let sweep = Sweep::new(cfg.idle_timeout, cfg.heartbeat_interval);
    let period = sweep.period;
    glommio::spawn_local(walk(plane.clone(), period, 1024, capacity, move |slice| {
        let pings = p.sweep(Instant::now(), &sweep, slice);
        s.metrics().idle_pings_total.add(pings);
    }))
    .detach();
}

/// Event-loop lag: how late a 100 ms timer fires. A shard busy for long
/// stretches (a burst, a slow handler) shows here before its sockets time
/// out.
async fn measure_lag(shard: Rc<Context>) {
    const TICK: Duration = Duration::from_millis(100);
    loop {
        let t = Instant::now();
        glommio::timer::sleep(TICK).await;
        let late = t.elapsed().saturating_sub(TICK);
        shard.metrics().loop_lag_ns.set(late.as_nanos() as u64);
    }
}

/// Presence batches go out this often: a join shows in the room's presence
/// within it, and renewals of a whole heartbeat tick travel together.
const PRESENCE_BATCH: Duration = Duration::from_millis(250);

/// Sends what presence gathered (joins, leaves, renewals), every
/// PRESENCE_BATCH while there is any.
async fn presence_every(s: Rc<Context>) {
    loop {
        glommio::timer::sleep(PRESENCE_BATCH).await;
        if !s.presence.is_idle() {
            send_presence(&s).await;
        }
    }
}

/// One presence send, counted.
async fn send_presence(s: &Context) {
    let sent = presence::send(&s.presence, s.redis(), &s.pubsub).await;
    let m = s.metrics();
    m.presence_writes_total.add(sent.written);
    m.presence_write_errors_total.add(sent.failed);
}

/// Writes the counts Redis does not have yet, every `every`, and says
/// whether Redis holds everything this shard counted.
async fn flush_every(s: Rc<Context>, every: Duration) {
    let mut epoch = 0;
    // On a fixed schedule, so the flush's own duration does not stretch the
    // promise that counts reach Redis within `every`.
    let mut next = Instant::now() + every;
    loop {
        glommio::timer::sleep(next.saturating_duration_since(Instant::now())).await;
        // Fallen behind (Redis slow or away): start from now, no burst.
        next = (next + every).max(Instant::now());
        // After a reconnect Redis may have come back empty (a restart
        // without persistence, a failover): write every live session's
        // field again. Idempotent, so harmless when nothing was lost.
        if s.redis().epoch() != epoch && s.redis().is_up() {
            if epoch != 0 {
                s.store.rewrite_all();
            }
            epoch = s.redis().epoch();
        }
        let clean = s.store.flush().await;
        // Readiness and cross-shard resumes wait for this: a session counted
        // during an outage must be findable once we say ready.
        s.shared
            .readiness
            .shard(s.id)
            .set_redis_synced(clean && s.redis().is_up());
    }
}

/// Accepts until a drain or a stop, then carries it out: the drain, and
/// the last flush of counts.
async fn serve(ctx: ShardContext, shard: &Rc<Context>, planes: &Rc<Planes>) {
    let mut control = ctx.control;
    let listener = ctx.listener;
    // Nothing is buffered yet; a failed connect clears this.
    let ready = shard.shared.readiness.shard(ctx.id);
    ready.set_redis_synced(true);
    ready.set_serving(true);
    // An unpinned shard logs no cpu field rather than a null.
    match ctx.cpu {
        Some(cpu) => tracing::info!(cpu, "shard serving"),
        None => tracing::info!(pinned = false, "shard serving"),
    }
    #[cfg(debug_assertions)]
    let panic_on_accept = debug_panic_shard() == Some(ctx.id);

    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    #[cfg(debug_assertions)]
                    if panic_on_accept {
                        panic!(
                            "SHARDCAST_DEBUG_PANIC_SHARD: shard {} panics on purpose",
                            ctx.id
                        );
                    }
                    accept_one(shard, planes, stream)
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    shard.metrics().error(ErrorKind::Io);
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let drain_by = future::or(accept, async {
        match control.recv().await {
            Some(Control::Drain { by }) => Some(by),
            _ => None,
        }
    })
    .await;
    // Closing the listener: new connections go to the other shards' (or the
    // other color's) listeners.
    drop(listener);
    // The last counts go to Redis before the process ends: within what is
    // left of the drain's time, or, on a stop no drain came before, for up
    // to STOP_FLUSH.
    let flush_for = match drain_by {
        Some(by) => {
            drain(shard, planes, &mut control, by).await;
            by.saturating_duration_since(Instant::now())
                .max(FLUSH_FLOOR)
        }
        None => STOP_FLUSH,
    };
    let flush = glommio::timer::timeout(flush_for, async {
        // Counts first: a presence entry left behind only waits out its TTL.
        shard.store.flush().await;
        send_presence(shard).await;
        Ok(())
    });
    let _ = flush.await;
    ready.set_serving(false);
    tracing::info!("shard stopped");
}

/// Test-only, and only in debug builds (release builds have no such
/// variable): `SHARDCAST_DEBUG_PANIC_SHARD=<id>` makes shard `id` panic at
/// the first connection it accepts, so a test can see what a panicking
/// shard does to the logs and to the exit code (`tests/panic.rs`).
#[cfg(debug_assertions)]
fn debug_panic_shard() -> Option<usize> {
    std::env::var("SHARDCAST_DEBUG_PANIC_SHARD")
        .ok()?
        .parse()
        .ok()
}

fn accept_one(shard: &Rc<Context>, planes: &Rc<Planes>, stream: TcpStream) {
    let Some(slot) = shard.try_open() else {
        shard.metrics().error(ErrorKind::OverCapacity);
        if let Some(unlogged) = shard.log_gate(ErrorKind::OverCapacity) {
            tracing::warn!(
                limit = shard.cfg().max_connections,
                unlogged,
                "connection limit reached: 503"
            );
        }
        glommio::spawn_local(crate::conn::refuse_full(stream)).detach();
        return;
    };
    // The connection's task reads the head and answers HTTP, or runs the
    // upgrade up to the welcome and hands the socket to the plane, then
    // ends: an open socket is an entry in the plane's table, not a task.
    // The slot goes with it to the end of its close: the drain waits for it.
    let planes = planes.clone();
    glommio::spawn_local(async move { crate::conn::front(slot, &planes, stream).await }).detach();
}

async fn drain(
    shard: &Rc<Context>,
    planes: &Planes,
    control: &mut shards::ControlReceiver,
    by: Instant,
) {
    let started = Instant::now();
    let deadline = by
        .checked_sub(FLUSH_RESERVE)
        .unwrap_or(started)
        .max(started);
    shard.begin_drain(deadline);
    let plane = &planes.counter;
    let sockets = plane.len();
    tracing::info!(sockets, "draining");
    plane.drain();
    if let Some(echo) = &planes.echo {
        echo.drain();
    }
    let wait = future::or(
        async {
            // Requests, upgrades, sockets and their goodbyes: each holds
            // a slot until it is done.
            shard.connections_gone().await;
            true
        },
        async {
            let stop = async {
                while let Some(c) = control.recv().await {
                    if c == Control::Stop {
                        break;
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            future::or(stop, glommio::timer::sleep(left)).await;
            false
        },
    )
    .await;
    let left = plane.len();
    tracing::info!(
        sockets,
        left,
        clean = wait,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drain finished"
    );
}
