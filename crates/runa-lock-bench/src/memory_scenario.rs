//! The memory scenario: a million distinct keys with a 10 ms ttl, never released, while
//! 10,000 other keys stay held; resident memory is read from /proc/self/statm.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use runa_lock::{Attempt, Driver, LockKey, MemoryDriver};

use crate::report::{Metric, Scenario};
use crate::stats::Latencies;

/// Resident memory in bytes, from `/proc/self/statm` (the second field, in pages).
fn resident() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

/// A token of the form a locker hands out (32 hex digits), which the driver stores inline.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

pub async fn run(keys: usize) -> Scenario {
    let driver = MemoryDriver::new();
    let held_ttl = Duration::from_secs(3600);
    let short = Duration::from_millis(10);
    let held_token = "held-token-0123456789abcdef01234";
    let mut name = String::new();
    // The held keys are part of the baseline: they are live, not growth.
    for i in 0..10_000 {
        name.clear();
        let _ = write!(name, "held-{i}");
        driver
            .acquire(LockKey::new("", &name), held_token, held_ttl)
            .await
            .expect("acquire");
    }
    let before = resident();
    let started = Instant::now();
    let mut peak = before;
    for i in 0..keys {
        name.clear();
        let _ = write!(name, "job-{i}");
        let attempt = driver
            .acquire(LockKey::new("", &name), TOKEN, short)
            .await
            .expect("acquire");
        assert!(matches!(attempt, Attempt::Acquired { .. }));
        if i % 50_000 == 0 {
            peak = peak.max(resident());
        }
    }
    let rate = keys as f64 / started.elapsed().as_secs_f64();
    peak = peak.max(resident());
    tokio::time::sleep(short * 5).await;
    let left = driver.sweep();
    let after = resident();
    let trimmed = trim_and_measure();
    let held_ok = (0..10_000).all(|i| {
        let name = format!("held-{i}");
        ready(driver.renew(LockKey::new("", &name), held_token, held_ttl)).unwrap_or(false)
    });
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    Scenario {
        name: "memory",
        what: "1M distinct keys, 10 ms ttl, never released; 10k keys held throughout",
        metrics: vec![
            Metric::plain("rss_before_mib", mib(before), "MiB"),
            Metric::plain("rss_peak_mib", mib(peak), "MiB").against("before", mib(before)),
            Metric::plain("rss_after_expiry_mib", mib(after), "MiB")
                .against("before", mib(before))
                .target("<= 1.10x before", after <= before * 1.10),
            Metric::plain("rss_after_malloc_trim_mib", mib(trimmed), "MiB")
                .against("before", mib(before))
                .target("<= 1.10x before", trimmed <= before * 1.10),
            Metric::plain("keys_left", left as f64, "").target("= 10000 held", left == 10_000),
            Metric::plain("held_keys_still_held", f64::from(u8::from(held_ok)), "")
                .target("= 1", held_ok),
            Metric::plain("acquires_per_sec", rate, "1/s"),
        ],
    }
}

/// Asks glibc to give freed memory back to the OS (`malloc_trim(0)`) and reads the resident
/// size again: what stays after this is still allocated, not merely kept by the allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_and_measure() -> f64 {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes a plain integer and only releases free memory of glibc's own
    // heaps; it is safe to call at any time from any thread.
    unsafe {
        malloc_trim(0);
    }
    resident()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_and_measure() -> f64 {
    resident()
}

/// Uncontended pairs without tokio's test clock (which the criterion build of runa-lock has,
/// since its tests pause time): `try_lock` + `release` on one key against `tokio::sync::Mutex`
/// lock + unlock. The two alternate in blocks of 10,000 pairs (warm caches on both sides, the
/// same machine state for both); the medians of the blocks' nanoseconds per pair.
pub async fn pairs(total: u32) -> Scenario {
    const BLOCK: u32 = 10_000;
    let registry = runa_lock::Registry::new();
    let jobs = registry.of("default").expect("the default locker");
    let mutex = tokio::sync::Mutex::new(0u64);
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    let per_pair = |started: Instant| started.elapsed().as_secs_f64() * 1e9 / f64::from(BLOCK);
    for _ in 0..total.div_ceil(BLOCK) {
        let started = Instant::now();
        for _ in 0..BLOCK {
            *mutex.lock().await += 1;
        }
        baseline.push(per_pair(started));
        let started = Instant::now();
        for _ in 0..BLOCK {
            let lease = jobs
                .try_lock("pair")
                .await
                .expect("try_lock")
                .expect("free");
            lease.release().await.expect("release");
        }
        ours.push(per_pair(started));
    }
    let (ours, baseline) = (crate::stats::median(ours), crate::stats::median(baseline));
    Scenario {
        name: "mempair",
        what: "memory driver: uncontended try_lock + release vs tokio::sync::Mutex (no test clock)",
        metrics: vec![
            Metric::plain("pair_ns", ours, "ns")
                .against("tokio Mutex ns", baseline)
                .target("<= 8x tokio", ours <= 8.0 * baseline),
        ],
    }
}

