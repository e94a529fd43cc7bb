//! The memory driver's speed next to baselines from the same run: `mempair` (uncontended
//! pairs against a hand-written keyed mutex and a `tokio::sync::Mutex`), `memhandoff`
//! (handoffs against a `tokio::sync::Mutex`) and `memthreads` (two threads against one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use runa_lock_bench::keyed::KeyedMutex;
use runa_lock_bench::ops;

use crate::report::{Metric, Scenario};
use crate::stats::{Latencies, median};

/// Uncontended pairs on one key, without tokio's test clock: runa-lock's `try_lock` +
/// `release` against the keyed mutex a user would write by hand (look up or insert the key's
/// mutex, `try_lock_owned`, unlock and remove the entry) and against one `tokio::sync::Mutex`
/// (lock + unlock). The three alternate in blocks of 10,000 pairs (warm caches on every side,
/// the same machine state for all); the medians of the blocks' nanoseconds per pair.
pub async fn pairs(total: u32) -> Scenario {
    const BLOCK: u32 = 10_000;
    let locker = ops::memory_locker();
    let keyed = KeyedMutex::new();
    let mutex = tokio::sync::Mutex::new(0u64);
    let (mut ours, mut by_key, mut tokio) = (Vec::new(), Vec::new(), Vec::new());
    let per_pair = |started: Instant| started.elapsed().as_secs_f64() * 1e9 / f64::from(BLOCK);
    for _ in 0..total.div_ceil(BLOCK) {
        let started = Instant::now();
        for _ in 0..BLOCK {
            ops::tokio_pair(&mutex).await;
        }
        tokio.push(per_pair(started));
        let started = Instant::now();
        for _ in 0..BLOCK {
            ops::keyed_pair(&keyed, "pair").await;
        }
        by_key.push(per_pair(started));
        let started = Instant::now();
        for _ in 0..BLOCK {
            ops::runa_pair(&locker, "pair").await;
        }
        ours.push(per_pair(started));
    }
    let (ours, by_key, tokio) = (median(ours), median(by_key), median(tokio));
    let left = keyed.len();
    Scenario {
        name: "mempair",
        what: "memory driver: uncontended try_lock + release vs a keyed mutex (DashMap of tokio mutexes) and one tokio::sync::Mutex (no test clock)",
        metrics: vec![
            Metric::plain("pair_ns", ours, "ns")
                .against("keyed mutex ns", by_key)
                .target("<= 2x keyed", ours <= 2.0 * by_key),
            Metric::plain("pair_ns_vs_tokio", ours, "ns").against("tokio Mutex ns", tokio),
            Metric::plain("keyed_pair_ns", by_key, "ns").against("tokio Mutex ns", tokio),
            Metric::plain("keyed_entries_left", left as f64, "").target("= 0", left == 0),
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
    let locker = ops::memory_locker();
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in 0..rounds.div_ceil(BLOCK) {
            for _ in 0..BLOCK {
                baseline.push(ops::tokio_handoff(&mutex).await);
            }
            for _ in 0..BLOCK {
                ours.push(ops::runa_handoff(&locker).await);
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

/// Throughput of uncontended pairs on distinct keys from two threads against one, on the
/// same driver: blocks of 100,000 pairs done by one thread, then by two, alternating (the
/// same machine state for both); the medians of the blocks' pairs per second. The two worker
/// threads live through the whole run (a thread started per block would spend part of a
/// short block waiting for the kernel to move it to the other core), and wait at barriers
/// between blocks; the time is taken from the barrier that starts a block to the one that
/// ends it.
pub fn threads(blocks: u32) -> Scenario {
    const PAIRS: usize = 100_000;
    let locker = ops::memory_locker();
    let names: Vec<Vec<String>> = (0..2).map(ops::thread_keys).collect();
    // Each block: everyone meets at `start`, the workers run their share, everyone meets at
    // `done`. `threads` says how many workers run in the next block (0 ends the run).
    let (start, done) = (std::sync::Barrier::new(3), std::sync::Barrier::new(3));
    let threads = std::sync::atomic::AtomicUsize::new(0);
    let (mut one, mut two) = (Vec::new(), Vec::new());
    std::thread::scope(|scope| {
        for (worker, keys) in names.iter().enumerate() {
            let locker = locker.clone();
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
                            ops::runa_pair_now(&locker, &keys[n % keys.len()]);
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
    let (one, two) = (median(one), median(two));
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
