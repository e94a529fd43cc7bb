//! The leases a registry handed out and that are still held: what
//! [`Registry::held`](crate::Registry::held) lists and [`Registry::close`](crate::Registry::close)
//! releases.
//!
//! Every lease is entered when it is acquired and removed when it is released or dropped, so
//! the set holds no more than the leases alive. Entries are spread over a few shards by
//! thread, so that tasks on different threads taking and releasing leases do not wait on one
//! lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use slab::Slab;

use crate::lease::LeaseState;

const SHARDS: usize = 16;

/// A lease that [`Registry::held`](crate::Registry::held) lists: taken through the registry,
/// and not yet released, lost or dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let registry = runa_lock::Registry::new();
/// let lease = registry.of("queue")?.wait("order-7").await?;
/// let held = registry.held();
/// assert_eq!(held.len(), 1);
/// assert_eq!((held[0].locker.as_str(), held[0].key.as_str()), ("queue", "order-7"));
/// assert_eq!(held[0].fencing, lease.fencing());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub struct HeldLease {
    /// The locker it was taken through.
    pub locker: String,
    /// The key as the caller gave it, without the locker's prefix.
    pub key: String,
    /// Its fencing number.
    pub fencing: u64,
}

/// The set itself, shared by a registry and every locker it made.
pub(crate) struct HeldSet {
    shards: Box<[Shard]>,
}

/// Padded to its own cache lines, so that threads working on neighbouring shards do not
/// slow each other down.
#[repr(align(128))]
struct Shard(Mutex<Slab<Arc<LeaseState>>>);

/// Where a lease sits in the set; removing it (once, as it is dropped) is the lease's job.
#[derive(Debug)]
pub(crate) struct Entry {
    shard: usize,
    slot: usize,
}

impl HeldSet {
    pub(crate) fn new() -> HeldSet {
        HeldSet {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Slab::new())))
                .collect(),
        }
    }

    /// Enters a lease just acquired; the lease removes itself with the entry when it is
    /// released or dropped.
    pub(crate) fn insert(&self, lease: Arc<LeaseState>) -> Entry {
        let shard = this_thread() % self.shards.len();
        let slot = self.shard(shard).insert(lease);
        Entry { shard, slot }
    }

    pub(crate) fn remove(&self, entry: &Entry) {
        // Dropped once the shard is unlocked: the last reference frees the lease's state.
        let _lease = self.shard(entry.shard).try_remove(entry.slot);
    }

    /// The leases entered and not yet dropped; some may have ended (callers check).
    pub(crate) fn snapshot(&self) -> Vec<Arc<LeaseState>> {
        let mut leases = Vec::new();
        for index in 0..self.shards.len() {
            leases.extend(self.shard(index).iter().map(|(_, lease)| Arc::clone(lease)));
        }
        leases
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Slab<Arc<LeaseState>>> {
        // A panic while a shard is locked cannot leave its slab half changed.
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A small number per thread, to pick its shard by.
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    }
    INDEX.with(|index| {
        index.get().unwrap_or_else(|| {
            let new = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(Some(new));
            new
        })
    })
}
