//! A driver wrapper for tests: a real `MemoryDriver` underneath, with faults injected into
//! renew and release (failures, refusals, answers that come late), and call counts.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runa_lock::{Attempt, BoxFuture, Driver, Error, Grant, LockKey, MemoryDriver, WaitPlan};

/// What `renew` does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RenewMode {
    /// Pass through to the memory driver.
    Normal,
    /// Never answer.
    Hang,
    /// Fail with a backend error this many times, then pass through.
    FailTimes(usize),
    /// Answer `false` (refused).
    Refuse,
    /// Fail with an error that is not a backend error (final, by the `Driver` contract).
    Final,
    /// Renew at once, but answer only after `delay` for ttls of `from_ttl` and longer, like
    /// a reply over a slow network.
    AnswerLate { delay: Duration, from_ttl: Duration },
}

#[derive(Debug)]
pub struct Faulty {
    pub inner: MemoryDriver,
    pub renew_mode: Mutex<RenewMode>,
    pub fail_release: Mutex<bool>,
    /// Release at once, but answer only after this long.
    pub release_answer_delay: Mutex<Duration>,
    pub fail_close: bool,
    pub acquires: AtomicUsize,
    pub waits: AtomicUsize,
    pub renews: AtomicUsize,
    pub releases: AtomicUsize,
    pub closes: AtomicUsize,
}

impl Faulty {
    pub fn new() -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: MemoryDriver::new(),
            renew_mode: Mutex::new(RenewMode::Normal),
            fail_release: Mutex::new(false),
            release_answer_delay: Mutex::new(Duration::ZERO),
            fail_close: false,
            acquires: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            renews: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            closes: AtomicUsize::new(0),
        })
    }

    pub fn failing_close() -> Arc<Faulty> {
        let mut driver = Arc::into_inner(Faulty::new()).unwrap();
        driver.fail_close = true;
        Arc::new(driver)
    }

    pub fn set_renew(&self, mode: RenewMode) {
        *self.renew_mode.lock().unwrap() = mode;
    }

    pub fn renews(&self) -> usize {
        self.renews.load(Ordering::SeqCst)
    }

    /// Calls seen so far: acquires, waits, renews, releases.
    pub fn calls(&self) -> [usize; 4] {
        [&self.acquires, &self.waits, &self.renews, &self.releases]
            .map(|n| n.load(Ordering::SeqCst))
    }
}

fn refused() -> Error {
    Error::backend("faulty", std::io::Error::other("injected failure"))
}

impl Driver for Faulty {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(key, token, ttl)
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.renews.fetch_add(1, Ordering::SeqCst);
        let mode = {
            let mut mode = self.renew_mode.lock().unwrap();
            let now = *mode;
            if let RenewMode::FailTimes(n) = now {
                *mode = if n <= 1 {
                    RenewMode::Normal
                } else {
                    RenewMode::FailTimes(n - 1)
                };
            }
            now
        };
        match mode {
            RenewMode::Normal => self.inner.renew(key, token, ttl),
            RenewMode::Hang => Box::pin(std::future::pending()),
            RenewMode::FailTimes(_) => Box::pin(async { Err(refused()) }),
            RenewMode::Refuse => Box::pin(async { Ok(false) }),
            RenewMode::Final => Box::pin(async {
                Err(Error::invalid_config("renew", "injected final error", None))
            }),
            RenewMode::AnswerLate { delay, from_ttl } => Box::pin(async move {
                let renewed = self.inner.renew(key, token, ttl).await;
                if ttl >= from_ttl {
                    tokio::time::sleep(delay).await;
                }
                renewed
            }),
        }
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        if *self.fail_release.lock().unwrap() {
            return Box::pin(async { Err(refused()) });
        }
        let delay = *self.release_answer_delay.lock().unwrap();
        Box::pin(async move {
            let released = self.inner.release(key, token).await;
            tokio::time::sleep(delay).await;
            released
        })
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        self.inner.wait(key, token, ttl, plan)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail_close;
        Box::pin(async move { if fail { Err(refused()) } else { Ok(()) } })
    }
}
