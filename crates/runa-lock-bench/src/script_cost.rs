//! `scriptcost`: where S1's gap to the floor lies. One round trip each, interleaved op by op
//! against the same server: the floor's `SET NX PX`, an `EVALSHA` of an empty script, an
//! `EVALSHA` of a script that runs only that `SET NX PX` (no fencing number: a measurement, not
//! a lock), and the driver's acquire (`try_lock`: the acquire script, with its fencing number).
//! Each is on a key of its own, set back to free after every sample, outside the timing.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use runa_lock::LockerOptions;

use crate::redis_scenarios::{connection, locker};
use crate::report::{Metric, Scenario, ms};
use crate::stats::Latencies;

static EMPTY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new("return 1"));

static SET_ONLY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')")
});

/// What `call` returns, and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let begun = Instant::now();
    let value = call.await;
    (value, begun.elapsed())
}

async fn delete(connection: &mut ConnectionManager, key: &str) {
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(connection)
        .await
        .expect("DEL");
}

pub async fn script_cost(client: &redis::Client, rounds: usize) -> Scenario {
    let mut connection = connection(client).await;
    let locker = locker(client, LockerOptions::new());
    let (mut set, mut empty, mut set_only, mut acquire) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 50 {
        let ((), set_took) = timed(async {
            let reply: Option<String> = redis::cmd("SET")
                .arg("cost:set")
                .arg("token")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut connection)
                .await
                .expect("SET NX PX");
            assert!(reply.is_some(), "cost:set was busy");
        })
        .await;
        delete(&mut connection, "cost:set").await;
        let ((), empty_took) = timed(async {
            let _: i64 = EMPTY
                .prepare_invoke()
                .invoke_async(&mut connection)
                .await
                .expect("the empty script");
        })
        .await;
        let ((), set_only_took) = timed(async {
            let reply: Option<String> = SET_ONLY
                .key("cost:script")
                .arg("token")
                .arg(30_000)
                .invoke_async(&mut connection)
                .await
                .expect("the SET-only script");
            assert!(reply.is_some(), "cost:script was busy");
        })
        .await;
        delete(&mut connection, "cost:script").await;
        let (lease, acquire_took) = timed(locker.try_lock("cost")).await;
        let lease = lease.expect("try_lock").expect("the key is free");
        lease.release().await.expect("release");
        // The first 50 rounds warm up: connections open, scripts loaded.
        if round >= 50 {
            set.push(set_took);
            empty.push(empty_took);
            set_only.push(set_only_took);
            acquire.push(acquire_took);
        }
    }
    let p50 = |samples: Vec<Duration>| Latencies::new(samples).p50();
    let set = ms(p50(set));
    Scenario {
        name: "scriptcost",
        what: "one round trip each, op by op: SET NX PX, EVALSHA of an empty script, of a script doing only SET NX PX, and the driver's acquire",
        metrics: vec![
            Metric::plain("set_nx_px_p50", set, "ms"),
            Metric::millis("empty_script_p50", p50(empty)).against("SET NX PX p50", set),
            Metric::millis("set_only_script_p50", p50(set_only)).against("SET NX PX p50", set),
            Metric::millis("acquire_p50", p50(acquire)).against("SET NX PX p50", set),
        ],
    }
}
