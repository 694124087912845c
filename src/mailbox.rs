//! A socket's inbox: what its shard asks it to send or do (heartbeats,
//! broadcasts, drain, kick), bounded so a slow reader cannot make the shard
//! buffer without limit.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Something the shard tells one socket.
#[derive(Debug, Clone)]
pub enum Note {
    /// An encoded frame to write as is (shared by every socket of the shard).
    Frame(Rc<[u8]>),
    /// The server drains: say goodbye and close with 1001.
    Drain,
    /// The session was deleted: close with 1008.
    Kick,
    /// Frames piled up past the bound: close with 1008.
    Overflow,
    /// Silent for half the idle timeout: send a Ping.
    Ping,
    /// Silent for the whole idle timeout: say goodbye and close with 1001.
    Idle,
}

/// Single-consumer queue with a bound on frames (not on control notes).
pub struct Mailbox {
    queue: RefCell<VecDeque<Note>>,
    waker: Cell<Option<Waker>>,
    cap: usize,
    overflowed: Cell<bool>,
    /// When the socket last received anything from its peer.
    heard: Cell<std::time::Instant>,
    /// Whether a Ping went out since then.
    pinged: Cell<bool>,
}

impl Mailbox {
    pub fn new(cap: usize) -> Rc<Self> {
        Rc::new(Self {
            queue: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            cap,
            overflowed: Cell::new(false),
            heard: Cell::new(std::time::Instant::now()),
            pinged: Cell::new(false),
        })
    }

    /// The socket received bytes from its peer at `at`.
    #[inline]
    pub fn heard(&self, at: std::time::Instant) {
        self.heard.set(at);
        self.pinged.set(false);
    }

    /// What the idle check asks of this socket at `now`, if anything; at
    /// most one Ping per silence.
    pub fn idle_note(&self, now: std::time::Instant, timeout: std::time::Duration) -> Option<Note> {
        let silent = now.saturating_duration_since(self.heard.get());
        if silent >= timeout {
            Some(Note::Idle)
        } else if silent >= timeout / 2 && !self.pinged.replace(true) {
            Some(Note::Ping)
        } else {
            None
        }
    }

    /// Queues a note; returns false when a frame did not fit (the socket will
    /// close itself as a slow reader).
    pub fn push(&self, note: Note) -> bool {
        let mut q = self.queue.borrow_mut();
        if matches!(note, Note::Frame(_)) && q.len() >= self.cap {
            self.overflowed.set(true);
            drop(q);
            self.wake();
            return false;
        }
        q.push_back(note);
        drop(q);
        self.wake();
        true
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Takes the next note, without waiting.
    pub fn try_next(&self) -> Option<Note> {
        if self.overflowed.replace(false) {
            return Some(Note::Overflow);
        }
        let mut q = self.queue.borrow_mut();
        let note = q.pop_front();
        if q.is_empty() && q.capacity() > 16 {
            // Give back what a burst grew.
            q.shrink_to(0);
        }
        note
    }

    /// Waits for the next note.
    pub async fn next(&self) -> Note {
        poll_fn(|cx| match self.try_next() {
            Some(n) => Poll::Ready(n),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_but_controls_always_fit() {
        let m = Mailbox::new(2);
        let f: Rc<[u8]> = Rc::from(&b"x"[..]);
        assert!(m.push(Note::Frame(f.clone())));
        assert!(m.push(Note::Frame(f.clone())));
        assert!(!m.push(Note::Frame(f.clone())));
        assert!(m.push(Note::Drain));
        assert!(matches!(m.try_next(), Some(Note::Overflow)));
        assert!(matches!(m.try_next(), Some(Note::Frame(_))));
        assert!(matches!(m.try_next(), Some(Note::Frame(_))));
        assert!(matches!(m.try_next(), Some(Note::Drain)));
        assert!(m.try_next().is_none());
    }
}
