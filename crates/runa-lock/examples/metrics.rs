//! Metrics: a small service on the memory driver that takes locks for a few seconds while a
//! Prometheus exporter serves its metrics, then prints what a scrape of `/metrics` returns.
//!
//! Run it with `cargo run -p runa-lock --example metrics` (options: `--seconds N`, default 3;
//! `--port P`, default 9898, where `0` serves nothing and renders the text in-process).
//! While it runs, `curl -s 127.0.0.1:9898/metrics` shows the same series.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use runa_lock::{Error, LockOptions, LockerOptions, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep};

/// Bucket bounds, in seconds, for the `runa_lock_*_seconds` histograms. Without buckets the
/// exporter renders histograms as summaries, with no `_bucket` series to aggregate.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (seconds, port) = args()?;
    // Logs to stderr (the lost lease's `warn`), so that stdout is the scraped text alone.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();

    // The recorder first: a locker takes its metric handles from the recorder installed when
    // it is made, and one made before records nothing.
    let exporter = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("runa_lock_".into()), BUCKETS)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let handle = if port == 0 {
        Some(exporter.install_recorder()?)
    } else {
        exporter.with_http_listener(addr).install()?; // serves on the current runtime
        None
    };

    let registry = Registry::new();
    registry.register_locker(
        "orders",
        LockerOptions::new()
            .prefix("orders:")
            .wait(Duration::from_secs(1)),
    );
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let mut tasks = tokio::task::JoinSet::new();
    // Four workers contend on three orders with `with`.
    for worker in 0..4u64 {
        let orders = registry.of("orders")?;
        tasks.spawn(async move {
            for n in 0.. {
                if Instant::now() >= deadline {
                    break;
                }
                let key = format!("order-{}", (n + worker) % 3);
                let work = Duration::from_millis(5 + (n * 7 + worker * 3) % 20);
                orders
                    .with(&key, |_lease| async move {
                        sleep(work).await;
                        Ok::<_, Error>(())
                    })
                    .await?;
            }
            Ok::<_, Error>(())
        });
    }
    // An impatient caller: `wait` gives up after 20 ms, so it times out now and then.
    let impatient = registry
        .of("orders")?
        .with_options(LockOptions::new().wait(Duration::from_millis(20)));
    tasks.spawn(async move {
        while Instant::now() < deadline {
            match impatient.wait("order-0").await {
                Ok(lease) => lease.release().await?,
                Err(Error::Timeout { .. }) => {}
                Err(error) => return Err(error),
            }
            sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    });
    // Two schedulers run the same cleanup with `try_lock`; one of them often finds it busy.
    for _ in 0..2 {
        let schedule = registry.of("schedule")?;
        tasks.spawn(async move {
            while Instant::now() < deadline {
                if let Some(lease) = schedule.try_lock("cleanup").await? {
                    sleep(Duration::from_millis(30)).await;
                    lease.release().await?;
                }
                sleep(Duration::from_millis(25)).await;
            }
            Ok(())
        });
    }
    // One job outlives its 200 ms lease (no auto-renewal): the lease is lost by expiry.
    let jobs = registry.of("jobs")?;
    tasks.spawn(async move {
        let outcome = jobs
            .with("nightly-export", |_lease| async {
                sleep(Duration::from_millis(300)).await;
                Ok::<_, Error>(())
            })
            .await;
        match outcome {
            Err(Error::LeaseLost { .. }) => Ok(()),
            other => other,
        }
    });
    while let Some(result) = tasks.join_next().await {
        result??;
    }

    let text = match handle {
        Some(handle) => handle.render(),
        None => scrape(addr).await?,
    };
    print!("{text}");
    Ok(())
}

/// `--seconds N` and `--port P`.
fn args() -> Result<(u64, u16), Box<dyn std::error::Error>> {
    let (mut seconds, mut port) = (3, 9898);
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "use --seconds N, --port P";
    while let Some(arg) = args.next() {
        if arg != "--seconds" && arg != "--port" {
            return Err(format!("unknown argument {arg:?}; {USAGE}").into());
        }
        let value = args.next().ok_or(format!("{arg} needs a value; {USAGE}"))?;
        let bad = |e: std::num::ParseIntError| format!("{arg} {value:?}: {e}");
        match arg.as_str() {
            "--seconds" => seconds = value.parse().map_err(bad)?,
            _ => port = value.parse().map_err(bad)?,
        }
    }
    Ok((seconds, port))
}

/// The body of `GET /metrics`, as Prometheus would scrape it (HTTP/1.0: the server closes the
/// connection after the response).
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!(
            "unexpected response: {response}"
        ))),
    }
}
