//! `Registry`: named drivers and lockers, and how config is applied to them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures_util::future::join_all;

use crate::held::{HeldLease, HeldSet};
use crate::options::Settings;
use crate::{
    CACHE, Config, DEFAULT_DRIVER, DEFAULT_NAME, Driver, Error, LOCAL, Locker, LockerOptions,
    MemoryDriver, QUEUE, SCHEDULE,
};

/// Named drivers and lockers. Start here.
///
/// [`Registry::new`] comes with the `memory` driver and five lockers on it: `default` and
/// `local` (no prefix, so they share keys), `schedule`, `queue` and `cache` (prefixes
/// `schedule:`, `queue:`, `cache:`).
///
/// Settings are layered, lowest first: built-in defaults, [`LockerOptions`] given in code,
/// config applied with [`configure`](Registry::configure) (so operators tune without a
/// rebuild), per-call [`LockOptions`](crate::LockOptions).
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{Config, LockerOptions, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let registry = Registry::new();
/// registry.register_locker("jobs", LockerOptions::new().prefix("jobs:").ttl(Duration::from_secs(30)));
/// registry.configure(&Config::from_toml("[lock.lockers.jobs]\nttl = \"45s\"")?)?;
///
/// let jobs = registry.of("jobs")?;
/// assert_eq!(jobs.info().ttl, Duration::from_secs(45));
/// jobs.with("daily-report", |_lease| async { Ok::<_, runa_lock::Error>(()) }).await?;
/// # Ok(())
/// # }
/// ```
pub struct Registry {
    state: RwLock<State>,
    /// Lockers `of` made, handed out again until the registry changes: every change goes
    /// through [`write`](Registry::write), which empties it. Locked after `state`, never
    /// before.
    made: RwLock<BTreeMap<String, Locker>>,
    /// The leases taken through this registry's lockers and not yet released or dropped.
    held: Arc<HeldSet>,
}

#[derive(Default)]
struct State {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
    /// Options given in code.
    lockers: BTreeMap<String, LockerOptions>,
    /// Options applied from config, over those given in code.
    configured: BTreeMap<String, LockerOptions>,
}

/// A locker's resolved settings, as reported by [`Registry::info`].
///
/// ```
/// let infos = runa_lock::Registry::new().info();
/// let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
/// assert_eq!(names, ["cache", "default", "local", "queue", "schedule"]);
/// assert!(infos.iter().all(|i| i.driver == "memory"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LockerInfo {
    /// The locker's name.
    pub name: String,
    /// The name of the driver it uses.
    pub driver: String,
    /// The prefix put before its keys.
    pub prefix: String,
    /// The lease ttl.
    pub ttl: Duration,
    /// How long `wait` and `with` wait.
    pub wait: Duration,
    /// The polling interval where the driver cannot notify.
    pub retry_interval: Duration,
    /// Whether `with` renews the lease while its closure runs.
    pub auto_renew: bool,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
}

impl LockerInfo {
    pub(crate) fn new(name: &str, settings: &Settings) -> Self {
        LockerInfo {
            name: name.to_owned(),
            driver: settings.driver.clone(),
            prefix: settings.prefix.clone(),
            ttl: settings.ttl,
            wait: settings.wait,
            retry_interval: settings.retry_interval,
            auto_renew: settings.auto_renew,
            meta: settings.meta.clone(),
        }
    }
}

