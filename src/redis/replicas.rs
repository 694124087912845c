//! `--redis-min-replicas`: the `WAIT` after a write, and what its answer
//! means. One per shard, shared by every writer of the shard (sessions,
//! broadcast history), so a shortfall is logged once when it starts and
//! once when it ends.
//!
//! `WAIT` holds the connection it is sent on, and a shard sends every
//! command on one pipelined connection (one per node of a cluster), so a
//! `WAIT` per write would let one write through per timeout once replicas
//! are missing. Writes therefore go in rounds, one round in flight at a
//! time: the writes that queued while one was out go together, as one
//! request (one slot's, on a cluster) with one `WAIT` after them. The write
//! and its `WAIT` stay in one request, so they always share a connection:
//! a `WAIT` on a connection made since would confirm nothing. Once a `WAIT`
//! finds too few replicas, rounds go without one (each write answered as
//! not confirmed, which is what it is) but for one per `PROBE_EVERY`, which
//! asks again with a short timeout; the first that finds enough replicas
//! ends the shortfall.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::{Redis, RedisError, Slot, Value};

/// How long a round waits for its replicas before it is taken as
/// unconfirmed, while they were there at the last asking.
const WAIT_TIMEOUT_MS: u64 = 1000;
/// While they were not: how often a round asks again, and how long it
/// holds the connection doing so.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT_MS: u64 = 50;
/// Writes sent in one round at most.
const ROUND_MAX: usize = 256;

/// A write waiting for its round.
struct Pending {
    slot: Option<Slot>,
    packed: Vec<u8>,
    replies: usize,
    done: oneshot::Sender<Result<Vec<Value>, RedisError>>,
}

pub struct Replicas {
    /// Replicas that must confirm a write; 0: the master's reply is enough.
    wanted: u32,
    /// Whether the last `WAIT` found too few, and how many it found.
    short: Cell<Option<u32>>,
    /// When the last probe was sent, in a shortfall.
    probed: Cell<Option<Instant>>,
    queue: RefCell<VecDeque<Pending>>,
    /// Whether a task is sending rounds.
    driving: Cell<bool>,
}

impl Replicas {
    pub fn new(wanted: u32) -> Self {
        Self {
            wanted,
            short: Cell::new(None),
            probed: Cell::new(None),
            queue: RefCell::new(VecDeque::new()),
            driving: Cell::new(false),
        }
    }

    /// Whether writes are known to go unconfirmed now.
    pub fn short(&self) -> bool {
        self.short.get().is_some()
    }

    /// Sends `packed` (which produces `replies` replies) and, when replicas
    /// are wanted, has them confirm it; returns the write's own replies
    /// once enough replicas hold it. Too few is [`RedisError::Replicas`]:
    /// the write reached the master but may vanish with it, so the caller
    /// treats it as done but not confirmed (and, being idempotent, does it
    /// again until it is). A reply that is an error is returned as it is:
    /// that write was not applied, whatever the replicas say.
    pub async fn write(
        self: &Rc<Self>,
        redis: &Redis,
        slot: Option<Slot>,
        packed: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, RedisError> {
        if self.wanted == 0 {
            return redis.exec(slot, packed, replies).await;
        }
        let (done, answer) = oneshot::channel();
        self.queue.borrow_mut().push_back(Pending {
            slot,
            packed,
            replies,
            done,
        });
        if !self.driving.replace(true) {
            glommio::spawn_local(self.clone().drive(redis.clone())).detach();
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RedisError::Io("the write was dropped unanswered".into())))
    }

    /// Sends rounds until no write waits.
    async fn drive(self: Rc<Self>, redis: Redis) {
        loop {
            let round = self.next_round(redis.is_cluster());
            if round.is_empty() {
                break;
            }
            self.send_round(&redis, round).await;
        }
        self.driving.set(false);
    }

