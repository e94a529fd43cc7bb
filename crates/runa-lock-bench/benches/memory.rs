//! The memory driver against its baselines, each in one criterion group with them so the
//! report shows all from the same run: uncontended pairs (against a hand-written keyed
//! mutex and `tokio::sync::Mutex`), many keys, two threads, handoff latency, and the cost of
//! `with`. The operations timed are the bench binary's own (`runa_lock_bench::ops`).

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use runa_lock::Error;
use runa_lock_bench::keyed::KeyedMutex;
use runa_lock_bench::ops::{self, memory_locker as locker};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn uncontended_pair(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("uncontended_pair");
    let mutex = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio_mutex_lock_unlock", |b| {
        b.to_async(&rt).iter(|| ops::tokio_pair(&mutex))
    });
    let keyed = KeyedMutex::new();
    group.bench_function("keyed_mutex_try_lock_unlock", |b| {
        b.to_async(&rt).iter(|| ops::keyed_pair(&keyed, "key"))
    });
    let jobs = locker();
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| ops::runa_pair(&jobs, "key"))
    });
    group.finish();
}

fn distinct_keys(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    let rt = runtime();
    let mut group = c.benchmark_group("distinct_keys_10k");
    let mutexes: Vec<tokio::sync::Mutex<u64>> =
        (0..KEYS).map(|_| tokio::sync::Mutex::new(0)).collect();
    let mut i = 0;
    group.bench_function("tokio_mutex_lock_unlock", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            ops::tokio_pair(&mutexes[i])
        })
    });
    let jobs = locker();
    let names: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut j = 0;
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| {
            j = (j + 1) % KEYS;
            let (jobs, name) = (&jobs, &names[j]);
            ops::runa_pair(jobs, name)
        })
    });
    group.finish();
}

/// The same total work on one thread and split over two threads (distinct keys): the ratio
/// of their times is the scaling.
fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("distinct_keys_threads");
    let ops = 20_000u64;
    group.throughput(Throughput::Elements(ops));
    for threads in [1usize, 2] {
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{threads}_threads")),
            &threads,
            |b, &threads| {
                let jobs = locker();
                let names: Arc<Vec<Vec<String>>> =
                    Arc::new((0..threads).map(ops::thread_keys).collect());
                b.iter_custom(|iters| {
                    let per_thread = ops * iters / threads as u64;
                    let started = Instant::now();
                    std::thread::scope(|scope| {
                        for t in 0..threads {
                            let (jobs, names) = (jobs.clone(), Arc::clone(&names));
                            scope.spawn(move || {
                                let keys = &names[t];
                                for n in 0..per_thread as usize {
                                    ops::runa_pair_now(&jobs, &keys[n % keys.len()]);
                                }
                            });
                        }
                    });
                    started.elapsed()
                })
            },
        );
    }
    group.finish();
}

/// From the holder's release to the woken waiter's `wait` (or `lock`) returning.
fn handoff(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("handoff");
    let mutex = Arc::new(tokio::sync::Mutex::new(()));
    group.bench_function("tokio_mutex", |b| {
        b.iter_custom(|iters| rt.block_on(total(iters, || ops::tokio_handoff(&mutex))))
    });
    let keyed = Arc::new(KeyedMutex::new());
    group.bench_function("keyed_mutex", |b| {
        b.iter_custom(|iters| rt.block_on(total(iters, || ops::keyed_handoff(&keyed))))
    });
    let jobs = locker();
    group.bench_function("memory_driver", |b| {
        b.iter_custom(|iters| rt.block_on(total(iters, || ops::runa_handoff(&jobs))))
    });
    group.finish();
}

/// The sum of `iters` timed runs of `one`.
async fn total<F: Future<Output = Duration>>(iters: u64, mut one: impl FnMut() -> F) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += one().await;
    }
    total
}

fn with_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("with_overhead");
    let jobs = locker();
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| ops::runa_pair(&jobs, "key"))
    });
    group.bench_function("with", |b| {
        b.to_async(&rt).iter(|| async {
            jobs.with("key", |_| async { Ok::<_, Error>(()) })
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = uncontended_pair, distinct_keys, threads, handoff, with_overhead
}
criterion_main!(benches);
