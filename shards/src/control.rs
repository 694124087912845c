//! Control messages from the control thread (signals, admin) to one shard.
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

/// The sending half, kept by the control thread. Cheap to clone.
#[derive(Debug)]
pub struct ControlSender {
    tx: Sender<Control>,
    wake: StdUnixStream,
}

impl ControlSender {
    /// Queues `msg` and wakes the shard. Fails only when the shard is gone.
    pub fn send(&self, msg: Control) -> io::Result<()> {
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
pub struct PendingReceiver {
    rx: Receiver<Control>,
    wake: StdUnixStream,
}

impl PendingReceiver {
    /// Binds the receiver to the current glommio executor.
    pub fn into_async(self) -> ControlReceiver {
        // SAFETY: the fd comes from a live std UnixStream that we give up here.
        let wake = unsafe { glommio::net::UnixStream::from_raw_fd(self.wake.into_raw_fd()) };
        ControlReceiver { rx: self.rx, wake }
    }
}

/// The receiving half, owned by one shard.
#[derive(Debug)]
pub struct ControlReceiver {
    rx: Receiver<Control>,
    wake: glommio::net::UnixStream,
}

impl ControlReceiver {
    /// Waits for the next control message; `None` when the sender is gone.
    pub async fn recv(&mut self) -> Option<Control> {
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

const CONTROL_QUEUE: usize = 16;

/// A connected control pair.
pub fn channel() -> io::Result<(ControlSender, PendingReceiver)> {
    let (a, b) = StdUnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    // Control is rare (a drain, a stop); a small bound keeps a stuck shard from
    // piling up messages forever.
    let (tx, rx) = crossbeam_channel::bounded(CONTROL_QUEUE);
    Ok((
        ControlSender { tx, wake: a },
        PendingReceiver { rx, wake: b },
    ))
}
