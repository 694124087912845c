//! A gate for log lines about limits that act on strangers' input: at most
//! one line per second per gate, so a flood cannot flood the logs, and each
//! line says how many events went unlogged since the last.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// One gate; not shared across threads (each shard and the admin thread
/// keep their own).
#[derive(Debug, Default)]
pub struct LogGate(Cell<(Option<Instant>, u64)>);

impl LogGate {
    /// Whether a line may be written now; returns the events left unlogged
    /// since the last line.
    pub fn pass(&self) -> Option<u64> {
        self.pass_at(Instant::now())
    }

    fn pass_at(&self, now: Instant) -> Option<u64> {
        let (last, skipped) = self.0.get();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.0.set((last, skipped + 1));
            return None;
        }
        self.0.set((Some(now), 0));
        Some(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_skipped() {
        let g = LogGate::default();
        let t = Instant::now();
        assert_eq!(g.pass_at(t), Some(0));
        assert_eq!(g.pass_at(t + Duration::from_millis(10)), None);
        assert_eq!(g.pass_at(t + Duration::from_millis(999)), None);
        assert_eq!(g.pass_at(t + Duration::from_millis(1000)), Some(2));
        assert_eq!(g.pass_at(t + Duration::from_millis(1500)), None);
    }
}
