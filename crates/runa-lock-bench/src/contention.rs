//! The loop of the contention scenarios (S3, rslock-S3, PG-S3): workers, each in a task of
//! its own, take turns at one lock until they have taken it a given number of times in all,
//! as fast as each gets it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one run did: each worker's acquisitions, and how long the run took.
pub struct Run {
    pub per_worker: Vec<u64>,
    pub took: Duration,
}

/// Runs `workers` until they have had `acquisitions` turns in all: each task calls `turn`
/// with its worker (which the turn hands back) for as long as turns are left.
///
/// # Panics
///
/// When a worker's task panics (a failed lock or counter command).
pub async fn run<W, F, Fut>(workers: Vec<W>, acquisitions: u64, turn: F) -> Run
where
    W: Send + 'static,
    F: Fn(W) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = W> + Send,
{
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let (claimed, turn) = (Arc::clone(&claimed), turn.clone());
            tokio::spawn(async move {
                let mut mine = 0u64;
                while claimed.fetch_add(1, Ordering::SeqCst) < acquisitions {
                    worker = turn(worker).await;
                    mine += 1;
                }
                mine
            })
        })
        .collect();
    let mut per_worker = Vec::with_capacity(tasks.len());
    for task in tasks {
        per_worker.push(task.await.expect("a worker"));
    }
    Run {
        per_worker,
        took: started.elapsed(),
    }
}

impl Run {
    pub fn total(&self) -> u64 {
        self.per_worker.iter().sum()
    }

    /// Acquisitions per second.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.took.as_secs_f64()
    }

    /// Increments lost: acquisitions the counter, at `counted`, does not show.
    pub fn lost(&self, counted: u64) -> u64 {
        self.total().saturating_sub(counted)
    }

    /// The mean, fewest and most acquisitions per worker.
    pub fn spread(&self) -> (f64, f64, f64) {
        let mean = self.total() as f64 / self.per_worker.len().max(1) as f64;
        let min = self.per_worker.iter().min().copied().unwrap_or(0) as f64;
        let max = self.per_worker.iter().max().copied().unwrap_or(0) as f64;
        (mean, min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_workers_take_exactly_the_turns_asked_for() {
        let counter = Arc::new(tokio::sync::Mutex::new(0u64));
        let workers = vec![Arc::clone(&counter); 4];
        let run = run(workers, 1000, |counter| async move {
            *counter.lock().await += 1;
            counter
        })
        .await;
        assert_eq!(run.total(), 1000);
        assert_eq!(*counter.lock().await, 1000);
        assert_eq!(run.lost(1000), 0);
        assert_eq!(run.lost(990), 10);
        let (mean, min, max) = run.spread();
        assert_eq!(mean, 250.0);
        assert!(min <= mean && max >= mean);
    }
}
