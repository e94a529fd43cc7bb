//! The metrics of API.md, seen through `metrics-util`'s debugging recorder: names, labels
//! (never the key) and how each value moves.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use runa_lock::{Error, LockerOptions, Registry};

/// Every value a recorder has seen, summed over snapshots (a snapshot resets counters and
/// gauges to 0, and gauges move by increments, so sums are the values).
struct Seen {
    snapshotter: Snapshotter,
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Vec<f64>>,
}

impl Seen {
    fn new(recorder: &DebuggingRecorder) -> Seen {
        Seen {
            snapshotter: recorder.snapshotter(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
        }
    }

    /// Takes a snapshot in. Series are named `name{label=value,...}`, labels sorted.
    fn update(&mut self) -> &mut Self {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            assert!(!name.contains("key="), "a key became a label: {name}");
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(name).or_default() += n
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    *self.gauges.entry(name).or_default() += v.into_inner()
                }
                (MetricKind::Histogram, DebugValue::Histogram(values)) => self
                    .histograms
                    .entry(name)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
                other => panic!("{other:?}"),
            }
        }
        self
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn gauge(&self, name: &str) -> f64 {
        self.gauges.get(name).copied().unwrap_or(0.0)
    }

    fn samples(&self, name: &str) -> &[f64] {
        self.histograms.get(name).map_or(&[], Vec::as_slice)
    }
}

const LABELS: &str = "driver=memory,locker=jobs";

fn acquire(outcome: &str) -> String {
    format!("runa_lock_acquire_total{{{LABELS},outcome={outcome}}}")
}

fn release(outcome: &str) -> String {
    format!("runa_lock_release_total{{{LABELS},outcome={outcome}}}")
}

fn series(name: &str) -> String {
    format!("{name}{{{LABELS}}}")
}

/// A registry whose `jobs` locker (memory driver) registered its metrics with `recorder`.
fn jobs(recorder: &DebuggingRecorder, options: LockerOptions) -> runa_lock::Locker {
    let registry = Registry::new();
    registry.register_locker("jobs", options);
    metrics::with_local_recorder(recorder, || registry.of("jobs").unwrap())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn try_lock_and_release_count_acquired_busy_released_and_the_held_gauge() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let jobs = jobs(&recorder, LockerOptions::new());
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    assert!(jobs.try_lock("k").await.unwrap().is_none());
    seen.update();
    assert_eq!(seen.counter(&acquire("acquired")), 1);
    assert_eq!(seen.counter(&acquire("busy")), 1);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 1.0);
    tokio::time::advance(Duration::from_secs(2)).await;
    lease.release().await.unwrap();
    seen.update();
    assert_eq!(seen.counter(&release("released")), 1);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0, "back to 0");
    assert_eq!(seen.samples(&series("runa_lock_held_seconds")), [2.0]);
    assert_eq!(seen.counter(&series("runa_lock_lost_total")), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn wait_counts_timeouts_and_handovers_with_the_time_waited() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let jobs = jobs(&recorder, LockerOptions::new().wait(Duration::from_secs(1)));
    let lease = jobs.wait("k").await.unwrap();
    assert!(matches!(jobs.wait("k").await, Err(Error::Timeout { .. })));
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.wait("k").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    lease.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    seen.update();
    assert_eq!(seen.counter(&acquire("acquired")), 2);
    assert_eq!(seen.counter(&acquire("timeout")), 1);
    // The first wait got the key at once; the handed-over one after 300 ms.
    assert_eq!(seen.samples(&series("runa_lock_wait_seconds")), [0.0, 0.3]);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 1.0);
    next.release().await.unwrap();
    seen.update();
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_expired_lease_is_lost_once_and_its_release_is_not_held() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let jobs = jobs(&recorder, LockerOptions::new().ttl(Duration::from_secs(1)));
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(
        lease.renew(None).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
    seen.update();
    assert_eq!(
        seen.counter(&series("runa_lock_lost_total")),
        1,
        "counted once"
    );
    assert_eq!(seen.counter(&release("not_held")), 1);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0);
    assert_eq!(seen.samples(&series("runa_lock_held_seconds")).len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_lost_under_with_is_counted_and_dropped_leases_leave_the_gauge() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let jobs = jobs(&recorder, LockerOptions::new().ttl(Duration::from_secs(1)));
    let outcome = jobs
        .with("k", |lease| async move {
            lease.lost().await;
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(outcome, Err(Error::LeaseLost { .. })),
        "{outcome:?}"
    );
    drop(jobs.try_lock("other").await.unwrap().unwrap());
    seen.update();
    assert_eq!(seen.counter(&series("runa_lock_lost_total")), 1);
    assert_eq!(seen.counter(&acquire("acquired")), 2);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0);
    assert_eq!(seen.samples(&series("runa_lock_held_seconds")).len(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_release_dropped_mid_flight_is_no_loss() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    // Releases reach the store at once; their answers take a second.
    let driver = support::Faulty::new();
    *driver.release_answer_delay.lock().unwrap() = Duration::from_secs(1);
    let registry = Registry::new();
    registry.register_driver("memory", driver);
    registry.register_locker("jobs", LockerOptions::new().driver("memory"));
    let jobs = metrics::with_local_recorder(&recorder, || registry.of("jobs").unwrap());
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(10), lease.release()).await;
    assert!(cancelled.is_err(), "the release was still on its way");
    seen.update();
    assert_eq!(
        seen.counter(&series("runa_lock_lost_total")),
        0,
        "a release is no loss"
    );
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0, "counted once");
    assert_eq!(seen.samples(&series("runa_lock_held_seconds")).len(), 1);
}