impl Registry {
    /// A registry with the `memory` driver and the five built-in lockers.
    ///
    /// ```
    /// let registry = runa_lock::Registry::new();
    /// assert_eq!(registry.of(runa_lock::SCHEDULE)?.info().prefix, "schedule:");
    /// assert_eq!(registry.of(runa_lock::LOCAL)?.info().prefix, "");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn new() -> Self {
        let registry = Registry {
            state: RwLock::new(State::default()),
            made: RwLock::new(BTreeMap::new()),
            held: Arc::new(HeldSet::new()),
        };
        registry.register_driver(DEFAULT_DRIVER, MemoryDriver::new());
        registry.register_locker(DEFAULT_NAME, LockerOptions::new());
        registry.register_locker(LOCAL, LockerOptions::new());
        for name in [SCHEDULE, QUEUE, CACHE] {
            registry.register_locker(name, LockerOptions::new().prefix(format!("{name}:")));
        }
        registry
    }

    /// Registers `driver` as `name`, replacing any driver of that name. Lockers already
    /// handed out keep the driver they were created with.
    ///
    /// ```
    /// use runa_lock::{LockerOptions, MemoryDriver, Registry};
    ///
    /// let registry = Registry::new();
    /// registry.register_driver("isolated", MemoryDriver::new());
    /// registry.register_locker("sandbox", LockerOptions::new().driver("isolated"));
    /// assert_eq!(registry.of("sandbox")?.info().driver, "isolated");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn register_driver(&self, name: impl Into<String>, driver: impl Driver) {
        self.write()
            .drivers
            .insert(name.into(), Arc::new(driver) as Arc<dyn Driver>);
    }

    /// Registers a locker, replacing any of that name. `""` names the `default` locker.
    /// Config applied earlier with [`configure`](Registry::configure) still applies over it.
    ///
    /// ```
    /// use runa_lock::{LockerOptions, Registry};
    ///
    /// let registry = Registry::new();
    /// registry.register_locker("orders", LockerOptions::new().prefix("orders:"));
    /// assert_eq!(registry.of("orders")?.info().prefix, "orders:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn register_locker(&self, name: impl Into<String>, options: LockerOptions) {
        let name: String = name.into();
        let name = canonical(&name).to_owned();
        self.write().lockers.insert(name, options);
    }

    /// Applies the `[lock.lockers.<name>]` sections of `config` to registered lockers, key by
    /// key over earlier config and over the options given in code.
    ///
    /// - Everything is checked first; on any error nothing changes.
    /// - A section's `driver` must name a registered driver.
    /// - Sections `""` and `default` name the same locker, so only one of them may be given.
    /// - A section for a locker that is not registered is skipped with a `tracing` warning:
    ///   config tunes lockers, it does not create them.
    ///
    /// ```
    /// use runa_lock::{Config, Error, Registry};
    ///
    /// let registry = Registry::new();
    /// let bad = Config::from_toml(r#"
    ///     [lock.lockers.default]
    ///     wait = "1s"
    ///     [lock.lockers.queue]
    ///     driver = "redis"
    /// "#)?;
    /// let err = registry.configure(&bad).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"lock.lockers.queue.driver: unknown driver; registered drivers: memory (got "redis")"#
    /// );
    /// assert_eq!(registry.of("default")?.info().wait, runa_lock::DEFAULT_WAIT, "nothing applied");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn configure(&self, config: &Config) -> Result<(), Error> {
        let mut state = self.write();
        let mut updates = Vec::new();
        let mut sections: BTreeMap<&str, &str> = BTreeMap::new();
        for (raw, section) in &config.lockers {
            let name = canonical(raw);
            if let Some(first) = sections.insert(name, raw) {
                return Err(Error::invalid_config(
                    crate::config::join("lock.lockers", raw),
                    format!(
                        "names the same locker as section {} (the empty name means \"{DEFAULT_NAME}\"); give its keys in one section",
                        crate::config::join("lock.lockers", first)
                    ),
                    Some(format!("{raw:?}")),
                ));
            }
            let Some(code) = state.lockers.get(name) else {
                tracing::warn!(
                    locker = %name,
                    "config section [lock.lockers.{name}] names a locker that is not registered; it is ignored"
                );
                continue;
            };
            let mut configured = state.configured.get(name).cloned().unwrap_or_default();
            configured.overlay(section);
            let mut effective = code.clone();
            effective.overlay(&configured);
            let settings = Settings::resolve(&effective);
            let section_path = crate::config::join("lock.lockers", name);
            let path = |field: &str| crate::config::join(&section_path, field);
            if !state.drivers.contains_key(&settings.driver) {
                return Err(Error::invalid_config(
                    path("driver"),
                    format!(
                        "unknown driver; registered drivers: {}",
                        names(&state.drivers)
                    ),
                    Some(format!("{:?}", settings.driver)),
                ));
            }
            settings.validate(path)?;
            updates.push((name.to_owned(), configured));
        }
        state.configured.extend(updates);
        Ok(())
    }

    /// The locker `name` (`""` means `"default"`), with its settings resolved now. Until the
    /// registry changes, every call hands out the same locker (a cheap clone).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownLocker`] when no locker has that name, [`Error::UnknownDriver`] when
    /// its driver is not registered, [`Error::InvalidConfig`] when its options in code are
    /// invalid (such as a zero ttl).
    ///
    /// ```
    /// use runa_lock::{Error, Registry};
    ///
    /// let registry = Registry::new();
    /// assert_eq!(registry.of("")?.name(), "default");
    /// let err = registry.of("jbos").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"unknown locker "jbos"; registered lockers: cache, default, local, queue, schedule"#
    /// );
    /// # Ok::<(), Error>(())
    /// ```
    pub fn of(&self, name: &str) -> Result<Locker, Error> {
        let name = canonical(name);
        // Under the read lock, so that no change lands between making a locker and keeping it.
        let state = self.read();
        let made = self.made.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(locker) = made.get(name) {
            return Ok(locker.clone());
        }
        drop(made);
        let name = name.to_owned();
        let settings = state.settings(&name).ok_or_else(|| Error::UnknownLocker {
            name: name.clone(),
            known: state.lockers.keys().cloned().collect(),
        })?;
        let driver = state
            .drivers
            .get(&settings.driver)
            .ok_or_else(|| Error::UnknownDriver {
                locker: name.clone(),
                driver: settings.driver.clone(),
                known: state.drivers.keys().cloned().collect(),
            })?;
        let held = Arc::clone(&self.held);
        let locker = Locker::new(name.clone(), Arc::clone(driver), settings, held)?;
        self.made
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, locker.clone());
        drop(state);
        Ok(locker)
    }

    /// Like [`of`](Registry::of), but panics with the same message on error. For set-up code
    /// where a missing locker is a bug.
    ///
    /// ```
    /// let jobs = runa_lock::Registry::new().must_of("default");
    /// assert_eq!(jobs.name(), "default");
    /// ```
    ///
    /// # Panics
    ///
    /// When [`of`](Registry::of) returns an error.
    pub fn must_of(&self, name: &str) -> Locker {
        self.of(name).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Every locker's resolved settings, sorted by name.
    ///
    /// ```
    /// let infos = runa_lock::Registry::new().info();
    /// assert_eq!(infos.len(), 5);
    /// ```
    pub fn info(&self) -> Vec<LockerInfo> {
        let state = self.read();
        state
            .lockers
            .keys()
            .filter_map(|name| Some(LockerInfo::new(name, &state.settings(name)?)))
            .collect()
    }

    /// The leases taken through this registry's lockers that are still held: not released,
    /// dropped or lost (as far as this process knows). Sorted by locker, then key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// use runa_lock::Registry;
    ///
    /// let registry = Registry::new();
    /// let jobs = registry.of("schedule")?.wait("nightly").await?;
    /// let order = registry.of("queue")?.wait("order-7").await?;
    /// let held: Vec<_> = registry.held().into_iter().map(|h| (h.locker, h.key)).collect();
    /// assert_eq!(held, [("queue".into(), "order-7".into()), ("schedule".into(), "nightly".into())]);
    ///
    /// order.release().await?;
    /// drop(jobs);
    /// assert!(registry.held().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn held(&self) -> Vec<HeldLease> {
        let mut held: Vec<HeldLease> = self
            .held
            .snapshot()
            .iter()
            .filter_map(|lease| lease.held())
            .collect();
        held.sort_unstable();
        held
    }

    /// Shuts the registry down, in two steps:
    ///
    /// 1. Releases every lease still held through it (see [`held`](Registry::held)), so that
    ///    other processes waiting for those keys get them now rather than when the ttl ends.
    ///    Their handles say they are lost: a [`with`](Locker::with) closure still running sees
    ///    [`lost()`](crate::LeaseHandle::lost) resolve, and its `with` returns
    ///    [`Error::LeaseLost`] with [`LossReason::Closed`](crate::LossReason::Closed).
    /// 2. Closes every driver (see [`Driver::close`]).
    ///
    /// Every release and every driver is seen to, even when one fails; the first error is
    /// returned (a lease whose release failed ends by its ttl).
    ///
    /// A lease acquired while `close` runs (a `wait` that ends meanwhile) may miss step 1;
    /// its driver is closing, so it ends by its ttl. Stop taking locks before closing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let registry = runa_lock::Registry::new();
    /// let lease = registry.of("default")?.wait("report").await?;
    /// let handle = lease.handle();
    /// registry.close().await?;
    /// assert!(handle.is_lost(), "closing released it");
    /// assert!(registry.held().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) -> Result<(), Error> {
        let leases = self.held.snapshot();
        let releases = leases.iter().map(|lease| lease.close());
        let mut first = None;
        // Each failed release was logged (at `warn`) by its lease.
        for error in join_all(releases).await.into_iter().filter_map(Result::err) {
            first.get_or_insert(error);
        }
        let drivers: Vec<(String, Arc<dyn Driver>)> = self
            .read()
            .drivers
            .iter()
            .map(|(name, driver)| (name.clone(), Arc::clone(driver)))
            .collect();
        for (name, driver) in drivers {
            if let Err(error) = driver.close().await {
                tracing::warn!(driver = %name, %error, "closing lock driver failed");
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, to change it: lockers made from the old state are no longer handed out.
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        self.made
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        state
    }
}

impl State {
    fn settings(&self, name: &str) -> Option<Settings> {
        let mut options = self.lockers.get(name)?.clone();
        if let Some(configured) = self.configured.get(name) {
            options.overlay(configured);
        }
        Some(Settings::resolve(&options))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("Registry")
            .field("drivers", &state.drivers)
            .field("lockers", &state.lockers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A locker's name as the registry keeps it: `""` means `"default"`.
fn canonical(name: &str) -> &str {
    if name.is_empty() { DEFAULT_NAME } else { name }
}

fn names<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "(none)".to_owned();
    }
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_hands_out_one_locker_until_a_change() {
        let registry = Registry::new();
        let a = registry.of("").unwrap();
        let b = registry.of("default").unwrap();
        assert!(
            a.is_same(&b),
            "the default locker under both spellings is one locker"
        );
        registry.register_locker("other", LockerOptions::new());
        let c = registry.of("default").unwrap();
        assert!(
            !c.is_same(&a),
            "a change to the registry makes lockers anew"
        );
        assert!(registry.of("default").unwrap().is_same(&c));
    }
}
