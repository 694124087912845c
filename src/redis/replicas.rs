//! `--redis-min-replicas`: the `WAIT` that follows a write in the same round
//! trip, and what its answer means. One per shard, shared by every writer
//! of the shard (sessions, broadcast history), so a shortfall is logged
//! once when it starts and once when it ends.

use std::cell::Cell;

use super::{Redis, RedisError, Slot, Value};

/// How long a write waits for its replicas before it is taken as
/// unconfirmed. Short, because a shard has one command connection and
/// `WAIT` holds the connection's later commands too.
const WAIT_TIMEOUT_MS: u64 = 1000;

pub struct Replicas {
    /// Replicas that must confirm a write; 0: the master's reply is enough.
    wanted: u32,
    /// Whether the last write found too few.
    short: Cell<bool>,
}

impl Replicas {
    pub fn new(wanted: u32) -> Self {
        Self {
            wanted,
            short: Cell::new(false),
        }
    }

    /// Sends `packed` (which produces `replies` replies) followed, when
    /// replicas are wanted, by `WAIT`; returns the write's own replies once
    /// enough replicas hold it. Too few is [`RedisError::Replicas`]: the
    /// write reached the master but may vanish with it, so the caller treats
    /// it as not done (and, being idempotent, does it again).
    pub async fn write(
        &self,
        redis: &Redis,
        slot: Option<Slot>,
        mut packed: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, RedisError> {
        if self.wanted == 0 {
            return redis.exec(slot, packed, replies).await;
        }
        packed.extend(
            redis::cmd("WAIT")
                .arg(self.wanted)
                .arg(WAIT_TIMEOUT_MS)
                .get_packed_command(),
        );
        let mut v = redis.exec(slot, packed, replies + 1).await?;
        let wait = v.pop().unwrap_or(Value::Nil);
        self.check(&wait)?;
        Ok(v)
    }

    fn check(&self, reply: &Value) -> Result<(), RedisError> {
        let wanted = self.wanted;
        let acked = match reply {
            Value::Int(n) => (*n).clamp(0, u32::MAX as i64) as u32,
            Value::ServerError(e) => return Err(RedisError::Server(format!("{e:?}"))),
            other => return Err(RedisError::Reply(format!("WAIT answered {other:?}"))),
        };
        let short = acked < wanted;
        if short != self.short.replace(short) {
            if short {
                tracing::warn!(
                    acked,
                    wanted,
                    "too few redis replicas confirm writes; writes wait"
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
        assert!(r.short.get());
        assert!(matches!(r.check(&Value::Nil), Err(RedisError::Reply(_))));
    }
}