/// Handles are taken when the locker is made: one made with no recorder records nothing,
/// even where a recorder is current later, and works as usual.
#[tokio::test(flavor = "current_thread")]
async fn a_locker_made_without_a_recorder_records_nothing() {
    let jobs = Registry::new().of("default").unwrap();
    let recorder = DebuggingRecorder::new();
    let _current = metrics::set_default_local_recorder(&recorder);
    jobs.with("k", |_| async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    assert!(jobs.try_lock("k").await.unwrap().is_some());
    let seen = recorder.snapshotter().snapshot().into_vec();
    assert!(seen.is_empty(), "{} series recorded", seen.len());
}

#[test]
fn a_locker_that_of_refuses_leaves_no_series() {
    let recorder = DebuggingRecorder::new();
    let registry = Registry::new();
    registry.register_locker("bad", LockerOptions::new().ttl(Duration::ZERO));
    let outcome = metrics::with_local_recorder(&recorder, || registry.of("bad"));
    assert!(
        matches!(outcome, Err(Error::InvalidConfig { .. })),
        "{outcome:?}"
    );
    let seen = recorder.snapshotter().snapshot().into_vec();
    assert!(seen.is_empty(), "{} series left behind", seen.len());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_taken_away_by_close_is_lost_and_released_once() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new());
    let jobs = metrics::with_local_recorder(&recorder, || registry.of("jobs").unwrap());
    let lease = jobs.wait("k").await.unwrap();
    seen.update();
    assert_eq!(seen.gauge(&series("runa_lock_held")), 1.0);
    tokio::time::advance(Duration::from_secs(3)).await;
    registry.close().await.unwrap();
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
    seen.update();
    assert_eq!(seen.counter(&series("runa_lock_lost_total")), 1);
    assert_eq!(seen.counter(&release("released")), 1, "by the close");
    assert_eq!(
        seen.counter(&release("not_held")),
        0,
        "the lease's own release sent nothing"
    );
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0);
    assert_eq!(seen.samples(&series("runa_lock_held_seconds")), [3.0]);
}

/// A renewal the driver answers with a final error (neither `Backend` nor an answer) ends
/// the lease: lost once, and out of the gauge once released.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_final_renewal_error_loses_the_lease_once() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(&recorder);
    let driver = support::Faulty::new();
    driver.set_renew(support::RenewMode::Final);
    let registry = Registry::new();
    registry.register_driver("memory", driver);
    registry.register_locker("jobs", LockerOptions::new().driver("memory"));
    let jobs = metrics::with_local_recorder(&recorder, || registry.of("jobs").unwrap());
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let err = lease.renew(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(
        lease.handle().is_lost(),
        "a renewal that cannot succeed loses the lease"
    );
    seen.update();
    assert_eq!(seen.counter(&series("runa_lock_lost_total")), 1);
    assert_eq!(seen.gauge(&series("runa_lock_held")), 0.0);
    drop(lease);
    seen.update();
    assert_eq!(
        seen.counter(&series("runa_lock_lost_total")),
        1,
        "counted once"
    );
    assert_eq!(
        seen.gauge(&series("runa_lock_held")),
        0.0,
        "left the gauge once"
    );
}
