//! The seed's "connect to an application" example: a `runa::App` with the lock provider,
//! configured from `examples/config/lock.toml`.
//!
//! Run it with `cargo run -p runa-lock --example app`.

use std::time::Duration;

use runa_lock::{Error, LockerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut app =
        runa::App::new().config_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config"));
    app.install(
        runa_lock::provider().register_locker(
            "jobs",
            LockerOptions::new()
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(5)),
        ),
    )?;
    app.freeze().await?;

    let locker = runa_lock::default().must_of("jobs");
    let info = locker.info();
    println!(
        "jobs: driver={} prefix={:?} ttl={:?} wait={:?} retry_interval={:?} auto_renew={} meta={:?}",
        info.driver,
        info.prefix,
        info.ttl,
        info.wait,
        info.retry_interval,
        info.auto_renew,
        info.meta
    );

    locker
        .with("daily-report", |lease| async move {
            println!(
                "daily-report runs once at a time (fencing {})",
                lease.fencing()
            );
            Ok::<_, Error>(())
        })
        .await?;

    app.shutdown().await?;
    Ok(())
}
