//! Redis from a glommio shard, with no extra threads: the `redis` crate packs
//! commands, parses replies and hashes keys to cluster slots, and the bytes
//! travel over glommio `TcpStream`s the shard owns, in TLS where the
//! address says `rediss://` (rustls).
//!
//! The crate's async connections need tokio or smol and `Send` streams, which a
//! glommio stream is not. So each shard holds a [`Redis`]: one pipelined
//! [`link::Link`] to a single Redis (or the master its Sentinels name), or a
//! [`cluster::Cluster`] of links, one per master, with requests routed by
//! slot. A pub/sub connection rides on the same reader (`RespReader`)
//! and `connect_master`; its owner keeps it.
//!
//! - [`RedisAddr`], [`RedisTarget`]: where Redis is (`crate::addr`, plain
//!   data the settings share; the one thing this folder takes from the crate);
//! - [`stream`]: a connection's bytes, plain or TLS, and the process's
//!   one TLS client;
//! - `wire`: the RESP reader, a connect to one address (`AUTH` as its ACL
//!   user, `SELECT`), `ROLE`;
//! - [`link`]: one pipelined command connection, reconnecting;
//! - [`observe`]: what the client reports to its owner (counts, whether
//!   Redis is up);
//! - [`cluster`]: the slot map, routing and redirects;
//! - [`sentinel`]: asking Sentinels for the master, and word of a switch;
//! - [`replicas`]: the `WAIT` after a write, for `--redis-min-replicas`;
//! - `connect_master`: a connection to whichever server is master now.

pub mod backoff;
pub mod cluster;
pub mod link;
pub mod observe;
pub mod replicas;
pub mod sentinel;
pub mod stream;
pub(crate) mod wire;

use std::rc::Rc;

pub use crate::addr::{RedisAddr, RedisTarget};
pub use redis::Value;

use cluster::Cluster;
pub use cluster::Slot;
use link::{Link, LinkState};
pub use observe::{Observer, RedirectKind};
use sentinel::Switch;
use stream::{Stream, Tls};
pub use wire::as_u64;
pub(crate) use wire::RespReader;
pub use wire::RespStream;

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unavailable")]
    Unavailable,
    #[error("redis connection failed: {0}")]
    Io(String),
    #[error("redis TLS failed {0}")]
    Tls(String),
    /// `AUTH` was refused: a wrong password or user, which a retry will
    /// not mend.
    #[error("redis login failed: {0}")]
    Auth(String),
    #[error("redis replied with an error: {0}")]
    Server(String),
    #[error("unexpected redis reply: {0}")]
    Reply(String),
    /// Where the master is could not be told, or the server is not it.
    #[error("redis topology: {0}")]
    Topology(String),
    /// The write reached the master, but fewer replicas confirmed it than
    /// `redis_min_replicas` asks for: it may vanish with the master.
    #[error("only {acked} of {wanted} replicas confirmed the write")]
    Replicas { acked: u32, wanted: u32 },
}

/// What a failed write did on the server: what a client may be told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Certainly not: the request never left the shard, or the server
    /// refused it before running it (an error reply, a redirect).
    No,
    /// Yes, on the master, but fewer replicas confirmed it than asked for.
    Unconfirmed,
    /// Cannot be told: the request was sent, and its reply was lost with
    /// the connection (or was not one the protocol allows).
    Unknown,
}

impl RedisError {
    /// What the write that failed with this error did. `Unavailable` is
    /// only ever given to a request that was not written to a connection
    /// (the link fails what it has queued, never what is in flight, with
    /// it), and an error reply or a redirect comes before a command runs;
    /// a broken connection or a reply that makes no sense leaves the
    /// outcome unknown.
    pub fn applied(&self) -> Applied {
        match self {
            RedisError::Unavailable
            | RedisError::Auth(_)
            | RedisError::Server(_)
            | RedisError::Topology(_) => Applied::No,
            RedisError::Replicas { .. } => Applied::Unconfirmed,
            RedisError::Io(_) | RedisError::Tls(_) | RedisError::Reply(_) => Applied::Unknown,
        }
    }
}

