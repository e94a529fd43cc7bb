//! Live heap bytes for the `memory` scenario: the binary's global allocator is the system
//! allocator plus a byte counter that counts only while a [`Meter`] lives.
//!
//! Written here rather than taken from a crate (`cap`, `stats_alloc`): those count every
//! allocation of the process all the time, and one shared atomic per allocation and free
//! cost `mempair`'s keyed-mutex baseline about 20 ns of its 115 ns (the memory driver's pair
//! allocated nothing then, so the ratio moved) and would move a cache line between the two
//! threads of `memthreads` on every allocation. Outside a measurement, an allocation here
//! costs one relaxed load of a flag that nothing writes.

// Implementing `GlobalAlloc` takes `unsafe`; the workspace denies it everywhere else.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn count(bytes: isize) {
    if COUNTING.load(Relaxed) {
        LIVE.fetch_add(bytes, Relaxed);
    }
}

// SAFETY: every method passes its arguments to `System` unchanged and returns its result;
// the counting beside it neither allocates nor panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (so `System`) gave out, with its layout.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s size rules.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Counts heap bytes allocated minus bytes freed from its start until it is dropped. One
/// at a time; frees of blocks allocated before the start count too, so nothing else of the
/// process should run meanwhile.
pub struct Meter(());

impl Meter {
    /// Starts counting from zero.
    pub fn start() -> Meter {
        LIVE.store(0, Relaxed);
        COUNTING.store(true, Relaxed);
        Meter(())
    }

    /// Bytes allocated and not freed since the start, as the program asked for them (the
    /// system allocator's own overhead is not counted).
    pub fn live(&self) -> f64 {
        LIVE.load(Relaxed) as f64
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        COUNTING.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Meter;

    #[test]
    fn counts_what_is_allocated_and_freed() {
        let meter = Meter::start();
        let block = vec![1u8; 1 << 20];
        assert!(meter.live() >= f64::from(1u32 << 20));
        drop(block);
        assert!(meter.live() < f64::from(1u32 << 20));
    }
}
