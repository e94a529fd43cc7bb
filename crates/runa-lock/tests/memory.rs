//! Memory-driver properties, mostly on paused tokio time so that "woken at once" can be told
//! apart from "woken by a timer": with the clock paused, time only moves when every task is
//! asleep on a timer, so a handoff that took zero virtual time was a wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runa_lock::{
    Attempt, Driver, Error, LockKey, LockOptions, Locker, LockerOptions, MemoryDriver, Registry,
};
use tokio::time::{Instant, advance, sleep};

const HOUR: Duration = Duration::from_secs(3600);

fn locker_on(driver: &MemoryDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("mem", driver.clone());
    registry.register_locker("test", options.driver("mem"));
    registry.of("test").unwrap()
}

/// Many waiters on one key, each holding it briefly with a yield between read and write of a
/// counter: every update lands, and the whole chain of handoffs takes no virtual time, so no
/// waiter ever slept out a timer (no lost wake-ups).
#[tokio::test(start_paused = true)]
async fn many_waiters_are_all_woken_without_timers() {
    const WAITERS: u64 = 120;
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new()
            .ttl(HOUR)
            .wait(HOUR * 2)
            .retry_interval(HOUR),
    );
    let holder = locker.wait("k").await.unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let (locker, counter) = (locker.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            locker
                .with("k", |_| async move {
                    let read = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    counter.store(read + 1, Ordering::SeqCst);
                    Ok::<_, Error>(())
                })
                .await
        }));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    holder.release().await.unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), WAITERS);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "some waiter slept out a timer"
    );
    assert_eq!(
        driver.key_count(),
        0,
        "released key and its waiters left a slot behind"
    );
}

/// Waiters aborted while queued (every third one, and some after being woken but before being
/// polled) neither hold the key nor swallow the wake-up meant for the others.
#[tokio::test(start_paused = true)]
async fn aborted_waiters_leave_no_ghost_and_lose_no_wakeup() {
    let driver = MemoryDriver::new();
    let locker = locker_on(&driver, LockerOptions::new().ttl(HOUR).wait(HOUR * 2));
    let holder = locker.wait("k").await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let (locker, done) = (locker.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let lease = locker.wait("k").await?;
            done.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            lease.release().await
        }));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    holder.release().await.unwrap();
    // The first waiter has been notified but not yet run: abort it with a third of the rest.
    let mut survivors = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 3 == 0 {
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        } else {
            survivors.push(task);
        }
    }
    let expected = survivors.len() as u64;
    for task in survivors {
        task.await.unwrap().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), expected);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a wake-up was lost to an aborted waiter"
    );
    assert_eq!(
        driver.key_count(),
        0,
        "an aborted waiter left its registration behind"
    );
}

/// A waiter that gives up (its `wait` runs out, or a `timeout` around it fires) leaves no
/// registration behind.
#[tokio::test(start_paused = true)]
async fn waiters_that_time_out_leave_nothing() {
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new().ttl(HOUR).wait(Duration::from_secs(1)),
    );
    let holder = locker.wait("k").await.unwrap();
    assert!(matches!(locker.wait("k").await, Err(Error::Timeout { .. })));
    let cancelled = tokio::time::timeout(Duration::from_millis(10), locker.wait("k")).await;
    assert!(cancelled.is_err());
    holder.release().await.unwrap();
    assert_eq!(driver.key_count(), 0);
}

/// A waiter gets an abandoned lock exactly when its lease expires: not a polling interval
/// later, and not before.
#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_exactly_at_expiry() {
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new().wait(HOUR).retry_interval(HOUR),
    );
    let short = locker.with_options(LockOptions::new().ttl(Duration::from_secs(10)));
    let abandoned = short.wait("k").await.unwrap();
    let started = Instant::now();
    let next = locker.wait("k").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(next.fencing() > abandoned.fencing());
    assert!(matches!(
        abandoned.release().await,
        Err(Error::NotHeld { .. })
    ));
    assert!(
        locker.try_lock("k").await.unwrap().is_none(),
        "the stale release freed the new holder"
    );
}

/// A holder that renews keeps its lock past the original ttl. A renewal with a shorter ttl
/// never shortens the driver's hold (arriving late, it would cut a newer renewal short),
/// while the lease itself counts only the shorter time; releasing it frees the key.
#[tokio::test(start_paused = true)]
async fn renewals_extend_the_hold_and_never_shorten_it() {
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new()
            .ttl(Duration::from_secs(10))
            .wait(Duration::from_secs(15)),
    );
    let lease = locker.wait("k").await.unwrap();
    sleep(Duration::from_secs(8)).await;
    lease.renew(None).await.unwrap();
    sleep(Duration::from_secs(8)).await;
    assert!(
        locker.try_lock("k").await.unwrap().is_none(),
        "expired despite renewal"
    );
    lease.renew(Some(Duration::from_secs(1))).await.unwrap();
    let handle = lease.handle();
    sleep(Duration::from_millis(1500)).await;
    assert!(handle.is_lost(), "the lease counts only the shorter ttl");
    assert!(
        locker.try_lock("k").await.unwrap().is_none(),
        "the shorter renewal cut the driver's hold short"
    );
    lease.release().await.unwrap();
    let next = locker.try_lock("k").await.unwrap().expect("released");
    assert!(next.fencing() > handle.fencing());
}

