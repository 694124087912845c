//! Reconnect backoff for a shard's Redis connections: doubling from 50 ms to
//! 2 s, with up to half again of random jitter so that shards (and nodes)
//! that lost Redis together do not all knock at the same instant.

use std::time::Duration;

const MIN: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(2);

/// The delay before the next attempt; reset it once a connection is up.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN }
    }
}

impl Backoff {
    /// The next attempt may come soon again.
    pub fn reset(&mut self) {
        self.next = MIN;
    }

    /// The base delay for this attempt; the one after it doubles, up to `MAX`.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX);
        d
    }

    /// Sleeps this attempt's delay plus its jitter.
    pub async fn wait(&mut self) {
        let base = self.step();
        let jitter = rand::random_range(0..=base.as_millis() as u64 / 2);
        glommio::timer::sleep(base + Duration::from_millis(jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over_on_reset() {
        let mut b = Backoff::default();
        let steps: Vec<u128> = (0..8).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.step(), MIN);
    }
}
