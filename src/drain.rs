//! A shard's drain, in one place: whether it has begun, by when its
//! connections must be gone, and the wait for the last of them, woken by the
//! connection that leaves last rather than found by polling.
//!
//! Every connection holds a [`Slot`](crate::context::Slot) from its accept to
//! the end of its close (request, upgrade, socket in the table, goodbye), and
//! the slot's count reaching zero is what ends the wait. So one counter covers
//! every phase a connection can be in when the drain begins.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Instant;

/// One shard's drain state; not shared across threads (the process-wide
/// "draining" that probes answer lives in `readiness`).
#[derive(Default)]
pub struct Drain {
    /// Set when the drain begins: sockets must be gone by then.
    deadline: Cell<Option<Instant>>,
    /// The task waiting for the last connection, if any.
    waiter: Cell<Option<Waker>>,
}

impl Drain {
    /// The drain begins; connections must be gone by `deadline`. A second
    /// call keeps the first deadline: a drain is never extended.
    pub fn begin(&self, deadline: Instant) {
        if self.deadline.get().is_none() {
            self.deadline.set(Some(deadline));
        }
    }

    pub fn is_draining(&self) -> bool {
        self.deadline.get().is_some()
    }

    /// When draining connections must be gone; None before the drain.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// The last connection is gone: wakes the wait, if one is waiting.
    pub fn wake(&self) {
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Resolves once `gone()` holds, checked at once and then each time
    /// [`wake`](Self::wake) is called. One waiter at a time: the shard's
    /// drain is the only one.
    pub async fn until(&self, gone: impl Fn() -> bool) {
        poll_fn(|cx| {
            if gone() {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    #[test]
    fn the_first_deadline_holds() {
        let d = Drain::default();
        assert!(!d.is_draining());
        assert_eq!(d.deadline(), None);
        let t = Instant::now();
        d.begin(t);
        d.begin(t + Duration::from_secs(5));
        assert!(d.is_draining());
        assert_eq!(d.deadline(), Some(t));
    }

    /// Counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_wait_is_woken_by_wake_and_ends_when_nothing_is_left() {
        let d = Drain::default();
        let open = Cell::new(2u32);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut wait = pin!(d.until(|| open.get() == 0));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // One leaves: the wait is woken, looks, and waits on.
        open.set(1);
        d.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // The last leaves.
        open.set(0);
        d.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // Nothing waits now: a wake is a no-op.
        d.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}