/// A renewal's ttl must be usable: an argument error that names the argument.
#[tokio::test(start_paused = true)]
async fn a_renewal_with_a_zero_ttl_is_an_argument_error() {
    let locker = locker_on(&MemoryDriver::new(), LockerOptions::new());
    let lease = locker.wait("k").await.unwrap();
    let err = lease.renew(Some(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid argument Lease::renew(ttl): must be greater than zero (got 0s)"
    );
    lease.release().await.unwrap();
}

/// Fencing numbers strictly increase per key through releases, expiries and takeovers, also
/// after the key's slot was removed from memory.
#[tokio::test(start_paused = true)]
async fn fencing_strictly_increases_per_key() {
    let driver = MemoryDriver::new();
    let locker = locker_on(&driver, LockerOptions::new().ttl(Duration::from_secs(1)));
    let mut last = 0;
    for round in 0..200 {
        let lease = locker.wait("k").await.unwrap();
        assert!(
            lease.fencing() > last,
            "round {round}: {} after {last}",
            lease.fencing()
        );
        last = lease.fencing();
        if round % 2 == 0 {
            lease.release().await.unwrap();
            assert_eq!(driver.key_count(), 0);
        } else {
            advance(Duration::from_secs(2)).await;
            drop(lease);
        }
        // Other keys in between must not disturb the order.
        locker
            .wait(&format!("other-{round}"))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
}

/// A million distinct keys acquired with a 10 ms ttl and never released do not pile up (each
/// shard sweeps as it grows and every second), and are all gone after a sweep once expired;
/// the map gives its capacity back.
#[tokio::test(start_paused = true)]
async fn expired_keys_are_swept_and_memory_is_bounded() {
    let driver = MemoryDriver::new();
    let ttl = Duration::from_millis(10);
    let key_names: Vec<String> = (0..1_000_000).map(|i| format!("job-{i}")).collect();
    let mut peak = 0;
    for (i, name) in key_names.iter().enumerate() {
        let attempt = driver
            .acquire(LockKey::new("", name), "token", ttl)
            .await
            .unwrap();
        assert!(matches!(attempt, Attempt::Acquired { .. }));
        if i % 100_000 == 99_999 {
            peak = peak.max(driver.key_count());
            advance(ttl * 2).await;
        }
    }
    assert!(peak < 400_000, "keys piled up: {peak}");
    advance(Duration::from_secs(2)).await;
    // An insert into a shard that swept over a second ago sweeps it.
    for name in key_names.iter().take(20_000) {
        driver
            .acquire(LockKey::new("again", name), "token", ttl)
            .await
            .unwrap();
    }
    assert!(
        driver.key_count() <= 20_000 + 50_000,
        "stale keys stayed: {}",
        driver.key_count()
    );
    advance(Duration::from_secs(2)).await;
    assert_eq!(driver.sweep(), 0, "expired keys survived a sweep");
}

/// Held keys survive sweeps; only expired ones go.
#[tokio::test(start_paused = true)]
async fn sweeps_keep_held_keys() {
    let driver = MemoryDriver::new();
    let locker = locker_on(&driver, LockerOptions::new().ttl(HOUR));
    let short = locker.with_options(LockOptions::new().ttl(Duration::from_millis(10)));
    let mut held = Vec::new();
    let mut expiring = Vec::new();
    for i in 0..1000 {
        held.push(locker.wait(&format!("held-{i}")).await.unwrap());
        expiring.push(short.wait(&format!("brief-{i}")).await.unwrap());
    }
    assert_eq!(driver.key_count(), 2000);
    advance(Duration::from_millis(20)).await;
    assert_eq!(
        driver.sweep(),
        1000,
        "expired keys were kept or held ones dropped"
    );
    for lease in held {
        lease.renew(None).await.expect("a held key was swept");
    }
    drop(expiring);
}

/// Tasks on two threads contend for a few shared keys, each doing a read-yield-write of a
/// per-key counter: every update lands, so exclusion holds per key across threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_across_threads_keep_exclusion() {
    const KEYS: usize = 4;
    const ROUNDS: u64 = 300;
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(60)),
    );
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (locker, counters) = (locker.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let k = (t + i as usize) % KEYS;
                let counters = counters.clone();
                locker
                    .with(&format!("shared-{k}"), |_| async move {
                        let read = counters[k].load(Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        counters[k].store(read + 1, Ordering::SeqCst);
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: u64 = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(total, 8 * ROUNDS, "lost updates");
    assert_eq!(driver.key_count(), 0);
}

/// The driver works without a tokio runtime (futures polled by another executor), and a
/// lease dropped there is still released, synchronously.
#[test]
fn works_without_a_tokio_runtime() {
    let driver = MemoryDriver::new();
    let locker = locker_on(&driver, LockerOptions::new());
    let lease = futures_lite_block_on(locker.try_lock("k"))
        .unwrap()
        .unwrap();
    assert!(
        futures_lite_block_on(locker.try_lock("k"))
            .unwrap()
            .is_none()
    );
    drop(lease);
    assert_eq!(driver.key_count(), 0);
}

/// A minimal executor: polls a future that is ready without waiting (the memory driver's
/// `try_lock` never waits).
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the memory driver's try_lock should not wait"),
    }
}

/// A lease handed over after a long wait runs its whole ttl from the handover, not from when
/// its wait began (the lease state is built before the wait, and settled at the grant).
#[tokio::test(start_paused = true)]
async fn a_lease_won_after_waiting_runs_its_ttl_from_the_handover() {
    let ttl = Duration::from_secs(10);
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new()
            .ttl(ttl)
            .wait(HOUR)
            .retry_interval(HOUR),
    );
    let holder = locker.wait("k").await.unwrap();
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move { locker.wait("k").await }
    });
    tokio::task::yield_now().await; // the waiter starts waiting now
    advance(Duration::from_secs(7)).await;
    let handed_over = Instant::now();
    let first = holder.fencing();
    holder.release().await.unwrap();
    let lease = waiter.await.unwrap().unwrap();
    assert!(lease.fencing() > first);
    assert_eq!(
        Instant::now(),
        handed_over,
        "woken by the release, not a timer"
    );
    let handle = lease.handle();
    advance(ttl - Duration::from_millis(1)).await;
    assert!(!handle.is_lost(), "the lease ended before its ttl");
    assert!(
        locker.try_lock("k").await.unwrap().is_none(),
        "the store let go early"
    );
    advance(Duration::from_millis(1)).await;
    // At handover + ttl, the lease and the store agree that it is over.
    assert!(
        handle.is_lost(),
        "the lease outlived its ttl from the handover"
    );
    let next = locker.try_lock("k").await.unwrap();
    assert!(
        next.is_some(),
        "the store kept the key past the lease's ttl"
    );
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
}

