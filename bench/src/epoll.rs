//! A minimal edge-triggered epoll. The generator needs nanosecond wake-ups for
//! open-loop schedules, which `epoll_pwait2` gives and the usual wrappers
//! (millisecond `epoll_wait`) do not.

use std::io;
use std::os::fd::RawFd;

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const HUP: u32 = (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;
pub const ERR: u32 = libc::EPOLLERR as u32;
const ET: u32 = libc::EPOLLET as u32;

pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    /// Watches `fd` for input and output, edge-triggered, under `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, IN | OUT | HUP | ET, token)
    }

    /// Watches `fd` for input only (a pipe), edge-triggered.
    pub fn add_input(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, IN | HUP | ET, token)
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev outlives the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits at most `timeout_ns` (None: forever) and fills `events`.
    /// Closing an fd removes it from the set, so there is no `delete`.
    pub fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout_ns: Option<u64>,
    ) -> io::Result<()> {
        let ts = timeout_ns.map(|ns| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        });
        let tp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        events.clear();
        // SAFETY: the buffer has `capacity` slots; the kernel writes at most that
        // many and returns how many, which becomes the length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.fd,
                events.as_mut_ptr(),
                events.capacity() as libc::c_int,
                tp,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: the kernel initialised the first n entries.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn wakes_for_input_and_times_out_without() {
        let ep = Epoll::new().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        ep.add_input(a.as_raw_fd(), 7).unwrap();
        let mut evs = Vec::with_capacity(8);
        let t = crate::sys::now_ns();
        ep.wait(&mut evs, Some(2_000_000)).unwrap();
        assert!(evs.is_empty());
        assert!(crate::sys::now_ns() - t >= 2_000_000);
        b.write_all(b"x").unwrap();
        ep.wait(&mut evs, Some(1_000_000_000)).unwrap();
        assert_eq!(evs.len(), 1);
        let (token, events) = (evs[0].u64, evs[0].events);
        assert_eq!(token, 7);
        assert_ne!(events & IN, 0);
    }
}
