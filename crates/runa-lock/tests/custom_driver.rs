//! A driver written outside the crate, as a third party would: only the three required
//! methods, over a plain map, relying on the default polling `wait`. It passes the shared
//! driver suite and plugs into a registry like the built-in one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runa_lock::{Attempt, BoxFuture, Driver, Error, LockKey, LockerOptions, Registry};
use tokio::time::Instant;

#[derive(Debug, Default)]
struct MapDriver {
    state: Mutex<MapState>,
}

#[derive(Debug, Default)]
struct MapState {
    fencing: u64,
    held: HashMap<(String, String), (String, Instant)>,
}

fn slot(key: LockKey<'_>) -> (String, String) {
    (key.prefix.to_owned(), key.key.to_owned())
}

impl Driver for MapDriver {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            if let Some((_, expires)) = state.held.get(&slot(key)).filter(|(_, e)| *e > now) {
                return Ok(Attempt::Busy {
                    retry_after: Some(*expires - now),
                });
            }
            state.fencing += 1;
            state.held.insert(slot(key), (token.to_owned(), now + ttl));
            Ok(Attempt::Acquired {
                fencing: state.fencing,
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            match state.held.get_mut(&slot(key)) {
                Some((held, expires)) if held == token && *expires > now => {
                    *expires = (*expires).max(now + ttl);
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            let mine = matches!(state.held.get(&slot(key)), Some((held, expires)) if held == token && *expires > now);
            if mine {
                state.held.remove(&slot(key));
            }
            Ok(mine)
        })
    }
}

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    check(Arc::new(MapDriver::default())).await;
}

// A third-party driver passes the shared suite.
runa_lock::suite_tests!(run, polling);

/// A locker on a fresh `MapDriver` registered as a third party would.
fn map_locker(options: LockerOptions) -> runa_lock::Locker {
    let registry = Registry::new();
    registry.register_driver("map", MapDriver::default());
    registry.register_locker("jobs", options.driver("map"));
    registry.of("jobs").unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_default_wait_polls_at_the_retry_interval() {
    let jobs = map_locker(
        LockerOptions::new()
            .ttl(Duration::from_secs(60))
            .wait(Duration::from_secs(10))
            .retry_interval(Duration::from_millis(250)),
    );
    let lease = jobs.wait("k").await.unwrap();
    let started = Instant::now();
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.wait("k").await.map(|_| Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lease.release().await.unwrap();
    let acquired = waiter.await.unwrap().unwrap();
    // Polls at 0, 250, ..., 1000, 1250 ms: the first poll after the release at 1100 ms.
    assert_eq!(acquired - started, Duration::from_millis(1250));
}

#[tokio::test(start_paused = true)]
async fn the_default_wait_polls_sooner_when_the_holder_expires_sooner() {
    let jobs = map_locker(
        LockerOptions::new()
            .wait(Duration::from_secs(10))
            .retry_interval(Duration::from_secs(5)),
    );
    let short = jobs.with_options(runa_lock::LockOptions::new().ttl(Duration::from_millis(700)));
    let _lease = short.wait("k").await.unwrap();
    let started = Instant::now();
    let next = jobs.wait("k").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    next.release().await.unwrap();
}
