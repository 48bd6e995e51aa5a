//! Whether the node's disk stalls. A stalled disk (a dead device, a
//! hung network volume) leaves the process alive: it accepts connections
//! and answers its probes, while every request that touches the store
//! waits forever. The node keeps the start of each store operation its
//! requests run, and calls itself not ready once one has been running for
//! [`STALLED_AFTER`]: Kubernetes and the operator then count it
//! unavailable, and a gateway that found it silent keeps passing it over
//! (its probe is /readyz), instead of unmarking it because the process
//! still answers. It is ready again once no operation is that old.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one store operation may run before the disk counts as
/// stalled: far past what a healthy disk takes for the largest pair's
/// write and fsync under load, and short enough that a gateway's probe
/// stops unmarking the node soon.
pub const STALLED_AFTER: Duration = Duration::from_secs(15);

/// The store operations running now, by when they started.
#[derive(Debug, Default)]
pub struct StallWatch {
    running: Mutex<BTreeMap<u64, Instant>>,
    next: AtomicU64,
}

/// One store operation running: it counts until dropped.
#[derive(Debug)]
pub struct RunningOperation {
    watch: Arc<StallWatch>,
    id: u64,
}

impl StallWatch {
    /// Counts a store operation from now until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> RunningOperation {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Instant::now());
        RunningOperation {
            watch: self.clone(),
            id,
        }
    }

    /// How long the oldest running operation has run, if any runs.
    pub fn oldest(&self) -> Option<Duration> {
        self.lock().values().min().map(Instant::elapsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.running.lock().expect("not poisoned")
    }
}

impl Drop for RunningOperation {
    fn drop(&mut self) {
        self.watch.lock().remove(&self.id);
    }
}

/// Why the node is not ready, when its oldest running store operation
/// (`oldest`) has run for `after` or longer (pure).
pub fn stall_reason(oldest: Option<Duration>, after: Duration) -> Option<String> {
    let age = oldest.filter(|age| *age >= after)?;
    Some(format!(
        "not ready: a store operation has been running for {:.0} s (the disk stalls)",
        age.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_not_ready_once_a_store_operation_runs_past_the_stall_limit() {
        let after = Duration::from_secs(15);
        assert_eq!(stall_reason(None, after), None);
        assert_eq!(stall_reason(Some(Duration::from_secs(14)), after), None);
        let reason = stall_reason(Some(Duration::from_secs(20)), after).unwrap();
        assert!(
            reason.contains("20 s") && reason.contains("stalls"),
            "{reason}"
        );
    }

    #[test]
    fn only_operations_still_running_count_and_the_oldest_is_reported() {
        let watch = Arc::new(StallWatch::default());
        assert_eq!(watch.oldest(), None);
        let first = watch.start();
        std::thread::sleep(Duration::from_millis(20));
        let second = watch.start();
        let with_first = watch.oldest().unwrap();
        assert!(with_first >= Duration::from_millis(20));
        drop(first);
        assert!(watch.oldest().unwrap() < with_first);
        drop(second);
        assert_eq!(watch.oldest(), None);
    }
}