/// A lease released on a thread outside the runtime reads the real clock, which under a paused
/// test clock that has been advanced is far behind the waiter's. The key handed over must
/// still be held, for the waiter's whole ttl, on the waiter's clock.
#[tokio::test(start_paused = true)]
async fn a_hand_over_from_a_thread_on_another_clock_keeps_the_key_held() {
    let driver = MemoryDriver::new();
    let locker = locker_on(
        &driver,
        LockerOptions::new()
            .ttl(Duration::from_secs(10))
            .wait(HOUR * 3)
            .retry_interval(HOUR * 3),
    );
    advance(HOUR).await; // the paused clock is now an hour ahead of the real one
    let holder = locker.wait("k").await.unwrap();
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move { locker.wait("k").await }
    });
    tokio::task::yield_now().await;
    // Dropped without a runtime, the lease is released at once, on the real clock.
    std::thread::spawn(move || drop(holder)).join().unwrap();
    let lease = waiter.await.unwrap().unwrap();
    assert!(!lease.handle().is_lost());
    assert!(
        locker.try_lock("k").await.unwrap().is_none(),
        "the store let the key go while the new holder's lease runs"
    );
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn inspect_tells_the_time_left_and_takes_nothing() {
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(10)));
    let jobs = registry.of("jobs").unwrap();
    assert_eq!(jobs.inspect("k").await.unwrap(), None);
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    let holder = jobs.inspect("k").await.unwrap().expect("held");
    assert_eq!(holder.ttl, Some(Duration::from_secs(7)));
    assert!(
        jobs.try_lock("k").await.unwrap().is_none(),
        "inspect took nothing"
    );
    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(
        jobs.inspect("k").await.unwrap(),
        None,
        "an expired lease holds nothing"
    );
    drop(lease);
    assert!(matches!(
        jobs.inspect("").await,
        Err(Error::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn a_driver_that_cannot_inspect_says_so() {
    #[derive(Debug)]
    struct Blind(runa_lock::MemoryDriver);
    impl runa_lock::Driver for Blind {
        fn acquire<'a>(
            &'a self,
            key: runa_lock::LockKey<'a>,
            token: &'a str,
            ttl: Duration,
        ) -> runa_lock::BoxFuture<'a, Result<runa_lock::Attempt, Error>> {
            self.0.acquire(key, token, ttl)
        }
        fn renew<'a>(
            &'a self,
            key: runa_lock::LockKey<'a>,
            token: &'a str,
            ttl: Duration,
        ) -> runa_lock::BoxFuture<'a, Result<bool, Error>> {
            self.0.renew(key, token, ttl)
        }
        fn release<'a>(
            &'a self,
            key: runa_lock::LockKey<'a>,
            token: &'a str,
        ) -> runa_lock::BoxFuture<'a, Result<bool, Error>> {
            self.0.release(key, token)
        }
    }
    let registry = Registry::new();
    registry.register_driver("blind", Blind(runa_lock::MemoryDriver::new()));
    registry.register_locker("jobs", LockerOptions::new().driver("blind"));
    let err = registry.of("jobs").unwrap().inspect("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot tell"), "{err}");
}
