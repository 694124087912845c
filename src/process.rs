//! This process as the kernel sees it, read from /proc when `/metrics` is
//! scraped: resident memory, CPU time, open descriptors and their limit,
//! start time. Nothing here is touched by the shards.

use std::fs;

/// The standard `process_*` figures of the Prometheus client libraries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
}

/// Reads the figures; a field that cannot be read stays 0.
pub fn read() -> Figures {
    let ticks = sysconf(libc::_SC_CLK_TCK, 100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE, 4096);
    let mut f = Figures::default();
    if let Some(stat) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
    {
        f.cpu_seconds = (stat.utime + stat.stime) as f64 / ticks;
        let boot = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s))
            .unwrap_or(0);
        f.start_time_seconds = boot as f64 + stat.starttime as f64 / ticks;
    }
    if let Some(pages) = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
    {
        f.resident_bytes = pages * page;
    }
    f.open_fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        f.max_fds = rl.rlim_cur;
    }
    f
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// Fields of /proc/<pid>/stat, counted after the command name, which sits
/// in parentheses and may itself hold spaces and parentheses.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    // After ')': field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(Stat {
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

fn parse_btime(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as u64
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let s = "77 (shard (1) x) S 1 77 77 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 3 0 \
                 987654 123456 300 18446744073709551615";
        assert_eq!(
            parse_stat(s),
            Some(Stat {
                utime: 250,
                stime: 40,
                starttime: 987654
            })
        );
        assert_eq!(parse_stat("nonsense"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1763800000\nprocesses 9\n"),
            Some(1763800000)
        );
    }

    #[test]
    fn this_process_reads_sensibly() {
        let f = read();
        assert!(f.resident_bytes > 1 << 20, "{f:?}");
        assert!(f.open_fds >= 3 && f.open_fds < f.max_fds, "{f:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            f.start_time_seconds > now - 3600.0 && f.start_time_seconds <= now + 1.0,
            "{f:?}"
        );
    }
}
