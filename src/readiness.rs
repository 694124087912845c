//! Whether this process should get traffic: its drain flag and, per shard,
//! whether the shard serves, whether its Redis connection is up and whether
//! Redis has everything it counted. Each shard writes only its own entry,
//! with plain stores; `/readyz`, `/status`, start-up and the session store
//! read it. Nothing here knows a metric: the `redis_up` gauge is drawn from
//! it at scrape time.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The process's readiness.
#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    shards: Box<[ShardReadiness]>,
}

/// One shard's part, written by that shard only.
#[derive(Debug)]
pub struct ShardReadiness {
    serving: AtomicBool,
    redis_up: AtomicBool,
    /// Redis has every count this shard took, including those taken while
    /// it was away. True at start: nothing is buffered yet.
    redis_synced: AtomicBool,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Starting,
    Draining,
    RedisUnavailable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Starting => "starting",
            State::Draining => "draining",
            State::RedisUnavailable => "redis_unavailable",
        }
    }
}

impl Readiness {
    pub fn new(shards: usize) -> Self {
        Self {
            draining: AtomicBool::new(false),
            shards: (0..shards)
                .map(|_| ShardReadiness {
                    serving: AtomicBool::new(false),
                    redis_up: AtomicBool::new(false),
                    redis_synced: AtomicBool::new(true),
                })
                .collect(),
        }
    }

    pub fn shard(&self, id: usize) -> &ShardReadiness {
        &self.shards[id]
    }

    pub fn begin_drain(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Every shard runs its accept loop.
    pub fn all_serving(&self) -> bool {
        self.shards.iter().all(|s| s.serving.load(Relaxed))
    }

    /// Every shard's Redis connection is up.
    pub fn redis_up(&self) -> bool {
        self.shards.iter().all(|s| s.redis_up.load(Relaxed))
    }

    /// Every shard has written back what it counted while Redis was away,
    /// so a session counted then is findable from any shard.
    pub fn all_synced(&self) -> bool {
        self.shards.iter().all(|s| s.redis_synced.load(Relaxed))
    }

    pub fn state(&self) -> State {
        if self.is_draining() {
            State::Draining
        } else if !self.all_serving() {
            State::Starting
        } else if !self.redis_up() || !self.all_synced() {
            State::RedisUnavailable
        } else {
            State::Ready
        }
    }
}

impl ShardReadiness {
    pub fn set_serving(&self, v: bool) {
        self.serving.store(v, Relaxed);
    }

    pub fn set_redis_up(&self, v: bool) {
        self.redis_up.store(v, Relaxed);
    }

    pub fn set_redis_synced(&self, v: bool) {
        self.redis_synced.store(v, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_in_the_order_a_probe_needs_them() {
        let r = Readiness::new(2);
        assert_eq!(r.state(), State::Starting);
        r.shard(0).set_serving(true);
        assert_eq!(r.state(), State::Starting, "one shard is not the process");
        r.shard(1).set_serving(true);
        assert_eq!(r.state(), State::RedisUnavailable);
        r.shard(0).set_redis_up(true);
        r.shard(1).set_redis_up(true);
        assert_eq!(r.state(), State::Ready);
        r.shard(1).set_redis_synced(false);
        assert_eq!(r.state(), State::RedisUnavailable);
        r.shard(1).set_redis_synced(true);
        r.begin_drain();
        assert_eq!(r.state(), State::Draining);
        assert_eq!(r.state().as_str(), "draining");
    }
}