    /// The writes that go next: the oldest, and those queued behind it
    /// that may share its request (on a cluster, those of its slot).
    fn next_round(&self, cluster: bool) -> Vec<Pending> {
        let mut q = self.queue.borrow_mut();
        let Some(first) = q.pop_front() else {
            return Vec::new();
        };
        let slot = first.slot;
        let mut round = vec![first];
        let mut i = 0;
        while i < q.len() && round.len() < ROUND_MAX {
            if !cluster || q[i].slot == slot {
                round.extend(q.remove(i));
            } else {
                i += 1;
            }
        }
        round
    }

    async fn send_round(&self, redis: &Redis, round: Vec<Pending>) {
        let timeout = match self.short.get() {
            None => Some(WAIT_TIMEOUT_MS),
            Some(_) => {
                let now = Instant::now();
                let due = self
                    .probed
                    .get()
                    .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY);
                if due {
                    self.probed.set(Some(now));
                }
                due.then_some(PROBE_TIMEOUT_MS)
            }
        };
        let slot = round[0].slot;
        let mut packed = Vec::new();
        let mut replies = 0;
        for p in &round {
            packed.extend_from_slice(&p.packed);
            replies += p.replies;
        }
        if let Some(ms) = timeout {
            packed.extend(
                redis::cmd("WAIT")
                    .arg(self.wanted)
                    .arg(ms)
                    .get_packed_command(),
            );
            replies += 1;
        }
        let mut values = match redis.exec(slot, packed, replies).await {
            Ok(v) => v,
            Err(e) => {
                for p in round {
                    let _ = p.done.send(Err(e.clone()));
                }
                return;
            }
        };
        let confirmed = match timeout {
            Some(_) => {
                let wait = values.pop().unwrap_or(Value::Nil);
                // The writes ran whatever `WAIT` answered: an answer that
                // is not a count confirms nothing, and undoes nothing.
                self.check(&wait).map_err(|e| match e {
                    RedisError::Replicas { .. } => e,
                    _ => RedisError::Replicas {
                        acked: 0,
                        wanted: self.wanted,
                    },
                })
            }
            None => Err(RedisError::Replicas {
                acked: self.short.get().unwrap_or(0),
                wanted: self.wanted,
            }),
        };
        let mut values = values.into_iter();
        for p in round {
            let own: Vec<Value> = values.by_ref().take(p.replies).collect();
            let answer = if own.iter().any(|r| matches!(r, Value::ServerError(_))) {
                Ok(own)
            } else {
                confirmed.clone().map(|()| own)
            };
            let _ = p.done.send(answer);
        }
    }

    fn check(&self, reply: &Value) -> Result<(), RedisError> {
        let wanted = self.wanted;
        let acked = match reply {
            Value::Int(n) => (*n).clamp(0, u32::MAX as i64) as u32,
            Value::ServerError(e) => return Err(RedisError::Server(format!("{e:?}"))),
            other => return Err(RedisError::Reply(format!("WAIT answered {other:?}"))),
        };
        let short = acked < wanted;
        let was = self.short.replace(short.then_some(acked)).is_some();
        if short != was {
            if short {
                tracing::warn!(
                    acked,
                    wanted,
                    "too few redis replicas confirm writes; writes go unconfirmed"
                );
            } else {
                tracing::info!(acked, wanted, "redis replicas confirm writes again");
            }
        }
        if short {
            return Err(RedisError::Replicas { acked, wanted });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_answer_is_enough_or_a_shortfall() {
        let r = Replicas::new(2);
        assert_eq!(r.check(&Value::Int(2)), Ok(()));
        assert_eq!(r.check(&Value::Int(3)), Ok(()));
        assert_eq!(
            r.check(&Value::Int(1)),
            Err(RedisError::Replicas {
                acked: 1,
                wanted: 2
            })
        );
        assert!(r.short());
        assert!(matches!(r.check(&Value::Nil), Err(RedisError::Reply(_))));
    }
}
