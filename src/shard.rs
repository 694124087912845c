//! One shard of the service: its accept loop, its sockets, its session
//! store, its Redis connections and timers, and its part of a drain.
//!
//! Nothing here is shared with another shard except the read-mostly
//! [`Shared`] block and this shard's own metric cells.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use glommio::net::TcpStream;
use glommio::sync::Gate;
use shards::{Control, ShardContext};
use uuid::Uuid;

use crate::config::Config;
use crate::mailbox::{Mailbox, Note};
use crate::metrics::{ErrorKind, ShardMetrics};
use crate::protocol::{self, BusEvent};
use crate::pubsub::{self, RoomError, Subscriber, Target};
use crate::redis::{Redis, RedisAddr};
use crate::server::Shared;
use crate::store::Store;
use crate::ws::codec;

struct Socket {
    mailbox: Rc<Mailbox>,
    session: Uuid,
    room: Option<Rc<str>>,
}

/// A shard's state, shared by its tasks through `Rc`.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub store: Store,
    pub pubsub: Rc<Subscriber>,
    sockets: RefCell<HashMap<u64, Socket>>,
    open: Cell<usize>,
    next_conn: Cell<u64>,
    draining: Cell<bool>,
    drain_deadline: Cell<Option<Instant>>,
    /// Per error kind: when its last log line was written, and how many
    /// events were not logged since.
    log_gates: [Cell<(Option<Instant>, u64)>; ErrorKind::ALL.len()],
}

impl Shard {
    /// Whether a limit that acted may write its log line now: at most one
    /// line per kind per second per shard, so a flood cannot flood the logs.
    /// Returns the events left unlogged since the last line.
    pub fn log_gate(&self, kind: ErrorKind) -> Option<u64> {
        let gate = &self.log_gates[kind as usize];
        let (last, skipped) = gate.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            gate.set((last, skipped + 1));
            return None;
        }
        gate.set((Some(now), 0));
        Some(skipped)
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    pub fn redis(&self) -> &Redis {
        self.store.redis()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// When a draining socket must be gone.
    pub fn drain_deadline(&self) -> Instant {
        self.drain_deadline
            .get()
            .unwrap_or_else(|| Instant::now() + self.cfg().shutdown_grace)
    }

    /// A process-unique connection id, for logs.
    pub fn next_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        (self.id as u64) << 48 | n
    }

    /// Registers an upgraded socket so timers and events reach it, in its
    /// room if it named one. When the room's subscription is new, returns a
    /// receiver that fires once Redis has confirmed it (see
    /// [`Subscriber::join`]).
    pub fn register(
        &self,
        conn: u64,
        mailbox: Rc<Mailbox>,
        session: Uuid,
        room: Option<&str>,
    ) -> Result<Option<futures_channel::oneshot::Receiver<()>>, RoomError> {
        let (room, confirmed) = match room {
            Some(r) => {
                let (name, wait) = self.pubsub.join(r, conn, mailbox.clone())?;
                (Some(name), wait)
            }
            None => (None, None),
        };
        self.sockets.borrow_mut().insert(
            conn,
            Socket {
                mailbox,
                session,
                room,
            },
        );
        let m = self.metrics();
        m.connections_active.inc();
        m.connections_total.inc();
        Ok(confirmed)
    }

    pub fn unregister(&self, conn: u64) {
        let gone = self.sockets.borrow_mut().remove(&conn);
        if let Some(s) = gone {
            if let Some(room) = &s.room {
                self.pubsub.leave(room, conn);
            }
            self.metrics().connections_active.dec();
        }
    }

    /// A random `retry_after_ms`, so drained clients do not all come back at once.
    pub fn retry_after_ms(&self) -> u64 {
        let max = self.cfg().drain_retry_after.as_millis().max(1) as u64;
        rand::random_range(max / 10..=max)
    }

    /// Sends an encoded frame to every socket; returns how many took it.
    fn fan_out(&self, frame: Rc<[u8]>) -> u64 {
        let sockets = self.sockets.borrow();
        let mut n = 0;
        for s in sockets.values() {
            if s.mailbox.push(Note::Frame(frame.clone())) {
                n += 1;
            }
        }
        n
    }

