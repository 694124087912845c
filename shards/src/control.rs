//! Messages from any thread to one shard: the runtime's own control (drain,
//! stop), and any other kind the service sends its shards the same way.
//!
//! A crossbeam channel carries the message and one byte on a socketpair wakes
//! the shard: glommio cannot wait on a crossbeam channel, but it can read a
//! Unix socket, and the pair works from any thread, including a signal watcher.

use std::io::{self, Write};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use futures_lite::AsyncReadExt;

/// What the control thread can tell a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop accepting, tell every client to go, and be gone by `by`. The
    /// end is fixed where the signal was taken, so a shard that gets the
    /// message late still ends on time.
    Drain { by: Instant },
    /// Stop now: the grace period is over or a second signal came.
    Stop,
}

/// The sending half, kept by the control thread.
#[derive(Debug)]
pub struct ControlSender<T = Control> {
    tx: Sender<T>,
    wake: StdUnixStream,
}

impl<T> ControlSender<T> {
    /// Queues `msg` and wakes the shard. Fails when the shard is gone or its
    /// queue is full; the message is dropped then.
    pub fn send(&self, msg: T) -> io::Result<()> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => {
                io::Error::new(io::ErrorKind::WouldBlock, "shard control queue is full")
            }
            TrySendError::Disconnected(_) => {
                io::Error::new(io::ErrorKind::BrokenPipe, "shard is gone")
            }
        })?;
        // A full socket buffer means wake-ups are already pending: fine to skip.
        match (&self.wake).write(&[1]) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The receiving half before it reaches its shard's thread (Send).
#[derive(Debug)]
pub struct PendingReceiver<T = Control> {
    rx: Receiver<T>,
    wake: StdUnixStream,
}

impl<T> PendingReceiver<T> {
    /// Binds the receiver to the current glommio executor.
    pub fn into_async(self) -> ControlReceiver<T> {
        // SAFETY: the fd comes from a live std UnixStream that we give up here.
        let wake = unsafe { glommio::net::UnixStream::from_raw_fd(self.wake.into_raw_fd()) };
        ControlReceiver { rx: self.rx, wake }
    }
}

/// The receiving half, owned by one shard.
#[derive(Debug)]
pub struct ControlReceiver<T = Control> {
    rx: Receiver<T>,
    wake: glommio::net::UnixStream,
}

impl<T> ControlReceiver<T> {
    /// Waits for the next message; `None` when the sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        let mut buf = [0u8; 64];
        loop {
            match self.rx.try_recv() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            match self.wake.read(&mut buf).await {
                Ok(0) => return self.rx.try_recv().ok(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.rx.try_recv().ok(),
            }
        }
    }
}

/// The runtime's own queue: control is rare (a drain, a stop), and a small
/// bound keeps a stuck shard from piling up messages forever.
pub const CONTROL_QUEUE: usize = 16;

/// A connected pair that queues at most `bound` messages.
pub fn channel<T>(bound: usize) -> io::Result<(ControlSender<T>, PendingReceiver<T>)> {
    let (a, b) = StdUnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::bounded(bound);
    Ok((
        ControlSender { tx, wake: a },
        PendingReceiver { rx, wake: b },
    ))
}
