//! What the generator reads from and asks of the kernel: another process's CPU
//! time and RSS from /proc, the monotonic clock, CPU pinning, the fd limit and
//! timer slack.

use std::io;

/// CPU time and resident memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    /// utime + stime over all threads, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` through `procfs`, the parser the service's own
/// process metrics use.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = stat(pid)?;
    Ok(ProcSample {
        cpu_ns: (stat.utime + stat.stime) * (1_000_000_000 / procfs::ticks_per_second()),
        rss_bytes: stat.rss * procfs::page_size(),
    })
}

fn stat(pid: u32) -> io::Result<procfs::process::Stat> {
    let pid = i32::try_from(pid).map_err(io::Error::other)?;
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(io::Error::other)
}

/// CPU time (user + system, ns) of this process, or of its waited-for children.
pub fn rusage_ns(children: bool) -> u64 {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: ru is a valid out pointer of the right type.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut ru) != 0 {
            return 0;
        }
        ru
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Whether `pid` still runs: it exists and is not a zombie waiting for its parent.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_ok_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Monotonic nanoseconds since an arbitrary start, the same in every process
/// on the machine, so workers and the coordinator can compare their stamps.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Parses a CPU list such as `1`, `0,2` or `0-3`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a CPU number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err("the CPU list is empty".into());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Pins the calling process (and what it spawns later) to `cpus`.
pub fn pin_to(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for ids < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "CPU id too high",
                ));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one and returns it.
pub fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// Asks for 1 ns timer slack, so that a wait of 40 µs wakes after 40 µs and
/// not after the default 50 µs of slack: open-loop sends keep their schedule.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
        let before = rusage_ns(false);
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(rusage_ns(false) > before);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert_eq!(parse_cpu_list("2,0-1,1"), Ok(vec![0, 1, 2]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
