//! The `memory` scenario: a million distinct keys with a 10 ms ttl, never released, while
//! 10,000 other keys stay held. Live heap bytes (allocated minus freed since just before the
//! driver was made, counted by the binary's global allocator, see [`crate::heap`]) at the
//! start, at the peak and after expiry and `sweep()`; the resident size (`VmRSS`) beside
//! them, for information only: what the process allocator keeps after a burst is its own
//! business, not the lock's.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use runa_lock::{Attempt, Driver, LockKey, MemoryDriver};

use crate::heap::Meter;
use crate::report::{Metric, Scenario};

/// Resident memory in bytes, from `VmRSS` in `/proc/self/status` (given in kB, whatever the
/// page size); 0 where there is no such file.
fn resident() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib * 1024.0)
}

/// A token of the form a locker hands out (32 hex digits).
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const HELD: usize = 10_000;

pub async fn run(keys: usize) -> Scenario {
    let meter = Meter::start();
    let driver = MemoryDriver::new();
    let held_ttl = Duration::from_secs(3600);
    let short = Duration::from_millis(10);
    let held_token = "held-token-0123456789abcdef01234";
    let mut name = String::new();
    // The held keys are part of the start: they are live, not growth.
    for i in 0..HELD {
        name.clear();
        let _ = write!(name, "held-{i}");
        driver
            .acquire(LockKey::new("", &name), held_token, held_ttl)
            .await
            .expect("acquire");
    }
    let (heap_start, rss_start) = (meter.live(), resident());
    let (mut heap_peak, mut rss_peak) = (heap_start, rss_start);
    let started = Instant::now();
    for i in 0..keys {
        name.clear();
        let _ = write!(name, "job-{i}");
        let attempt = driver
            .acquire(LockKey::new("", &name), TOKEN, short)
            .await
            .expect("acquire");
        assert!(matches!(attempt, Attempt::Acquired { .. }));
        if i % 1_000 == 0 {
            heap_peak = heap_peak.max(meter.live());
        }
        if i % 50_000 == 0 {
            rss_peak = rss_peak.max(resident());
        }
    }
    let rate = keys as f64 / started.elapsed().as_secs_f64();
    heap_peak = heap_peak.max(meter.live());
    rss_peak = rss_peak.max(resident());
    tokio::time::sleep(short * 5).await;
    driver.sweep();
    let left = driver.key_count();
    let (heap_after, rss_after) = (meter.live(), resident());
    let mut held_ok = true;
    for i in 0..HELD {
        let name = format!("held-{i}");
        held_ok &= driver
            .renew(LockKey::new("", &name), held_token, held_ttl)
            .await
            .unwrap_or(false);
    }
    drop(meter);
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    Scenario {
        name: "memory",
        what: "1M distinct keys, 10 ms ttl, never released; 10k keys held throughout; live heap bytes counted from the driver's creation, RSS for information",
        metrics: vec![
            Metric::plain("heap_start_mib", mib(heap_start), "MiB"),
            Metric::plain("heap_peak_mib", mib(heap_peak), "MiB").against("start", mib(heap_start)),
            Metric::plain("heap_after_expiry_mib", mib(heap_after), "MiB")
                .against("start", mib(heap_start))
                .target("<= 1.10x start", heap_after <= heap_start * 1.10),
            Metric::plain("rss_start_mib", mib(rss_start), "MiB"),
            Metric::plain("rss_peak_mib", mib(rss_peak), "MiB").against("start", mib(rss_start)),
            Metric::plain("rss_after_expiry_mib", mib(rss_after), "MiB")
                .against("start", mib(rss_start)),
            Metric::plain("keys_left", left as f64, "").target("= 10000 held", left == HELD),
            Metric::plain("held_keys_still_held", f64::from(u8::from(held_ok)), "")
                .target("= 1", held_ok),
            Metric::plain("acquires_per_sec", rate, "1/s"),
        ],
    }
}
