//! Table storage that goes back to the operating system when a table shrinks.
//!
//! A memory driver that held a million keys and then saw them expire should not keep the
//! memory they took. Freeing a table through the global allocator does not ensure that:
//! glibc, for one, keeps freed heap memory for later and only returns what sits at the top
//! of its heap, so a burst of keys leaves the process tens of megabytes larger for good.
//!
//! [`Pages`] is the allocator of the driver's hash tables. Blocks of [`mapped_from`] bytes
//! and more (the tables of busy shards) are anonymous memory mappings of their own, unmapped
//! when the table grows out of them or shrinks after a sweep; smaller blocks come from the
//! global allocator, as they would without it. Only the tables' own storage goes through it.

use std::ptr::NonNull;
use std::sync::OnceLock;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};

/// Blocks at least this large are mappings of their own: four pages, and at least 16 KiB (a
/// table of a hundred-odd keys), so that a mapping never wastes more than a quarter of itself
/// on rounding up to whole pages, whatever the page size.
pub(crate) fn mapped_from() -> usize {
    static FROM: OnceLock<usize> = OnceLock::new();
    *FROM.get_or_init(|| (4 * page_size()).max(16 * 1024))
}

/// The allocator of the memory driver's tables (see the module docs).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Pages;

impl Pages {
    /// Whether a block of this layout is (or was) a mapping of its own. `allocate` and
    /// `deallocate` decide by the same rule, on the same layout.
    fn mapped(layout: Layout) -> bool {
        cfg!(unix) && layout.size() >= mapped_from() && layout.align() <= MIN_PAGE
    }
}

/// Mappings are aligned to a page, and no platform has pages smaller than this.
const MIN_PAGE: usize = 4096;

// SAFETY: blocks are either the global allocator's (and go back to it with the same layout)
// or fresh private anonymous mappings of at least `layout.size()` bytes, page-aligned (which
// covers `layout.align() <= MIN_PAGE`), readable and writable, not shared with anything, and
// unmapped exactly once, by `deallocate`, with the length they were mapped with. `Pages` has no
// state, so every copy of it can free the blocks of any other.
#[allow(unsafe_code)]
unsafe impl Allocator for Pages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !Pages::mapped(layout) {
            return Global.allocate(layout);
        }
        let block = map(layout.size()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(block, layout.size()))
    }

    unsafe fn deallocate(&self, block: NonNull<u8>, layout: Layout) {
        if Pages::mapped(layout) {
            // SAFETY: the caller passes a block `allocate` returned for this layout (the
            // `Allocator` contract); `mapped(layout)` held then too, so it is a mapping of
            // `layout.size()` bytes.
            unsafe { unmap(block, layout.size()) }
        } else {
            // SAFETY: as above, a block of the global allocator with this layout.
            unsafe { Global.deallocate(block, layout) }
        }
    }
}

/// The size of a memory page.
#[cfg(unix)]
#[allow(unsafe_code)]
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(MIN_PAGE).max(MIN_PAGE)
}

#[cfg(not(unix))]
fn page_size() -> usize {
    MIN_PAGE
}

/// A fresh private anonymous mapping of `len` bytes (the kernel rounds up to whole pages).
#[cfg(unix)]
#[allow(unsafe_code)]
fn map(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing touches
    // no existing memory; failure is reported as MAP_FAILED, checked below.
    let block = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if block == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(block.cast())
}

/// Unmaps a block that `map(len)` returned.
///
/// # Safety
///
/// `block` came from `map(len)` with this `len` and is not used afterwards.
#[cfg(unix)]
#[allow(unsafe_code)]
unsafe fn unmap(block: NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees the mapping and its length. munmap can only fail on
    // arguments that do not describe a mapping, which the caller rules out.
    unsafe {
        libc::munmap(block.as_ptr().cast(), len);
    }
}

#[cfg(not(unix))]
fn map(_len: usize) -> Option<NonNull<u8>> {
    // `Pages::mapped` is false off unix, so this is never called.
    None
}

#[cfg(not(unix))]
#[allow(unsafe_code)]
unsafe fn unmap(_block: NonNull<u8>, _len: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use hashbrown::HashTable;

    /// Whether some mapping of this process covers `address`, from `/proc/self/maps`.
    fn is_mapped(address: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|line| {
            let range = line.split_whitespace().next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let start = usize::from_str_radix(start, 16).unwrap();
            let end = usize::from_str_radix(end, 16).unwrap();
            (start..end).contains(&address)
        })
    }

    #[test]
    fn big_blocks_are_mappings_that_go_away_when_freed() {
        let layout = Layout::from_size_align(mapped_from() * 64 + 3, 16).unwrap();
        let block = Pages.allocate(layout).unwrap();
        assert!(block.len() >= layout.size());
        let start = block.cast::<u8>();
        assert_eq!(start.as_ptr() as usize % MIN_PAGE, 0, "page-aligned");
        // The whole block is usable.
        #[allow(unsafe_code)]
        // SAFETY: the block is ours and `layout.size()` bytes long.
        unsafe {
            start.as_ptr().write_bytes(0xA5, layout.size());
            assert_eq!(*start.as_ptr().add(layout.size() - 1), 0xA5);
        }
        let address = start.as_ptr() as usize;
        assert!(is_mapped(address));
        #[allow(unsafe_code)]
        // SAFETY: allocated above with this layout, not used again.
        unsafe {
            Pages.deallocate(start, layout);
        }
        // A thread of this test process could map something at the same place in between,
        // but not at the start and the end of the old block both, at this block's length.
        assert!(
            !(is_mapped(address) && is_mapped(address + layout.size() - 1)),
            "the block is unmapped on free"
        );
    }

    #[test]
    fn small_and_over_aligned_blocks_come_from_the_global_allocator() {
        for layout in [
            Layout::from_size_align(64, 8).unwrap(),
            Layout::from_size_align(mapped_from() - 1, 16).unwrap(),
            Layout::from_size_align(mapped_from(), MIN_PAGE * 2).unwrap(),
        ] {
            assert!(!Pages::mapped(layout), "{layout:?}");
            let block = Pages.allocate(layout).unwrap();
            assert_eq!(block.cast::<u8>().as_ptr() as usize % layout.align(), 0);
            #[allow(unsafe_code)]
            // SAFETY: allocated above with this layout.
            unsafe {
                Pages.deallocate(block.cast(), layout);
            }
        }
    }

    #[test]
    fn a_table_grows_and_shrinks_through_mappings() {
        let mut table: HashTable<u64, Pages> = HashTable::new_in(Pages);
        let hash = |v: &u64| v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for v in 0..100_000u64 {
            table.insert_unique(hash(&v), v, hash);
        }
        assert!(table.allocation_size() >= mapped_from());
        for v in (0..100_000u64).step_by(7) {
            assert!(table.find(hash(&v), |x| *x == v).is_some());
        }
        table.retain(|v| *v < 10);
        table.shrink_to(0, hash);
        assert!(table.allocation_size() < mapped_from());
        assert_eq!(table.len(), 10);
        assert!((0..10).all(|v| table.find(hash(&v), |x| *x == v).is_some()));
    }
}