/// Opens a connection to the server that is master now: the one `target`
/// names, the one its Sentinels name (asked from the `turn`th on), or the
/// cluster master that serves `slot`, after it said `ROLE` master. Returns
/// the address it reached, for logs.
pub(crate) async fn connect_master(
    target: &RedisTarget,
    tls: &Tls,
    turn: usize,
    slot: Option<Slot>,
) -> Result<(Stream, RespReader, RedisAddr), RedisError> {
    let addr = match target {
        RedisTarget::Single(a) => a.clone(),
        RedisTarget::Sentinel {
            sentinels,
            master,
            username,
            password,
            db,
            tls: master_tls,
        } => {
            let named = sentinel::master_addr(sentinels, tls, master, turn).await?;
            RedisAddr {
                username: username.clone(),
                password: password.clone(),
                db: *db,
                tls: *master_tls,
                ..named
            }
        }
        RedisTarget::Cluster { seeds } => {
            let slot = slot.ok_or_else(|| {
                RedisError::Topology("a cluster connection needs the slot it is for".into())
            })?;
            cluster::owner_of(seeds, tls, slot, turn).await?
        }
    };
    let (mut stream, mut reader) = wire::connect(&addr, tls).await?;
    wire::expect_master(&mut stream, &mut reader, &addr).await?;
    Ok((stream, reader, addr))
}

/// One shard's way to Redis, whatever its topology. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    One(Link),
    Cluster(Rc<Cluster>),
}

impl Redis {
    /// A client that is down until [`Redis::run`] connects it. `init` is
    /// packed commands run on every (re)connect of every link (e.g. SCRIPT
    /// LOAD), with the number of replies they produce. `switch` is the
    /// Sentinels' word of a new master. `observer` is told of what happens,
    /// on shard `shard`.
    pub fn new(
        target: RedisTarget,
        tls: Tls,
        switch: Rc<Switch>,
        (init, replies): (Vec<u8>, usize),
        observer: Rc<dyn Observer>,
        shard: usize,
    ) -> Self {
        let init: Rc<[u8]> = init.into();
        let kind = match target {
            RedisTarget::Cluster { seeds } => {
                Kind::Cluster(Cluster::new(seeds, tls, (init, replies), observer, shard))
            }
            target => {
                let o = observer.clone();
                let report = move |state| {
                    match state {
                        LinkState::Up => o.up(true),
                        LinkState::Lost => o.up(false),
                        LinkState::Unreachable => {}
                    }
                    if state != LinkState::Up {
                        o.interrupted();
                    }
                };
                Kind::One(Link::new(
                    target,
                    tls,
                    switch,
                    (init, replies),
                    Rc::new(report),
                    observer,
                    shard,
                ))
            }
        };
        Self { kind }
    }

    /// Counts successful connects; a change means Redis may have restarted
    /// (or a cluster node failed over).
    pub fn epoch(&self) -> u64 {
        match &self.kind {
            Kind::One(l) => l.epoch(),
            Kind::Cluster(c) => c.epoch(),
        }
    }

    /// Whether Redis answers now (on a cluster: every slot's master).
    pub fn is_up(&self) -> bool {
        match &self.kind {
            Kind::One(l) => l.is_up(),
            Kind::Cluster(c) => c.is_up(),
        }
    }

    /// Whether requests are routed by slot: callers then keep each
    /// request's keys in one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    /// The cluster, when Redis is one: for what must follow its slot map
    /// (sharded subscriptions).
    pub fn cluster(&self) -> Option<Rc<Cluster>> {
        match &self.kind {
            Kind::One(_) => None,
            Kind::Cluster(c) => Some(c.clone()),
        }
    }

    /// Sends packed commands whose keys are all in `slot` (`None`: keyless)
    /// and returns their `replies` replies in order. Fails at once with
    /// `Unavailable` while the connection is down, so callers can fall back
    /// to their cache instead of waiting.
    pub async fn exec(
        &self,
        slot: Option<Slot>,
        bytes: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match &self.kind {
            Kind::One(l) => l.exec(bytes, replies).await,
            Kind::Cluster(c) => c.exec(slot, bytes, replies).await,
        }
    }

    /// One command, one reply; a Redis error reply becomes `Err(Server)`.
    pub async fn query(&self, slot: Option<Slot>, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let mut v = self.exec(slot, cmd.get_packed_command(), 1).await?;
        match v.pop() {
            Some(Value::ServerError(e)) => Err(RedisError::Server(format!("{e:?}"))),
            Some(v) => Ok(v),
            None => Err(RedisError::Reply("no reply".into())),
        }
    }

    /// Keeps the connections up, reconnecting with backoff; runs until the
    /// shard's executor ends. Run it as a shard task.
    pub async fn run(self) {
        match self.kind {
            Kind::One(l) => l.run().await,
            Kind::Cluster(c) => c.run().await,
        }
    }
}