    fn notify_all(&self, note: Note) {
        for s in self.sockets.borrow().values() {
            s.mailbox.push(note.clone());
        }
    }

    fn on_bus_event(&self, target: Target<'_>, payload: &[u8]) {
        match serde_json::from_slice::<BusEvent>(payload) {
            Ok(BusEvent::Broadcast(msg)) => {
                let mut frame = Vec::new();
                codec::encode_text(&mut frame, protocol::broadcast(&msg).as_bytes());
                let frame: Rc<[u8]> = frame.into();
                let n = match target {
                    Target::Events => self.fan_out(frame),
                    Target::Room(room) => {
                        let mut n = 0;
                        self.pubsub.for_each_member(room, |m| {
                            n += m.push(Note::Frame(frame.clone())) as u64;
                        });
                        n
                    }
                };
                self.metrics().broadcasts_delivered_total.add(n);
            }
            // Kicks travel on the events channel only.
            Ok(BusEvent::Kick(_)) if target != Target::Events => {}
            Ok(BusEvent::Kick(id)) => {
                let Some(id) = crate::session::parse_id(&id) else {
                    return;
                };
                self.store.forget(&id);
                for s in self.sockets.borrow().values().filter(|s| s.session == id) {
                    s.mailbox.push(Note::Kick);
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring malformed event from redis"),
        }
    }

    fn heartbeat(&self) {
        let ts = crate::logging::rfc3339_millis(SystemTime::now());
        let mut frame = Vec::new();
        codec::encode_text(&mut frame, protocol::heartbeat(&ts).as_bytes());
        let n = self.fan_out(frame.into());
        self.metrics().heartbeats_sent_total.add(n);
        // A silent but open socket keeps its session alive: refresh the TTL
        // of every session a socket holds, through the next flush.
        self.store.touch_live();
    }

    /// Counts a TCP connection against the per-shard limit; false when full.
    fn try_open(&self) -> bool {
        if self.open.get() >= self.cfg().max_connections {
            return false;
        }
        self.open.set(self.open.get() + 1);
        true
    }

    fn close_one(&self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

/// Releases a connection slot when the connection's task ends, however it ends.
pub struct Slot(pub Rc<Shard>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.close_one();
    }
}

/// The shard's entry point, run by the `shards` runtime on its own core.
pub async fn run(ctx: ShardContext, shared: Arc<Shared>) {
    crate::logging::set_shard(ctx.id);
    let cfg = &shared.cfg;
    // Validated at start, so it parses.
    let addr = RedisAddr::parse(&cfg.redis_url).expect("redis_url was validated");
    let redis = Redis::new(
        addr.clone(),
        Store::init_commands(),
        1,
        shared.metrics.clone(),
        ctx.id,
    );
    let store = Store::new(
        redis.clone(),
        &shared.run_id,
        ctx.id,
        cfg.session_ttl.as_millis() as u64,
        cfg.max_unflushed_sessions,
        shared.metrics.clone(),
    );
    let pubsub = Subscriber::new(cfg.pubsub, cfg.max_rooms, shared.metrics.clone(), ctx.id);
    let shard = Rc::new(Shard {
        id: ctx.id,
        shared: shared.clone(),
        store,
        pubsub: pubsub.clone(),
        sockets: RefCell::new(HashMap::new()),
        open: Cell::new(0),
        next_conn: Cell::new(0),
        draining: Cell::new(false),
        drain_deadline: Cell::new(None),
        log_gates: Default::default(),
    });

    glommio::spawn_local(redis.clone().run()).detach();
    {
        let s = shard.clone();
        glommio::spawn_local(pubsub::run(pubsub, addr, move |target, payload| {
            s.on_bus_event(target, payload)
        }))
        .detach();
    }
    {
        let s = shard.clone();
        let every = cfg.heartbeat_interval;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                s.heartbeat();
            }
        })
        .detach();
    }
    if !cfg.idle_timeout.is_zero() {
        // Idle sockets: one sweep over the registry a few times per timeout,
        // instead of a timer per socket re-armed on every message.
        let s = shard.clone();
        let timeout = cfg.idle_timeout;
        glommio::spawn_local(async move {
            let every = (timeout / 4).max(Duration::from_millis(250));
            loop {
                glommio::timer::sleep(every).await;
                let now = Instant::now();
                for sock in s.sockets.borrow().values() {
                    if let Some(note) = sock.mailbox.idle_note(now, timeout) {
                        sock.mailbox.push(note);
                    }
                }
            }
        })
        .detach();
    }
    {
        // Event-loop lag: how late a 100 ms timer fires. A shard busy for
        // long stretches (a burst, a slow handler) shows here before its
        // sockets time out.
        let s = shard.clone();
        glommio::spawn_local(async move {
            const TICK: Duration = Duration::from_millis(100);
            loop {
                let t = Instant::now();
                glommio::timer::sleep(TICK).await;
                let late = t.elapsed().saturating_sub(TICK);
                s.metrics().loop_lag_ns.set(late.as_nanos() as u64);
            }
        })
        .detach();
    }
    {
        let s = shard.clone();
        let every = cfg.flush_interval;
        glommio::spawn_local(async move {
            let mut epoch = 0;
            loop {
                glommio::timer::sleep(every).await;
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
                // Readiness and cross-shard resumes wait for this: a session
                // counted during an outage must be findable once we say ready.
                s.metrics()
                    .redis_synced
                    .set((clean && s.redis().is_up()) as u64);
            }
        })
        .detach();
    }

