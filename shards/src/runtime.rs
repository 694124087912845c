//! Starting one pinned, named glommio executor per shard and joining them.
//!
//! glommio reports an executor that failed to start (memlock budget, bad CPU)
//! only at `join()`, while `spawn()` returns Ok. So every shard says "started"
//! on its own channel, and [`start`] waits for all of them before it returns:
//! a shard that never started is an error here, not a silent missing core.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::control::{self, Control, ControlReceiver, ControlSender};
use crate::listener;

/// How the shards are laid out. Defaults fit a small box and a test.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of shards; 0 means one per online CPU.
    pub shards: usize,
    /// The shared listen address; port 0 picks one port for all shards.
    pub listen: SocketAddr,
    /// Accept backlog per shard listener.
    pub backlog: u32,
    /// Pin shard N to the Nth online CPU.
    pub pin: bool,
    /// glommio's registered I/O memory per executor. Its 10 MiB default costs
    /// about 5 MB RSS per shard and counts against the memlock limit.
    pub io_memory: usize,
    /// io_uring depth per executor. It also sizes the kernel's cancel hash
    /// (cq entries / 32 buckets, at most 256), and glommio cancels a poll on
    /// every wake-up: with thousands of idle sockets per shard each holding a
    /// poll, a shallow ring turns every wake-up into a walk of a long bucket
    /// list (`io_poll_find` was 29% of the server's CPU at 10K sockets and
    /// depth 128; 7% at 4096). The deeper ring costs about 1 MB per shard.
    pub ring_depth: usize,
    /// How long a shard may take to come up before start fails.
    pub start_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            backlog: 4096,
            pin: true,
            io_memory: 64 << 10,
            ring_depth: 4096,
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the control channel: {0}")]
    Control(std::io::Error),
    #[error("shard {shard} could not be spawned: {reason}")]
    Spawn { shard: usize, reason: String },
    #[error("shard {shard} did not start: {reason}")]
    NotStarted { shard: usize, reason: String },
}

/// What a shard's entry point receives.
pub struct ShardContext {
    /// This shard's index, 0-based.
    pub id: usize,
    /// How many shards the process runs.
    pub shards: usize,
    /// The CPU this shard is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// This shard's own listener on the shared address.
    pub listener: glommio::net::TcpListener,
    /// Control messages from the control thread.
    pub control: ControlReceiver,
}

/// The running shards, as seen from the control thread.
pub struct Runtime {
    local_addr: SocketAddr,
    controls: Vec<ControlSender>,
    handles: Vec<ExecutorJoinHandle<()>>,
    exited: Receiver<usize>,
}

impl Runtime {
    /// The address every shard listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.controls.len()
    }

    /// Sends `msg` to every shard; shards that are already gone are skipped.
    pub fn broadcast(&self, msg: Control) {
        for (id, c) in self.controls.iter().enumerate() {
            if let Err(e) = c.send(msg) {
                tracing::debug!(shard = id, error = %e, "control message not delivered");
            }
        }
    }

    /// Waits until every shard's entry point has returned, or `timeout` passes.
    /// Returns true when all exited.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = self.handles.len();
        while left > 0 {
            match self.exited.recv_deadline(deadline) {
                Ok(_) => left -= 1,
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
        true
    }

    /// A receiver that yields a shard id each time a shard's entry point
    /// returns; lets the control thread wait on shards and signals together.
    pub fn exited(&self) -> &Receiver<usize> {
        &self.exited
    }

    /// Joins the executor threads. Call after the shards exited.
    pub fn join(self) -> Vec<Result<(), String>> {
        drop(self.controls);
        self.handles
            .into_iter()
            .map(|h| h.join().map_err(|e| e.to_string()))
            .collect()
    }
}

/// Online CPUs the process may run on, in order.
fn cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect()
        })
}

/// The shard count `cfg` asks for, resolving 0 to one per CPU.
pub fn shard_count(cfg: &RuntimeConfig) -> usize {
    if cfg.shards == 0 {
        cpus().len()
    } else {
        cfg.shards
    }
}

fn set_thread_name(name: &str) {
    // glommio names its threads "<name>-<notifier id>"; operators look for
    // plain "shard-N" in top and perf, so rename from inside the thread.
    let mut bytes: Vec<u8> = name.bytes().take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Starts the shards and returns once every one of them is running `entry`.
pub fn start<F, Fut>(cfg: &RuntimeConfig, entry: F) -> Result<Runtime, RuntimeError>
where
    F: Fn(ShardContext) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let n = shard_count(cfg);
    let cpus = cpus();
    let listeners = listener::bind_reuseport(cfg.listen, n, cfg.backlog).map_err(|source| {
        RuntimeError::Bind {
            addr: cfg.listen,
            source,
        }
    })?;
    let local_addr = listeners[0]
        .local_addr()
        .map_err(|source| RuntimeError::Bind {
            addr: cfg.listen,
            source,
        })?;

    let (exit_tx, exited) = crossbeam_channel::bounded(n);
    let mut controls = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);

    for (id, std_listener) in listeners.into_iter().enumerate() {
        let (ctl_tx, ctl_rx) =
            control::channel(control::CONTROL_QUEUE).map_err(RuntimeError::Control)?;
        controls.push(ctl_tx);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
        started.push(ready_rx);
        let cpu = cfg.pin.then(|| cpus[id % cpus.len()]);
        let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
        let entry = entry.clone();
        let exit_tx = exit_tx.clone();
        let fd = std_listener.into_raw_fd();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(cfg.io_memory)
            .ring_depth(cfg.ring_depth)
            .spawn(move || async move {
                set_thread_name(&format!("shard-{id}"));
                // SAFETY: fd is a bound, listening, non-blocking socket that
                // nothing else owns since into_raw_fd above.
                let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                let _ = ready_tx.send(());
                let ctx = ShardContext {
                    id,
                    shards: n,
                    cpu,
                    listener,
                    control: ctl_rx.into_async(),
                };
                // Reports exit even when the entry point panics.
                struct Exit(crossbeam_channel::Sender<usize>, usize);
                impl Drop for Exit {
                    fn drop(&mut self) {
                        let _ = self.0.try_send(self.1);
                    }
                }
                let _exit = Exit(exit_tx, id);
                entry(ctx).await;
            })
            .map_err(|e| RuntimeError::Spawn {
                shard: id,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(exit_tx);

    let deadline = Instant::now() + cfg.start_timeout;
    for (id, ready) in started.into_iter().enumerate() {
        match ready.recv_deadline(deadline) {
            Ok(()) => {}
            Err(e) => {
                let reason = match e {
                    RecvTimeoutError::Timeout => {
                        format!("no sign of life within {:?}", cfg.start_timeout)
                    }
                    // The closure was dropped unrun: the executor failed to build.
                    RecvTimeoutError::Disconnected => {
                        let h = handles.remove(id);
                        match h.join() {
                            Err(e) => e.to_string(),
                            Ok(()) => "executor exited before starting".into(),
                        }
                    }
                };
                let rt = Runtime {
                    local_addr,
                    controls,
                    handles,
                    exited,
                };
                rt.broadcast(Control::Stop);
                return Err(RuntimeError::NotStarted { shard: id, reason });
            }
        }
    }
    Ok(Runtime {
        local_addr,
        controls,
        handles,
        exited,
    })
}
