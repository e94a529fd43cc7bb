//! Spans and events: each operation runs in a `debug` span (target `runa_lock`) with the
//! locker, the key and, once known, the fencing number; a lost lease is a `warn` event.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runa_lock::{Error, LockerOptions, Registry};
use tracing_subscriber::fmt::format::FmtSpan;

/// A `fmt` subscriber's output, kept for the test to read.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything at `debug` and above, written to the returned output while the guard lives;
/// `spans` says which span events are written too.
fn capture(spans: FmtSpan) -> (Output, tracing::subscriber::DefaultGuard) {
    let output = Output::default();
    let writer = output.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_span_events(spans)
        .with_writer(move || writer.clone())
        .finish();
    (output, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn operations_run_in_spans_and_a_lost_lease_is_a_warning() {
    let (output, _guard) = capture(FmtSpan::CLOSE);

    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(1)));
    let jobs = registry.of("jobs").unwrap();
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    lease.renew(None).await.unwrap();
    let fencing = lease.fencing();
    lease.release().await.unwrap();
    let outcome = jobs
        .with("w", |lease| async move {
            lease.lost().await;
            Ok::<_, Error>(())
        })
        .await;
    assert!(matches!(outcome, Err(Error::LeaseLost { .. })));

    let text = output.text();
    // Each span's close is logged with its fields.
    for span in ["try_lock", "renew", "release"] {
        let expected = format!(r#"{span}{{locker="jobs" key="k" fencing={fencing}}}: "#);
        assert!(text.contains(&expected), "no {expected} in\n{text}");
    }
    // An event inside each span shows the span with its fields; the warning names the
    // locker, the key and the reason, inside `with` and its span.
    assert!(
        text.contains(r#"WARN with{locker="jobs" key="w" fencing="#),
        "{text}"
    );
    assert!(text.contains("lease lost"), "{text}");
    assert!(text.contains("it expired before it was renewed"), "{text}");
    assert!(text.contains(r#"locker="jobs""#), "{text}");
    assert!(fencing > 0);
}

/// `with`'s own renewals run in a `renew` span like the caller's, and each is a `debug`
/// event that carries the fencing number (what a `-v` log shows).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn auto_renewals_are_debug_events_in_renew_spans_with_the_fencing_number() {
    let (output, _guard) = capture(FmtSpan::NONE);

    let registry = Registry::new();
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .ttl(Duration::from_secs(3))
            .auto_renew(true),
    );
    let jobs = registry.of("jobs").unwrap();
    let fencing = jobs
        .with("w", |lease| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Error>(lease.fencing())
        })
        .await
        .unwrap();

    let text = output.text();
    let fields = format!(r#"locker="jobs" key="w" fencing={fencing}"#);
    assert!(
        text.contains(&format!(
            "with{{{fields}}}:renew{{{fields}}}: runa_lock: renewed"
        )),
        "an auto-renewal in its own span inside with's:\n{text}"
    );
}
