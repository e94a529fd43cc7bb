//! One lock pair or one handoff, of runa-lock's memory driver and of each baseline: the units
//! both harnesses time.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use runa_lock::{Locker, LockerOptions, Registry};

use crate::keyed::KeyedMutex;

/// A locker named `bench` on a registry of its own (so on a memory driver of its own), with a
/// ttl no run outlasts.
///
/// ```
/// assert_eq!(runa_lock_bench::ops::memory_locker().name(), "bench");
/// ```
pub fn memory_locker() -> Locker {
    let registry = Registry::new();
    registry.register_locker("bench", LockerOptions::new().ttl(Duration::from_secs(600)));
    registry.of("bench").expect("the bench locker")
}

/// Thread `t`'s 256 keys for the pairs-on-distinct-keys runs: no two threads share one.
///
/// ```
/// use runa_lock_bench::ops::thread_keys;
/// assert_eq!(thread_keys(0).len(), 256);
/// assert!(thread_keys(0).iter().all(|k| !thread_keys(1).contains(k)));
/// ```
pub fn thread_keys(t: usize) -> Vec<String> {
    (0..256).map(|k| format!("t{t}-key-{k}")).collect()
}

/// The output of a future that completes at once (an uncontended memory-driver operation),
/// polled without a runtime.
///
/// # Panics
///
/// If the future is not ready at its first poll.
///
/// ```
/// assert_eq!(runa_lock_bench::ops::ready(async { 7 }), 7);
/// ```
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a memory-driver future that should be ready at once waited"),
    }
}

/// Uncontended `try_lock` + `release` of `key`.
///
/// # Panics
///
/// If the key is busy or the driver fails.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let locker = runa_lock_bench::ops::memory_locker();
/// runa_lock_bench::ops::runa_pair(&locker, "k").await;
/// assert!(locker.try_lock("k").await.unwrap().is_some(), "released");
/// # }
/// ```
pub async fn runa_pair(locker: &Locker, key: &str) {
    let lease = locker
        .try_lock(key)
        .await
        .expect("try_lock")
        .expect("the key is free");
    lease.release().await.expect("release");
}

/// [`runa_pair`] without a runtime, for plain threads.
///
/// ```
/// runa_lock_bench::ops::runa_pair_now(&runa_lock_bench::ops::memory_locker(), "k");
/// ```
pub fn runa_pair_now(locker: &Locker, key: &str) {
    ready(runa_pair(locker, key));
}

/// Uncontended lock + unlock of a `tokio::sync::Mutex`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// runa_lock_bench::ops::tokio_pair(&tokio::sync::Mutex::new(0)).await;
/// # }
/// ```
pub async fn tokio_pair(mutex: &tokio::sync::Mutex<u64>) {
    *mutex.lock().await += 1;
}

/// Uncontended `try_lock` + unlock of `key` in a [`KeyedMutex`]: look up or insert the key's
/// mutex, `try_lock_owned`, unlock and remove the entry. Async only to be timed in the same
/// harness as the others.
///
/// # Panics
///
/// If the key is busy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keyed = runa_lock_bench::keyed::KeyedMutex::new();
/// runa_lock_bench::ops::keyed_pair(&keyed, "k").await;
/// assert!(keyed.is_empty());
/// # }
/// ```
pub async fn keyed_pair(keyed: &KeyedMutex, key: &str) {
    let guard = keyed.try_lock(key).expect("the key is free");
    drop(guard);
}

/// One handoff through a `tokio::sync::Mutex`: from dropping the guard to the waiting task
/// holding the mutex.
///
/// # Panics
///
/// If the waiting task panics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mutex = std::sync::Arc::new(tokio::sync::Mutex::new(()));
/// let took = runa_lock_bench::ops::tokio_handoff(&mutex).await;
/// assert!(took < std::time::Duration::from_secs(60));
/// # }
/// ```
pub async fn tokio_handoff(mutex: &Arc<tokio::sync::Mutex<()>>) -> Duration {
    let guard = Arc::clone(mutex).lock_owned().await;
    let waiter = tokio::spawn({
        let mutex = Arc::clone(mutex);
        async move {
            let _guard = mutex.lock().await;
            Instant::now()
        }
    });
    tokio::task::yield_now().await;
    let released = Instant::now();
    drop(guard);
    waiter.await.expect("the waiter") - released
}

/// One handoff through a [`KeyedMutex`]: from dropping the guard to the waiting task holding
/// the key.
///
/// # Panics
///
/// If the waiting task panics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let keyed = std::sync::Arc::new(runa_lock_bench::keyed::KeyedMutex::new());
/// let took = runa_lock_bench::ops::keyed_handoff(&keyed).await;
/// assert!(took < std::time::Duration::from_secs(60));
/// # }
/// ```
pub async fn keyed_handoff(keyed: &Arc<KeyedMutex>) -> Duration {
    let guard = keyed.lock("handoff").await;
    let waiter = tokio::spawn({
        let keyed = Arc::clone(keyed);
        async move {
            let _guard = keyed.lock("handoff").await;
            Instant::now()
        }
    });
    tokio::task::yield_now().await;
    let released = Instant::now();
    drop(guard);
    waiter.await.expect("the waiter") - released
}

/// One handoff through runa-lock: from the holder's `release` to the woken waiter's `wait`
/// returning.
///
/// # Panics
///
/// If the driver fails or the waiting task panics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let locker = runa_lock_bench::ops::memory_locker();
/// let took = runa_lock_bench::ops::runa_handoff(&locker).await;
/// assert!(took < std::time::Duration::from_secs(60));
/// # }
/// ```
pub async fn runa_handoff(locker: &Locker) -> Duration {
    let lease = locker.wait("handoff").await.expect("free");
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move {
            let lease = locker.wait("handoff").await.expect("handed over");
            let woke = Instant::now();
            drop(lease);
            woke
        }
    });
    tokio::task::yield_now().await;
    let released = Instant::now();
    lease.release().await.expect("release");
    waiter.await.expect("the waiter") - released
}