    let gate = Gate::new();
    let mut control = ctx.control;
    let listener = ctx.listener;
    // Nothing is buffered yet; a failed connect clears this.
    shard.metrics().redis_synced.set(1);
    shard.metrics().started.set(1);
    tracing::info!(cpu = ?ctx.cpu, "shard serving");

    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => accept_one(&shard, &gate, stream),
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    shard.metrics().error(ErrorKind::Io);
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let stop_now = future::or(accept, async {
        !matches!(control.recv().await, Some(Control::Drain))
    })
    .await;
    // Closing the listener: new connections go to the other shards' (or the
    // other color's) listeners.
    drop(listener);
    if !stop_now {
        drain(&shard, &gate, &mut control).await;
    }
    let flush = glommio::timer::timeout(Duration::from_secs(2), async {
        shard.store.flush().await;
        Ok(())
    });
    let _ = flush.await;
    shard.metrics().started.set(0);
    tracing::info!("shard stopped");
}

fn accept_one(shard: &Rc<Shard>, gate: &Gate, stream: TcpStream) {
    if !shard.try_open() {
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
    }
    let slot = Slot(shard.clone());
    let sockets = gate.clone();
    // Two tasks per socket, because a task's future is as large as its
    // largest await point and lives as long as the task: this one reads the
    // head and runs HTTP or the upgrade up to the welcome; an open socket
    // then gets a task whose future holds only what it needs for its life.
    let front = async move {
        let Some(opened) = crate::conn::front(&slot.0, stream).await else {
            return;
        };
        let socket = crate::ws::socket::serve(slot, Box::new(opened));
        match sockets.enter() {
            Ok(pass) => {
                glommio::spawn_local(async move {
                    socket.await;
                    drop(pass);
                })
                .detach();
            }
            // The drain closed the gate while the upgrade waited on Redis:
            // serve here, under this task's pass, so the socket still gets
            // its goodbye.
            Err(_) => socket.await,
        }
    };
    if let Ok(task) = gate.spawn(front) {
        task.detach();
    }
}

async fn drain(shard: &Rc<Shard>, gate: &Gate, control: &mut shards::ControlReceiver) {
    let started = Instant::now();
    let deadline = started
        + shard
            .cfg()
            .shutdown_grace
            .saturating_sub(Duration::from_millis(500));
    shard.drain_deadline.set(Some(deadline));
    shard.draining.set(true);
    let sockets = shard.sockets.borrow().len();
    tracing::info!(sockets, "draining");
    shard.notify_all(Note::Drain);
    let wait = future::or(
        async {
            let _ = gate.close().await;
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
    let left = shard.sockets.borrow().len();
    tracing::info!(
        sockets,
        left,
        clean = wait,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drain finished"
    );
}