/// Handoff latency on one current-thread runtime: from the holder's `release` to the woken
/// waiter's `wait` returning, against the same handoff through `tokio::sync::Mutex`. The two
/// alternate in blocks of 2,000 handoffs, so both see the same machine (this shared VM
/// drifts between a fast and a slow state every few hundred milliseconds) with warm caches;
/// every handoff is timed on its own, and the target is on the medians (a preempted handoff
/// moves a mean by microseconds, a median not at all). The means are reported too.
pub fn handoffs(rounds: u32) -> Scenario {
    const BLOCK: u32 = 2_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let registry = runa_lock::Registry::new();
    let jobs = registry.of("default").expect("the default locker");
    let mutex = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in 0..rounds.div_ceil(BLOCK) {
            for _ in 0..BLOCK {
                baseline.push(tokio_handoff(&mutex).await);
            }
            for _ in 0..BLOCK {
                ours.push(runa_handoff(&jobs).await);
            }
        }
    });
    let ns = |d: Duration| d.as_secs_f64() * 1e9;
    let (ours, baseline) = (Latencies::new(ours), Latencies::new(baseline));
    let (our_p50, base_p50) = (ns(ours.p50()), ns(baseline.p50()));
    let (our_mean, base_mean) = (ns(ours.mean()), ns(baseline.mean()));
    Scenario {
        name: "memhandoff",
        what: "memory driver: release to the woken waiter's wait returning vs tokio::sync::Mutex",
        metrics: vec![
            Metric::plain("handoff_p50_ns", our_p50, "ns")
                .against("tokio Mutex p50 ns", base_p50)
                .target("<= 3x tokio", our_p50 <= 3.0 * base_p50),
            Metric::plain("handoff_mean_ns", our_mean, "ns")
                .against("tokio Mutex mean ns", base_mean),
            Metric::plain("handoffs", ours.len() as f64, ""),
        ],
    }
}

/// One handoff's time from `drop(guard)` to the waiter holding the mutex.
async fn tokio_handoff(mutex: &std::sync::Arc<tokio::sync::Mutex<()>>) -> Duration {
    let guard = std::sync::Arc::clone(mutex).lock_owned().await;
    let waiter = tokio::spawn({
        let mutex = std::sync::Arc::clone(mutex);
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

/// One handoff's time from `release` to the waiter's `wait` returning.
async fn runa_handoff(jobs: &runa_lock::Locker) -> Duration {
    let lease = jobs.wait("handoff").await.expect("free");
    let waiter = tokio::spawn({
        let jobs = jobs.clone();
        async move {
            let lease = jobs.wait("handoff").await.expect("handed over");
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

/// The output of a future the memory driver completes at once, polled without a runtime.
fn ready<F: Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a memory-driver future that should be ready at once waited"),
    }
}

/// Throughput of uncontended pairs on distinct keys from two threads against one, on the
/// same driver: blocks of 100,000 pairs done by one thread, then by two, alternating (the
/// same machine state for both); the medians of the blocks' pairs per second. The two worker
/// threads live through the whole run (a thread started per block would spend part of a
/// short block waiting for the kernel to move it to the other core), and wait at barriers
/// between blocks; the time is taken from the barrier that starts a block to the one that
/// ends it.
pub fn threads(blocks: u32) -> Scenario {
    const PAIRS: usize = 100_000;
    let registry = runa_lock::Registry::new();
    let jobs = registry.of("default").expect("the default locker");
    let names: Vec<Vec<String>> = (0..2)
        .map(|t| (0..256).map(|k| format!("t{t}-key-{k}")).collect())
        .collect();
    // Each block: everyone meets at `start`, the workers run their share, everyone meets at
    // `done`. `threads` says how many workers run in the next block (0 ends the run).
    let (start, done) = (std::sync::Barrier::new(3), std::sync::Barrier::new(3));
    let threads = std::sync::atomic::AtomicUsize::new(0);
    let (mut one, mut two) = (Vec::new(), Vec::new());
    std::thread::scope(|scope| {
        for (worker, keys) in names.iter().enumerate() {
            let jobs = jobs.clone();
            let (start, done, threads) = (&start, &done, &threads);
            scope.spawn(move || {
                loop {
                    start.wait();
                    let running = threads.load(std::sync::atomic::Ordering::SeqCst);
                    if running == 0 {
                        return;
                    }
                    if worker < running {
                        for n in 0..PAIRS / running {
                            let lease = ready(jobs.try_lock(&keys[n % keys.len()]))
                                .expect("try_lock")
                                .expect("free");
                            ready(lease.release()).expect("release");
                        }
                    }
                    done.wait();
                }
            });
        }
        let block = |running: usize| {
            threads.store(running, std::sync::atomic::Ordering::SeqCst);
            let started = Instant::now();
            start.wait();
            done.wait();
            PAIRS as f64 / started.elapsed().as_secs_f64()
        };
        for _ in 0..blocks {
            one.push(block(1));
            two.push(block(2));
        }
        threads.store(0, std::sync::atomic::Ordering::SeqCst);
        start.wait();
    });
    let (one, two) = (crate::stats::median(one), crate::stats::median(two));
    Scenario {
        name: "memthreads",
        what: "memory driver: uncontended pairs on distinct keys, 2 threads vs 1, alternating blocks",
        metrics: vec![
            Metric::plain("two_threads_pairs_per_sec", two, "1/s")
                .against("one thread pairs/s", one)
                .target(">= 1.5x one thread", two >= 1.5 * one),
        ],
    }
}
