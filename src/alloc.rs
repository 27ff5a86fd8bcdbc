//! The process's allocator: mimalloc, asked for alignment only when a layout needs more than
//! every mimalloc block has anyway.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to `mi_malloc_aligned`.
//! mimalloc 3 serves that from its fast path only for blocks up to 1 KiB (and naturally
//! aligned power-of-two sizes); any other block, however small its alignment, takes the
//! over-allocating path, which also marks the block's page as holding interior pointers,
//! so that every free on the page goes the slow way too. A new order's graph (room for
//! twelve events, about 3 KB) and every encoded state (about 1 KB) are such blocks. Plain
//! `mi_malloc` already aligns every block of more than 8 bytes to 16, and smaller ones to 8:
//! all that almost every Rust type asks for.
//!
//! The binary, the examples and the benchmarks declare it as their global allocator; with
//! `libmimalloc-sys`'s `override` feature mimalloc is also the process's `malloc`, so that
//! librdkafka and RocksDB allocate with it. The binary and the pipeline benchmark's
//! examples also call [`keep_memory`] first thing.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long, c_void};

use libmimalloc_sys as mi;

/// mimalloc as Rust's global allocator: `#[global_allocator] static A: Allocator = Allocator;`.
pub struct Allocator;

/// True when a plain (unaligned) mimalloc call gives `size` bytes the alignment `align`.
/// On 64-bit targets mimalloc rounds blocks of more than a word up to two words
/// (`MI_ALIGN2W`, as `MI_MAX_ALIGN_SIZE` is 16): a block of over 8 bytes is aligned to 16,
/// a smaller one to 8. The same rule as the standard library's allocators over `malloc`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= 16 && align <= size
}

// SAFETY: every pointer returned comes from mimalloc with at least the layout's size and
// alignment (see `plain`), or is null; `mi_free` and `mi_realloc*` take any mimalloc block.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; the size is non-zero, as `GlobalAlloc` guarantees.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new size is non-zero.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc 3's `mi_option_purge_delay`: the place of the option in its `mi_option_t`,
/// which `libmimalloc-sys` does not name (checked against the option's documented default
/// in the tests).
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// How long freed memory stays with the process before mimalloc gives it back to the OS.
pub const PURGE_DELAY_MS: c_long = 10_000;

unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// Keeps the memory a processor frees to reuse it, rather than handing it back to the OS
/// and faulting it in, zeroed, again: for a process that frees and allocates about as much
/// at every transaction (a transaction's graphs, encoded states, librdkafka's records and
/// RocksDB's write batches). Call it first thing in `main`.
///
/// - mimalloc gives freed memory back (`MADV_DONTNEED`) after its `purge_delay`, 1 s by
///   default, and later transactions fault it in again; now after [`PURGE_DELAY_MS`].
/// - mimalloc asks for transparent huge pages (`MADV_HUGEPAGE`), so each of those faults
///   zeroes 2 MiB, and a purge of part of a huge page splits it. Off for the process
///   (`PR_SET_THP_DISABLE`, what mimalloc's own `allow_thp = 0` does).
///
/// The kernel's page clearing was about a tenth of the processing threads' samples; with
/// both, the process's CPU in a benchmark run fell by a tenth and its peak memory by about
/// 60 MiB (BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` or `MIMALLOC_ALLOW_THP` in the
/// environment, set by an operator, are left as they are.
pub fn keep_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option mimalloc reads at each purge; any value is valid.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        no_huge_pages();
    }
}

fn no_huge_pages() {
    // SAFETY: a process-wide flag, no pointer arguments; an error (an old kernel) leaves
    // huge pages on, which is only slower.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_for_the_process() {
        let thp = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
            line.expect("a kernel that reports THP_enabled").to_owned()
        };
        no_huge_pages(); // not `keep_memory`: the test below reads the purge delay's default
        assert_eq!(thp().split_whitespace().nth(1), Some("0"), "{}", thp());
    }

    #[test]
    fn the_purge_delay_option_is_mimallocs_purge_delay() {
        // mimalloc 3 has `purge_delay` at 1000 ms by default, and no other option with that
        // default: this fails if `MI_OPTION_PURGE_DELAY` names another option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an option.
            assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        }
    }

    #[test]
    fn every_block_has_the_alignment_its_layout_asks_for() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [
                1, 3, 8, 12, 16, 24, 40, 48, 100, 1000, 1025, 3000, 5000, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let bigger = Layout::from_size_align(size * 3, align).unwrap();
                // Many blocks of each layout: consecutive blocks of a size class differ in
                // alignment (8-byte blocks alternate between 8 and 16).
                for _ in 0..32 {
                    // SAFETY: non-zero sizes; each block is freed once, with its layout.
                    unsafe {
                        let p = Allocator.alloc(layout);
                        assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                        p.write_bytes(0xab, size);
                        let z = Allocator.alloc_zeroed(layout);
                        assert_eq!(z as usize % align, 0, "zeroed: size {size}, align {align}");
                        assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                        let grown = Allocator.realloc(p, layout, bigger.size());
                        assert_eq!(
                            grown as usize % align,
                            0,
                            "realloc: size {size}, align {align}"
                        );
                        let kept = std::slice::from_raw_parts(grown, size);
                        assert!(kept.iter().all(|&b| b == 0xab), "realloc keeps the bytes");
                        Allocator.dealloc(grown, bigger);
                        Allocator.dealloc(z, layout);
                    }
                }
            }
        }
    }
}
