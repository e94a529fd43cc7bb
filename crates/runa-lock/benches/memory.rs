//! The memory driver against `tokio::sync::Mutex`, each pair in one criterion group so the
//! report shows both from the same run: uncontended pairs, many keys, two threads, handoff
//! latency, and the cost of `with`.

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use runa_lock::{Error, Locker, LockerOptions, Registry};
use tokio::runtime::Runtime;

fn locker() -> Locker {
    let registry = Registry::new();
    registry.register_locker("bench", LockerOptions::new().ttl(Duration::from_secs(600)));
    registry.of("bench").unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls a future that the memory driver completes at once (no waiting involved).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an uncontended memory operation waited"),
    }
}

fn uncontended_pair(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("uncontended_pair");
    let mutex = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio_mutex_lock_unlock", |b| {
        b.to_async(&rt).iter(|| async {
            let mut guard = mutex.lock().await;
            *guard += 1;
        })
    });
    let jobs = locker();
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| async {
            let lease = jobs.try_lock("key").await.unwrap().unwrap();
            lease.release().await.unwrap();
        })
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
            let mutex = &mutexes[i];
            async move {
                *mutex.lock().await += 1;
            }
        })
    });
    let jobs = locker();
    let names: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut j = 0;
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| {
            j = (j + 1) % KEYS;
            let (jobs, name) = (&jobs, &names[j]);
            async move {
                let lease = jobs.try_lock(name).await.unwrap().unwrap();
                lease.release().await.unwrap();
            }
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
                let names: Arc<Vec<Vec<String>>> = Arc::new(
                    (0..threads)
                        .map(|t| (0..256).map(|k| format!("t{t}-key-{k}")).collect())
                        .collect(),
                );
                b.iter_custom(|iters| {
                    let per_thread = ops * iters / threads as u64;
                    let started = Instant::now();
                    std::thread::scope(|scope| {
                        for t in 0..threads {
                            let (jobs, names) = (jobs.clone(), Arc::clone(&names));
                            scope.spawn(move || {
                                let keys = &names[t];
                                for n in 0..per_thread as usize {
                                    let lease = ready(jobs.try_lock(&keys[n % keys.len()]))
                                        .unwrap()
                                        .unwrap();
                                    ready(lease.release()).unwrap();
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
    group.bench_function("tokio_mutex", |b| {
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let guard = Arc::clone(&mutex).lock_owned().await;
                    let waiter = tokio::spawn({
                        let mutex = Arc::clone(&mutex);
                        async move {
                            let _guard = mutex.lock().await;
                            Instant::now()
                        }
                    });
                    tokio::task::yield_now().await;
                    let released = Instant::now();
                    drop(guard);
                    total += waiter.await.unwrap() - released;
                }
                total
            })
        })
    });
    group.bench_function("memory_driver", |b| {
        let jobs = locker();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let lease = jobs.wait("handoff").await.unwrap();
                    let waiter = tokio::spawn({
                        let jobs = jobs.clone();
                        async move {
                            let lease = jobs.wait("handoff").await.unwrap();
                            let woke = Instant::now();
                            drop(lease);
                            woke
                        }
                    });
                    tokio::task::yield_now().await;
                    let released = Instant::now();
                    lease.release().await.unwrap();
                    total += waiter.await.unwrap() - released;
                }
                total
            })
        })
    });
    group.finish();
}

fn with_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("with_overhead");
    let jobs = locker();
    group.bench_function("try_lock_release", |b| {
        b.to_async(&rt).iter(|| async {
            let lease = jobs.try_lock("key").await.unwrap().unwrap();
            lease.release().await.unwrap();
        })
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
