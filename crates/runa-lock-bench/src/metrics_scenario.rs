//! `memmetrics`: what recording metrics costs the memory driver's uncontended pair.

use std::time::Instant;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use runa_lock_bench::keyed::KeyedMutex;
use runa_lock_bench::ops;

use crate::report::{Metric, Scenario};
use crate::stats::median;

/// Uncontended `try_lock` + `release` on a locker made with no recorder against the same
/// pair on a locker made, and run, inside `metrics::with_local_recorder` with a
/// [`DebuggingRecorder`] (atomic counters and gauges, histograms as atomic buckets of every
/// value, the storage the Prometheus exporter uses too), and against the keyed mutex as in
/// `mempair`. The three alternate in blocks of 10,000 pairs; between blocks, outside the
/// timing, the recorder is drained (as an exporter's upkeep would) and the acquisitions it
/// counted are added up. The medians of the blocks' nanoseconds per pair.
pub fn pairs(total: u32) -> Scenario {
    const BLOCK: u32 = 10_000;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let plain = ops::memory_locker();
    let recorded = metrics::with_local_recorder(&recorder, ops::memory_locker);
    let keyed = KeyedMutex::new();
    let (mut without, mut with, mut by_key) = (Vec::new(), Vec::new(), Vec::new());
    let mut counted = 0;
    let per_pair = |started: Instant| started.elapsed().as_secs_f64() * 1e9 / f64::from(BLOCK);
    let blocks = total.div_ceil(BLOCK);
    for _ in 0..blocks {
        let started = Instant::now();
        for _ in 0..BLOCK {
            ops::ready(ops::keyed_pair(&keyed, "pair"));
        }
        by_key.push(per_pair(started));
        let started = Instant::now();
        for _ in 0..BLOCK {
            ops::runa_pair_now(&plain, "pair");
        }
        without.push(per_pair(started));
        let started = Instant::now();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..BLOCK {
                ops::runa_pair_now(&recorded, "pair");
            }
        });
        with.push(per_pair(started));
        counted += acquisitions(snapshotter.snapshot());
    }
    let (without, with, by_key) = (median(without), median(with), median(by_key));
    let pairs = f64::from(blocks * BLOCK);
    Scenario {
        name: "memmetrics",
        what: "memory driver: uncontended try_lock + release on a locker made inside metrics::with_local_recorder (DebuggingRecorder) vs one made with no recorder, and vs the keyed mutex",
        metrics: vec![
            Metric::plain("pair_ns_with_recorder", with, "ns").against("no recorder ns", without),
            Metric::plain("pair_ns", without, "ns").against("keyed mutex ns", by_key),
            // A recorder that saw nothing would make the recorded pair look cheap.
            Metric::plain("acquisitions_recorded", counted as f64, "")
                .against("pairs run", pairs)
                .target("= pairs run", counted as f64 == pairs),
        ],
    }
}

/// The `runa_lock_acquire_total` counts in a snapshot (which resets them), all outcomes.
fn acquisitions(snapshot: metrics_util::debugging::Snapshot) -> u64 {
    snapshot
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) if key.key().name() == "runa_lock_acquire_total" => Some(n),
            _ => None,
        })
        .sum()
}
