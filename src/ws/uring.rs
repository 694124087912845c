//! The io_uring side of the shard's transport: one ring per plane, a ring of
//! receive buffers that every socket of the plane shares (an idle socket
//! holds none), multishot receives, sends, cancels, and the completions.
//!
//! This file knows operations and buffers, nothing of sockets' state: the
//! plane (`ws::plane`) says what to submit and decides what a completion
//! means. Operations are tagged with the connection id and their kind, so a
//! completion finds its socket by the same key as the table.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

// The sizes below are what the process pays whatever its sockets: the
// kernel hands out receive buffers in ring order and completions fill the
// ring in turn, so every page of both is touched before long. They are kept
// to about 1 MiB a plane; a burst past them costs time, never bytes: a
// receive that finds no buffer stops (`ENOBUFS`) and is armed again with its
// bytes still in the socket, and completions past the ring wait in the
// kernel (`IORING_FEAT_NODROP`).

/// Submission slots (64 bytes each); a longer batch is submitted in parts.
const SQ_ENTRIES: u32 = 1024;
/// Completion slots (16 bytes each): a fan-out to 10,000 sockets reaps
/// about as many send completions.
const CQ_ENTRIES: u32 = 8192;
/// Receive buffers shared by the plane's sockets (a power of two): far more
/// than the sockets that complete a receive between two reaps.
const BUFFERS: u16 = 256;
/// Bytes per receive buffer: the most one completion carries (a message
/// longer than that streams through several).
const BUFFER_BYTES: usize = 2048;
/// The buffer group of the plane's receives.
const GROUP: u16 = 0;
/// `IORING_ENTER_GETEVENTS`: the enter runs the kernel's pending completion
/// work (the crate keeps its `sys` constants private).
const GETEVENTS: u32 = 1;

/// What an operation was, in the low byte of its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Recv = 1,
    Send = 2,
    /// A cancel's own completion: nothing to do.
    Cancel = 3,
}

impl Op {
    fn tag(self, conn: u64) -> u64 {
        conn << 8 | self as u64
    }
}

/// One completion, copied out of the ring.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub conn: u64,
    pub op: Op,
    pub res: i32,
    pub flags: u32,
}

