//! The quickstart: the three ways to take a lock, on the built-in memory driver.
//!
//! Run it with `cargo run -p runa-lock --example quickstart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runa_lock::{Config, Error, LockOptions, LockerOptions, Registry};
use tokio::time::{Instant, sleep};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A registry comes with the memory driver and five lockers (default, local, schedule,
    // queue, cache). Register your own, then let config tune it.
    let registry = Arc::new(Registry::new());
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .prefix("jobs:")
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(5)),
    );
    registry.configure(&Config::from_toml(
        r#"
        [lock.lockers.jobs]
        ttl = "45s"        # config beats code: operators tune without a rebuild
        auto_renew = true  # renew while `with` runs
        "#,
    )?)?;
    for info in registry.info() {
        println!(
            "locker {:<9} driver={} prefix={:?} ttl={:?} wait={:?} auto_renew={}",
            info.name, info.driver, info.prefix, info.ttl, info.wait, info.auto_renew
        );
    }

    job_that_must_not_run_twice(&registry).await?;
    skippable_task(&registry).await?;
    waiting_task(&registry).await?;
    contention(&registry).await?;
    Ok(())
}

/// `with`: two instances fire the same scheduled job at once; they never overlap.
async fn job_that_must_not_run_twice(registry: &Registry) -> Result<(), Error> {
    println!("\n== with: a job that must not run twice at once");
    let jobs = registry.of("jobs")?;
    let started = Instant::now();
    let run = |instance: &'static str| {
        let jobs = jobs.clone();
        async move {
            jobs.with("daily-report", |lease| async move {
                println!(
                    "  {instance}: running daily-report (fencing {}) at {:?}",
                    lease.fencing(),
                    started.elapsed()
                );
                sleep(Duration::from_millis(200)).await;
                println!("  {instance}: done at {:?}", started.elapsed());
                Ok::<_, Error>(())
            })
            .await
        }
    };
    let (a, b) = tokio::join!(run("instance-a"), run("instance-b"));
    a?;
    b?;
    Ok(())
}

/// `try_lock`: a cleanup that is fine to skip when another run has it.
async fn skippable_task(registry: &Registry) -> Result<(), Error> {
    println!("\n== try_lock: a task that can be skipped");
    let schedule = registry.of("schedule")?;
    let first = schedule.try_lock("cleanup-temp-files").await?;
    match &first {
        Some(lease) => println!(
            "  run 1: got the lock (fencing {}), cleaning up",
            lease.fencing()
        ),
        None => println!("  run 1: busy, skipping"),
    }
    match schedule.try_lock("cleanup-temp-files").await? {
        Some(_) => println!("  run 2: got the lock"),
        None => println!("  run 2: busy, skipping this round"),
    }
    if let Some(lease) = first {
        lease.release().await?;
    }
    Ok(())
}

/// `wait`: a migration that must run, waiting for the current holder to finish.
async fn waiting_task(registry: &Registry) -> Result<(), Error> {
    println!("\n== wait: a task that must run but can wait");
    let default = registry.of("default")?;
    let holder = default.wait("migrate-orders").await?;
    println!("  node-1: migrating (fencing {})", holder.fencing());
    let waiter = {
        let default = default.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let lease = default.wait("migrate-orders").await?;
            println!(
                "  node-2: got the lock after {:?}, woken by the release (fencing {})",
                started.elapsed(),
                lease.fencing()
            );
            lease.release().await
        })
    };
    sleep(Duration::from_millis(150)).await;
    println!("  node-1: done, releasing");
    holder.release().await?;
    waiter.await.expect("waiter task")?;

    let impatient = default.with_options(LockOptions::new().wait(Duration::from_millis(50)));
    let _busy = default.wait("migrate-orders").await?;
    match impatient.wait("migrate-orders").await {
        Err(error @ Error::Timeout { .. }) => println!("  node-3: {error}"),
        other => println!("  node-3: unexpected {other:?}"),
    }
    Ok(())
}

/// Several tasks on one key, each doing a read-pause-write on a shared counter.
async fn contention(registry: &Registry) -> Result<(), Error> {
    println!("\n== contention: 5 tasks, one key, a non-atomic counter");
    let queue = registry.of("queue")?;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 1..=5 {
        let (queue, counter) = (queue.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            queue
                .with("order-1001", |lease| async move {
                    let read = counter.load(Ordering::SeqCst);
                    sleep(Duration::from_millis(10)).await; // without the lock, updates would be lost here
                    counter.store(read + 1, Ordering::SeqCst);
                    println!(
                        "  worker {worker}: counter {read} -> {} (fencing {})",
                        read + 1,
                        lease.fencing()
                    );
                    Ok::<_, Error>(())
                })
                .await
        }));
    }
    for task in tasks {
        task.await.expect("worker task")?;
    }
    println!(
        "  final counter: {} (5 expected)",
        counter.load(Ordering::SeqCst)
    );
    Ok(())
}
