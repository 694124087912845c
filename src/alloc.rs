//! The process allocator: mimalloc, set up for many mostly idle sockets.
//!
//! Two of mimalloc's defaults cost a socket server resident memory that it
//! never uses again (measured with `shardcast-bench idle`, 10,000 sockets on
//! one shard: 5.0-7.0 KB of RSS per socket with the defaults, 3.5 KB with
//! both changes, for 3.4 KB of live heap per socket):
//! - Freed pages are returned to the kernel only after a delay (1 s), and the
//!   delayed purge runs inside later allocator calls, which an idle shard does
//!   not make: the memory of a connect storm's handshakes stayed resident.
//!   Purging at once costs an madvise when a page empties, which connection
//!   churn reuses before long anyway.
//! - Transparent huge pages: mimalloc asks for them on its arenas, and a
//!   2 MiB page is resident as soon as one byte of it is touched (19 MB RSS at
//!   start instead of 7 MB).

// Links mimalloc's C library into every binary and test that uses this module.
use mimalloc as _;

/// mimalloc's option id of `purge_delay` (the `mi_option_e` enum of mimalloc
/// v3, which the `mimalloc` crate builds). A unit test checks it by its default.
const PURGE_DELAY: i32 = 15;

extern "C" {
    fn mi_option_set(option: i32, value: libc::c_long);
    #[cfg(test)]
    fn mi_option_get(option: i32) -> libc::c_long;
}

/// Call first thing in `main`, before threads start.
pub fn tune() {
    // SAFETY: mi_option_set takes plain integers; the option is read each
    // time a page is freed, so setting it after mimalloc started is fine.
    unsafe { mi_option_set(PURGE_DELAY, 0) };
    // Huge pages off for the whole process, for the mappings still to come;
    // the kernel setting is read at each page fault.
    // SAFETY: PR_SET_THP_DISABLE takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_id_is_the_purge_delay() {
        // Its documented default is 1000 (ms), no neighbour's is; the one
        // before it is eager_commit_delay (1), the one after use_numa_nodes (0).
        // SAFETY: plain integers in and out.
        unsafe {
            assert_eq!(mi_option_get(PURGE_DELAY), 1000);
            assert_eq!(mi_option_get(PURGE_DELAY - 1), 1);
            assert_eq!(mi_option_get(PURGE_DELAY + 1), 0);
        }
    }
}