impl Done {
    /// The receive buffer it filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether a multishot operation goes on after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// Why the ring could not be made: the kernel lacks something, or
/// `kernel.io_uring_disabled` forbids it.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("io_uring_setup: {0}")]
    Setup(io::Error),
    #[error("io_uring buffer ring: {0}")]
    Buffers(io::Error),
    #[error("io_uring lacks {0}")]
    Missing(&'static str),
}

/// Page-aligned memory from `mmap`, unmapped when dropped.
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

impl Mapped {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped by `new` with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The plane's ring and its receive buffers.
pub struct Ring {
    // Dropped first: the kernel lets go of the buffer ring with the ring.
    ring: IoUring,
    /// The buffer ring's entries (shared with the kernel).
    entries: Mapped,
    /// The buffers themselves; the kernel writes a buffer only while it is
    /// in the buffer ring, and the plane reads it only after a completion
    /// took it out and before it is given back.
    buffers: Box<[UnsafeCell<u8>]>,
    /// Our copy of the buffer ring's tail.
    tail: u16,
}

impl Ring {
    /// A ring for one shard: one thread submits (`SINGLE_ISSUER`), and the
    /// kernel's completion work runs when the thread next enters the kernel
    /// rather than interrupting it (`COOP_TASKRUN`, flagged to us by
    /// `TASKRUN_FLAG`). Every buffer starts in the buffer ring.
    pub fn new() -> Result<Self, RingError> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .map_err(RingError::Setup)?;
        if !ring.params().is_feature_nodrop() {
            return Err(RingError::Missing("IORING_FEAT_NODROP"));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(RingError::Setup)?;
        for (code, name) in [
            (opcode::Recv::CODE, "IORING_OP_RECV"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                return Err(RingError::Missing(name));
            }
        }
        let entries =
            Mapped::new(usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>())
                .map_err(RingError::Buffers)?;
        // Zeroed by the allocator's fresh mapping, so no page is touched
        // before the kernel first fills it.
        let zeroed = vec![0u8; usize::from(BUFFERS) * BUFFER_BYTES].into_boxed_slice();
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8` (repr(transparent)).
        let buffers = unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [UnsafeCell<u8>]) };
        // SAFETY: the entries stay mapped until the ring is gone (field order).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries.ptr as u64, BUFFERS, GROUP, 0)
                .map_err(RingError::Buffers)?;
        }
        let mut ring = Self {
            ring,
            entries,
            buffers,
            tail: 0,
        };
        for bid in 0..BUFFERS {
            ring.put_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The descriptor to wait on: readable while completions wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// A multishot receive on `fd` into the shared buffers.
    pub fn recv(&mut self, conn: u64, fd: RawFd) {
        let sqe = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(Op::Recv.tag(conn));
        self.push(&sqe);
    }

    /// A send of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The bytes must stay where they are, unchanged, until the send's
    /// completion.
    pub unsafe fn send(&mut self, conn: u64, fd: RawFd, ptr: *const u8, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Op::Send.tag(conn));
        self.push(&sqe);
    }

    /// Cancels the socket's operation of kind `op`; it completes with
    /// `-ECANCELED` (or with what it did, if it finished first).
    pub fn cancel(&mut self, conn: u64, op: Op) {
        let sqe = opcode::AsyncCancel::new(op.tag(conn))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(Op::Cancel.tag(conn));
        self.push(&sqe);
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: what the entry points at is the caller's to keep.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            // Full: what is queued goes now, and the entry after it.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Submits what is queued, and runs the kernel's pending completion
    /// work, in one `io_uring_enter` (none when there is neither).
    pub fn submit(&mut self) {
        // What is not submitted is what the queue holds: entries a refused
        // call left there go with the next one.
        let idle = {
            let sq = self.ring.submission();
            sq.is_empty() && !sq.taskrun()
        };
        if idle {
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring submit failed");
                    return;
                }
            }
        }
    }

    /// Enters the kernel to run its pending completion work (and submit
    /// what is queued).
    fn poll(&mut self) {
        let queued = self.ring.submission().len() as u32;
        // SAFETY: no argument is passed.
        let _ = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(queued, 0, GETEVENTS, None)
        };
    }

    /// Up to `most` completions, in order. When the ring is empty but the
    /// kernel holds more (completions past the ring's size, or completion
    /// work not run yet), one `io_uring_enter` brings them in first: the
    /// ring's descriptor stays readable while the kernel holds them, and a
    /// waiter that only looked at the ring would wake for nothing again and
    /// again.
    pub fn completions(&mut self, into: &mut Vec<Done>, most: usize) {
        if self.ring.completion().is_empty() {
            let held = {
                let sq = self.ring.submission();
                sq.cq_overflow() || sq.taskrun()
            };
            if held {
                self.poll();
            }
        }
        for cqe in self.ring.completion().take(most) {
            let tag = cqe.user_data();
            let op = match tag & 0xFF {
                1 => Op::Recv,
                2 => Op::Send,
                _ => Op::Cancel,
            };
            into.push(Done {
                conn: tag >> 8,
                op,
                res: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// The first `len` bytes of receive buffer `bid`, which a completion
    /// took out of the buffer ring.
    ///
    /// # Safety
    /// The slice must be dropped before the buffer is given back
    /// ([`Ring::give_back`]) and before the ring is.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn buffer<'a>(&self, bid: u16, len: usize) -> &'a mut [u8] {
        let start = usize::from(bid % BUFFERS) * BUFFER_BYTES;
        let len = len.min(BUFFER_BYTES);
        // SAFETY: in bounds; the kernel does not write a buffer outside the
        // buffer ring, and the plane holds one buffer at a time.
        unsafe { std::slice::from_raw_parts_mut(self.buffers[start].get(), len) }
    }

    /// Buffer `bid` goes back to the kernel.
    pub fn give_back(&mut self, bid: u16) {
        self.put_back(bid);
        self.publish();
    }

    fn put_back(&mut self, bid: u16) {
        let mask = BUFFERS - 1;
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the slot is in the mapping; the kernel reads it only once
        // the tail is published past it.
        unsafe {
            let entry = &mut *base.add(usize::from(self.tail & mask));
            entry.set_addr(self.buffers[usize::from(bid) * BUFFER_BYTES].get() as u64);
            entry.set_len(BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the tail lives in the first entry; the kernel reads it
        // with acquire ordering.
        unsafe {
            let tail = types::BufRingEntry::tail(base) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn wait(ring: &mut Ring, n: usize) -> Vec<Done> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < n {
            assert!(std::time::Instant::now() < deadline, "got only {got:?}");
            ring.poll();
            ring.completions(&mut got, 64);
        }
        got
    }

    #[test]
    fn a_multishot_receive_fills_shared_buffers_and_goes_on() {
        let Ok(mut ring) = Ring::new() else {
            eprintln!("io_uring unavailable here: nothing to test");
            return;
        };
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        ring.recv(9, ours.as_raw_fd());
        ring.submit();
        for word in [&b"one"[..], b"two"] {
            theirs.write_all(word).unwrap();
            let done = wait(&mut ring, 1);
            assert_eq!((done[0].conn, done[0].op), (9, Op::Recv));
            assert!(done[0].more(), "the receive stays armed");
            let bid = done[0].buffer().expect("a buffer was picked");
            // SAFETY: given back on the next line.
            assert_eq!(unsafe { ring.buffer(bid, done[0].res as usize) }, word);
            ring.give_back(bid);
        }
        ring.cancel(9, Op::Recv);
        ring.submit();
        let done = wait(&mut ring, 1);
        assert_eq!(done[0].res, -libc::ECANCELED);
        assert!(!done[0].more());
        let msg = b"reply";
        // SAFETY: `msg` is static.
        unsafe { ring.send(9, ours.as_raw_fd(), msg.as_ptr(), msg.len()) };
        ring.submit();
        let done = wait(&mut ring, 1);
        assert_eq!((done[0].op, done[0].res), (Op::Send, 5));
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, msg);
    }
}
