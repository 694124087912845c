//! The fast tier's fixtures: the in-memory Redis with Rust stand-ins for the
//! store's scripts, and a shardcast server started in this process (its
//! shards are threads of the test) on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardcast::store::FLUSH_SCRIPT;
use shardcast::Server;
use shardcast_kit::memredis::{Db, MemRedis, Reply, ScriptFn};
use shardcast_kit::process::wait_for;

use super::TEST_API_KEY;

/// The store's flush script in Rust, step for step (see `FLUSH_SCRIPT`):
/// for each session, -1 when its tombstone exists, else its writer's field
/// raised to the given count, the TTL refreshed, and the count.
pub fn flush_stand_in() -> ScriptFn {
    Arc::new(|db: &mut Db, keys: &[Vec<u8>], argv: &[Vec<u8>]| {
        let num = |b: &[u8]| -> i64 { String::from_utf8_lossy(b).parse().unwrap_or(0) };
        let (writer, ttl) = (&argv[0], num(&argv[1]));
        let mut out = Vec::new();
        for (i, pair) in keys.chunks(2).enumerate() {
            let [session, tombstone] = pair else {
                return Reply::Error("ERR odd KEYS".into());
            };
            if db.exists(tombstone) {
                out.push(Reply::Int(-1));
                continue;
            }
            let v = num(&argv[i + 2]);
            let cur = match db.hget(session, writer) {
                Ok(c) => c.map_or(0, |c| num(&c)),
                Err(e) => return e,
            };
            if v >= cur {
                if let Err(e) = db.hset(session, writer, v.to_string().as_bytes()) {
                    return e;
                }
            }
            db.pexpire(session, ttl as u64);
            out.push(Reply::Int(v));
        }
        Reply::Array(out)
    })
}

/// An in-memory Redis that answers everything a server without history
/// sends.
pub fn mem_redis() -> MemRedis {
    let sha = redis::Script::new(FLUSH_SCRIPT).get_hash().to_owned();
    MemRedis::builder()
        .script(FLUSH_SCRIPT, &sha, flush_stand_in())
        .start()
}

/// One in-process server at a time per test binary: each shard's io_uring
/// rings are locked memory, and a user's default memlock limit (8 MiB) holds
/// one two-shard server, not four started by parallel tests. (Root is not
/// limited, so this shows only when the tier runs as a user.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A server in this process, ready, with [`TEST_API_KEY`] and no history (the
/// in-memory Redis has no streams); dropping it drains it.
pub struct InProcess {
    server: Option<Server>,
    pub addr: SocketAddr,
    /// Released after the server drained (fields drop after `drop`).
    _turn: MutexGuard<'static, ()>,
}

impl InProcess {
    /// `args` come after the fixture's own and win over them.
    pub fn start(redis: &MemRedis, args: &[&str]) -> InProcess {
        // A test that failed while holding its turn must not fail the rest.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let url = redis.url();
        let mut argv = vec![
            "shardcast",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &url,
            "--history-size",
            "0",
            "--pin",
            "false",
            "--api-key",
            TEST_API_KEY,
            "--log-level",
            "warn",
        ];
        argv.extend(args);
        let cfg = shardcast::Config::from_args(argv).expect("a valid config");
        let server = Server::start(cfg).expect("the server starts");
        let addr = server.local_addr();
        let readiness = &server.shared().readiness;
        wait_for("the server to be ready", Duration::from_secs(10), || {
            (readiness.state().as_str() == "ready").then_some(())
        });
        InProcess {
            server: Some(server),
            addr,
            _turn: turn,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Whether `what` of its metric cells is above zero on every shard (read
    /// in this process: which shard the kernel gave a socket to shows here).
    pub fn every_shard(&self, what: impl Fn(&shardcast::metrics::ShardMetrics) -> u64) -> bool {
        self.server()
            .shared()
            .metrics
            .shards
            .iter()
            .all(|s| what(s) > 0)
    }

    /// Drains: listeners close, every socket gets its goodbye; returns once
    /// every shard has exited, whether it did so within `grace`.
    pub fn drain(&mut self, grace: Duration) -> bool {
        let server = self.server.take().unwrap();
        server.drain(Instant::now() + grace);
        let clean = server.wait(grace + Duration::from_secs(2));
        server.finish(Instant::now());
        clean
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.drain(Duration::from_millis(500));
        }
    }
}
