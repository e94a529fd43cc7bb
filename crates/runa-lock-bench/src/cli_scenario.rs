//! `cli`: the `runa-lock` command end to end (`runa-lock run --url URL k -- true`: start,
//! connect, acquire, spawn, wait, release, exit) against spawning `true` alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Metric, Scenario, ms};
use crate::stats::Latencies;

/// The `runa-lock` binary: `given`, or the one built next to this bench binary (`cargo build
/// --release -p runa-lock-cli` puts it there).
pub fn binary(given: Option<&str>) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(PathBuf::from(path));
    }
    let own = std::env::current_exe().ok()?;
    let sibling = own.parent()?.join("runa-lock");
    sibling.exists().then_some(sibling)
}

/// `runs` of each, interleaved so that drift in the machine's speed hits both alike.
pub fn run(binary: &Path, url: &str, runs: usize) -> Result<Scenario, String> {
    let mut locked = Command::new(binary);
    locked.args(["run", "--url", url, "bench-cli", "--", "true"]);
    let mut plain = Command::new("true");
    // Warm up: the binary's pages in the cache, Redis's script cache loaded.
    for _ in 0..3 {
        time(&mut locked)?;
        time(&mut plain)?;
    }
    let (mut with_lock, mut alone) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        with_lock.push(time(&mut locked)?);
        alone.push(time(&mut plain)?);
    }
    let (with_lock, alone) = (Latencies::new(with_lock), Latencies::new(alone));
    let overhead = with_lock.p50().saturating_sub(alone.p50());
    Ok(Scenario {
        name: "cli",
        what: "runa-lock run --url URL k -- true, end to end, against true alone",
        metrics: vec![
            Metric::millis("run p50", with_lock.p50())
                .against("true alone p50 ms", ms(alone.p50())),
            Metric::millis("run p99", with_lock.p99())
                .against("true alone p99 ms", ms(alone.p99())),
            Metric::millis("added p50", overhead),
        ],
    })
}

/// One run of `command`, start to exit; it must succeed.
fn time(command: &mut Command) -> Result<Duration, String> {
    let start = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|error| format!("cannot run {:?}: {error}", command.get_program()))?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(format!("{:?} exited with {status}", command.get_program()));
    }
    Ok(elapsed)
}
