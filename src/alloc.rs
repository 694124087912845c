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
//!
//! And [`Malloc`] is the global allocator: mimalloc, reached so that a
//! block lands in its own size class. The `mimalloc` crate's allocator asks
//! for every block through `mi_malloc_aligned`, even at the alignment every
//! mimalloc block has; whenever the size class's current page is full, that
//! call over-allocates by the alignment less one, and the block goes to the
//! next class (an upstream issue, microsoft/mimalloc#889). For a socket
//! server it was one class up for nearly every long-lived block: the socket's
//! 160-byte entry in the 192-byte class, the 80-byte session in the 96-byte
//! class (measured with mimalloc's heap walk, 19,000 idle sockets).

use std::alloc::{GlobalAlloc, Layout};

/// Every mimalloc block is aligned to a word at least; at that alignment or
/// less the plain calls are correct.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc's option id of `purge_delay` (the `mi_option_e` enum of mimalloc
/// v3, which the `mimalloc` crate builds). A unit test checks it by its default.
const PURGE_DELAY: i32 = 15;

extern "C" {
    fn mi_malloc(size: usize) -> *mut u8;
    fn mi_zalloc(size: usize) -> *mut u8;
    fn mi_realloc(p: *mut u8, size: usize) -> *mut u8;
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

/// The process's global allocator: [`mimalloc::MiMalloc`] for blocks that
/// need more than a word's alignment, mimalloc's plain calls for the rest.
pub struct Malloc;

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`,
// inside `MiMalloc::dealloc`, frees blocks of either kind); the plain calls
// are used only where mimalloc's own alignment meets the layout's.
unsafe impl GlobalAlloc for Malloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_malloc(layout.size())
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size())
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr, new_size)
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn mi_usable_size(p: *const u8) -> usize;
    }

    /// Allocates `n` blocks of `layout` through `alloc`, returns each one's
    /// usable size, and frees them.
    fn usable(alloc: &impl GlobalAlloc, layout: Layout, n: usize) -> Vec<usize> {
        // SAFETY: each block is checked for null, measured, and freed with
        // the layout it was asked for.
        unsafe {
            let blocks: Vec<*mut u8> = (0..n).map(|_| alloc.alloc(layout)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            let sizes = blocks.iter().map(|&p| mi_usable_size(p)).collect();
            for p in blocks {
                alloc.dealloc(p, layout);
            }
            sizes
        }
    }

    #[test]
    fn a_block_stays_in_its_size_class_past_the_first_page() {
        // 2,000 blocks of 160 bytes fill several 64 KiB pages of the class.
        let layout = Layout::from_size_align(160, 8).unwrap();
        let sizes = usable(&Malloc, layout, 2_000);
        assert!(sizes.iter().all(|&s| s == 160), "{:?}", sizes.iter().max());
        // The reason for Malloc: the crate's allocator moves them up a class.
        let theirs = usable(&mimalloc::MiMalloc, layout, 2_000);
        assert!(theirs.iter().any(|&s| s > 160));
    }

    #[test]
    fn blocks_that_need_more_alignment_get_it() {
        for align in [16, 64, 4096] {
            let layout = Layout::from_size_align(24, align).unwrap();
            // SAFETY: checked for null, then freed with its own layout.
            unsafe {
                let p = Malloc.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert!(std::slice::from_raw_parts(p, 24).iter().all(|&b| b == 0));
                let q = Malloc.realloc(p, layout, 5000);
                assert_eq!(q as usize % align, 0);
                Malloc.dealloc(q, Layout::from_size_align(5000, align).unwrap());
            }
        }
    }

    #[test]
    fn realloc_keeps_the_bytes() {
        let layout = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: checked for null, written within size, freed with the
        // layout of its last size.
        unsafe {
            let p = Malloc.alloc(layout);
            assert!(!p.is_null());
            std::ptr::copy_nonoverlapping(b"0123456789".as_ptr(), p, 10);
            let q = Malloc.realloc(p, layout, 100_000);
            assert_eq!(std::slice::from_raw_parts(q, 10), b"0123456789");
            Malloc.dealloc(q, Layout::from_size_align(100_000, 8).unwrap());
        }
    }

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
