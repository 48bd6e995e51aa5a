//! The gateway's bound on uploads handled at once, with a short queue in
//! front of it.
//!
//! S3 clients upload a large object as parts, several at once (the aws cli
//! 10, rclone 16 by default); a bound that refused every upload past it at
//! once sent them into their retry back-off, and an S3 PUT through the aws
//! cli took twice a native PUT. An upload past the bound now waits for a
//! slot, as long as at most [`WAITING_PER_SLOT`] times as many wait as run
//! and for at most the configured wait; past either it gets 503 with
//! Retry-After as before. A waiting upload holds its connection and
//! nothing else: its body is not read until it has a slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Uploads that may wait per slot: at the default 8 slots, 40 uploads at
/// once are served without a refusal (four aws clients, or two rclones
/// at their default 16 parts).
pub const WAITING_PER_SLOT: usize = 4;

/// How long an upload waits for a slot by default.
pub const DEFAULT_UPLOAD_WAIT: Duration = Duration::from_secs(10);

/// Slots for uploads in flight, and the queue of uploads waiting for one.
pub struct UploadSlots {
    permits: Arc<Semaphore>,
    capacity: usize,
    waiting: AtomicUsize,
    wait: Duration,
}

/// An upload's slot, given back when dropped.
pub type UploadSlot = OwnedSemaphorePermit;

impl UploadSlots {
    /// `capacity` slots (at least one); an upload finding none free waits
    /// up to `wait` (zero: none waits), beside at most
    /// [`WAITING_PER_SLOT`] times `capacity` others.
    pub fn new(capacity: usize, wait: Duration) -> Self {
        let capacity = capacity.max(1);
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            waiting: AtomicUsize::new(0),
            wait,
        }
    }

    /// A slot: at once when one is free, after waiting in the queue
    /// otherwise; `None` when the queue is full or the wait ran out.
    pub async fn acquire(&self) -> Option<UploadSlot> {
        if let Ok(slot) = self.permits.clone().try_acquire_owned() {
            return Some(slot);
        }
        if self.wait.is_zero() {
            return None;
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.waiting);
        if queued >= self.queue_len() {
            return None;
        }
        tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// How many slots there are.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots held by uploads now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// How many uploads may wait for a slot.
    pub fn queue_len(&self) -> usize {
        self.capacity * WAITING_PER_SLOT
    }

    /// Uploads waiting for a slot now.
    pub fn waiting(&self) -> usize {
        // Counted before an arrival finds the queue full and leaves.
        self.waiting.load(Ordering::Acquire).min(self.queue_len())
    }
}

/// Leaves the queue however the wait ends (a slot, the time, or the
/// client gone and the request dropped).
struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn uploads_up_to_the_bound_get_a_slot_at_once() {
        let slots = UploadSlots::new(2, Duration::from_secs(10));
        let _a = slots.acquire().await.unwrap();
        let _b = slots.acquire().await.unwrap();
        assert_eq!(slots.in_use(), 2);
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_past_the_bound_waits_and_takes_the_first_slot_given_back() {
        let slots = Arc::new(UploadSlots::new(1, Duration::from_secs(10)));
        let held = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(slots.waiting(), 1);
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the slot");
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_upload_is_turned_away_when_its_wait_runs_out() {
        let slots = UploadSlots::new(1, Duration::from_secs(10));
        let _held = slots.acquire().await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(slots.acquire().await.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(slots.waiting(), 0, "it left the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_number_of_uploads_wait_and_the_rest_are_turned_away_at_once() {
        let slots = Arc::new(UploadSlots::new(2, Duration::from_secs(10)));
        let _held = [
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
        ];
        let waiters: Vec<_> = (0..2 * WAITING_PER_SLOT)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.acquire().await.is_some() })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(slots.waiting(), 2 * WAITING_PER_SLOT);
        let start = tokio::time::Instant::now();
        assert!(slots.acquire().await.is_none());
        assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
        assert_eq!(slots.waiting(), 2 * WAITING_PER_SLOT);
        for waiter in waiters {
            assert!(!waiter.await.unwrap(), "nothing was given back");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_wait_the_bound_refuses_at_once() {
        let slots = UploadSlots::new(1, Duration::ZERO);
        let _held = slots.acquire().await.unwrap();
        assert!(slots.acquire().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_whose_client_leaves_frees_its_place_in_the_queue() {
        let slots = Arc::new(UploadSlots::new(1, Duration::from_secs(10)));
        let _held = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(slots.waiting(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(slots.waiting(), 0);
    }
}
