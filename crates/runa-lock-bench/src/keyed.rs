//! The baseline a user would write by hand instead of runa-lock's memory driver: one
//! `tokio::sync::Mutex` per key in a `DashMap`, locked through `try_lock_owned` and
//! `lock_owned`, and its entry removed on release when nobody else holds or waits for it, so
//! the map holds only keys in use (as the memory driver does).
//!
//! No ttl, token or fencing number: it is what runa-lock's extra work is measured against.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Mutexes by key, created on first use and removed when released uncontended.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
/// let held = keyed.lock("order-7").await;
/// assert!(keyed.try_lock("order-7").is_none(), "busy");
/// assert_eq!(keyed.len(), 1);
/// drop(held);
/// assert!(keyed.is_empty(), "released uncontended: the entry is gone");
/// # }
/// ```
#[derive(Debug, Default)]
pub struct KeyedMutex {
    map: DashMap<String, Arc<Mutex<()>>>,
}

/// A held key of a [`KeyedMutex`]; dropping it unlocks the key.
///
/// ```
/// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
/// let guard = keyed.try_lock("k").expect("free");
/// drop(guard);
/// assert!(keyed.try_lock("k").is_some());
/// ```
#[must_use = "the key is unlocked when the guard is dropped"]
#[derive(Debug)]
pub struct KeyedGuard<'a> {
    owner: &'a KeyedMutex,
    key: &'a str,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedMutex {
    /// An empty map.
    ///
    /// ```
    /// assert!(runa_lock_bench::keyed::KeyedMutex::new().is_empty());
    /// ```
    pub fn new() -> KeyedMutex {
        KeyedMutex::default()
    }

    /// The key's mutex, inserted if the key has none. The clone is taken under the shard's
    /// lock, which is what makes [`KeyedGuard`]'s reference count check sound.
    fn mutex(&self, key: &str) -> Arc<Mutex<()>> {
        if let Some(mutex) = self.map.get(key) {
            return Arc::clone(&mutex);
        }
        Arc::clone(&self.map.entry(key.to_owned()).or_default())
    }

    /// Locks `key` if it is free, without waiting.
    ///
    /// ```
    /// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
    /// let _held = keyed.try_lock("k").expect("free");
    /// assert!(keyed.try_lock("k").is_none());
    /// ```
    pub fn try_lock<'a>(&'a self, key: &'a str) -> Option<KeyedGuard<'a>> {
        match self.mutex(key).try_lock_owned() {
            Ok(guard) => Some(KeyedGuard {
                owner: self,
                key,
                guard: Some(guard),
            }),
            Err(_) => {
                // Our clone is gone now; if the holder released meanwhile, its removal saw
                // our clone and kept the entry, so remove it here.
                self.map
                    .remove_if(key, |_, mutex| Arc::strong_count(mutex) == 1);
                None
            }
        }
    }

    /// Locks `key`, waiting (first come, first served) while someone else holds it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
    /// let _held = keyed.lock("k").await;
    /// # }
    /// ```
    pub async fn lock<'a>(&'a self, key: &'a str) -> KeyedGuard<'a> {
        let guard = self.mutex(key).lock_owned().await;
        KeyedGuard {
            owner: self,
            key,
            guard: Some(guard),
        }
    }

    /// How many keys have an entry: held ones, and ones with waiters.
    ///
    /// ```
    /// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
    /// let _held = keyed.try_lock("k");
    /// assert_eq!(keyed.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key has an entry.
    ///
    /// ```
    /// assert!(runa_lock_bench::keyed::KeyedMutex::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        // Unlock first: a waiter's clone keeps the count above one, and so the entry.
        drop(self.guard.take());
        // Under the shard's write lock no new clone can be taken, so a count of one (the
        // map's own) means nobody holds or waits for the key.
        self.owner
            .map
            .remove_if(self.key, |_, mutex| Arc::strong_count(mutex) == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedMutex;

    #[test]
    fn excludes_and_forgets_released_keys() {
        let keyed = KeyedMutex::new();
        let held = keyed.try_lock("a").expect("free");
        assert!(keyed.try_lock("a").is_none());
        assert_eq!(keyed.len(), 1);
        drop(held);
        assert!(keyed.is_empty());
        drop(keyed.try_lock("a").expect("free again"));
        assert!(keyed.is_empty());
    }

    #[tokio::test]
    async fn keeps_the_entry_for_a_waiter() {
        let keyed = std::sync::Arc::new(KeyedMutex::new());
        let held = keyed.try_lock("a").expect("free");
        let waiter = tokio::spawn({
            let keyed = std::sync::Arc::clone(&keyed);
            async move {
                let _guard = keyed.lock("a").await;
            }
        });
        // The waiter has taken its clone once the count is three (map, holder, waiter).
        while keyed
            .map
            .get("a")
            .is_some_and(|mutex| std::sync::Arc::strong_count(&mutex) < 3)
        {
            tokio::task::yield_now().await;
        }
        drop(held);
        waiter.await.expect("the waiter gets the key");
        assert!(keyed.is_empty());
    }
}
