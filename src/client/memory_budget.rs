//! A bound on the memory the uploads of one process hold at once, and one
//! on what its reads hold.
//!
//! Every segment an upload holds in memory (being received, encoded or
//! shipped) first reserves its footprint from one budget shared
//! by all uploads of the gateway; an upload that finds the budget spent
//! waits (its client's body is not read meanwhile, so TCP flow control
//! slows the client down) instead of growing the process. A reservation
//! is released when its segment has been shipped.
//! Shipping never waits for the budget, so uploads cannot deadlock on it.
//!
//! Reads work the same way with a budget of their own (`client::range`):
//! the rows of a segment a read fetches reserve their bytes until the
//! last of them has left for the client.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::codec::EncodingConfig;

/// The budget's unit: reservations are rounded up to whole MiB.
const UNIT: u64 = 1 << 20;

/// Default bytes of segments the uploads of a gateway may hold at once.
pub const DEFAULT_UPLOAD_MEMORY: u64 = 2 << 30;

/// Default bytes of rows the reads of a gateway may hold at once.
pub const DEFAULT_READ_MEMORY: u64 = 1 << 30;

/// Bytes of segments in memory that the uploads (or the reads) of one
/// process may hold at once; cloning shares the budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    capacity_units: u32,
}

/// Memory reserved from a [`MemoryBudget`], given back when dropped. The
/// unbounded reservation (no budget) holds nothing.
#[derive(Debug, Default)]
pub struct MemoryReservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one MiB).
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            units: Arc::new(Semaphore::new(units as usize)),
            capacity_units: units,
        }
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        u64::from(self.capacity_units) * UNIT
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> u64 {
        (u64::from(self.capacity_units) - self.units.available_permits() as u64) * UNIT
    }

    /// Waits until `bytes` (rounded up to MiB; a request above the whole
    /// budget takes the whole budget) are free, and reserves them.
    pub async fn reserve(&self, bytes: u64) -> MemoryReservation {
        let permit = self
            .units
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        MemoryReservation {
            _permit: Some(permit),
        }
    }

    /// As [`Self::reserve`], but waits at most `wait`; `None` when the
    /// bytes did not come free in time (nothing is reserved then).
    pub async fn reserve_within(&self, bytes: u64, wait: Duration) -> Option<MemoryReservation> {
        tokio::time::timeout(wait, self.reserve(bytes)).await.ok()
    }

    fn units_for(&self, bytes: u64) -> u32 {
        bytes
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.capacity_units)) as u32
    }
}

/// Reserves from `budget` when there is one; no budget reserves nothing.
pub async fn reserve(budget: Option<&MemoryBudget>, bytes: u64) -> MemoryReservation {
    match budget {
        Some(budget) => budget.reserve(bytes).await,
        None => MemoryReservation::default(),
    }
}

/// What an upload holds in memory for one segment of `len` bytes while it
/// is encoded and shipped: all n sliver pairs (the systematic ones share
/// the segment's bytes), the leaf hashes of one batch of rows (the
/// encoder holds up to 64 rows' at once), and the encoder's working
/// buffers, about the segment's size again (Reed-Solomon's copies of the
/// lines it extends; `bench codec --encode-only` peaks at 322 MiB for a
/// 64 MiB segment at n = 7, whose slivers are 239 MiB). Counting them for
/// every segment, not only the two being encoded, also covers what the
/// allocator keeps for reuse: the gateway then stays within its memory
/// at rest plus the budget (`bench fleet --clients 8`).
pub fn segment_footprint(config: &EncodingConfig, len: u64) -> u64 {
    let leaves = (config.n().min(64) * config.n() * crate::codec::config::HASH_LEN) as u64;
    config.segment_layout(len).encoded_len() + leaves + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segments_footprint_is_its_encoding_a_batch_of_leaf_hashes_and_the_encoders_buffers() {
        let config = EncodingConfig::new(7).unwrap();
        let footprint = segment_footprint(&config, 64 << 20);
        let expansion = footprint as f64 / (64 << 20) as f64;
        assert!((4.7..4.8).contains(&expansion), "n = 7: {expansion}");
        let config = EncodingConfig::new(1000).unwrap();
        let footprint = segment_footprint(&config, 64 << 20);
        let expansion = footprint as f64 / (64 << 20) as f64;
        assert!((5.5..5.6).contains(&expansion), "n = 1000: {expansion}");
    }

    #[tokio::test]
    async fn reservations_wait_until_enough_is_given_back() {
        let budget = MemoryBudget::new(10 << 20);
        let first = budget.reserve(6 << 20).await;
        assert_eq!(budget.in_use(), 6 << 20);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(5 << 20).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "5 MiB more do not fit beside 6 of 10"
        );
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(budget.in_use(), 5 << 20);
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_request_above_the_whole_budget_takes_the_whole_budget_instead_of_waiting_forever() {
        let budget = MemoryBudget::new(4 << 20);
        let all = budget.reserve(1 << 30).await;
        assert_eq!(budget.in_use(), budget.capacity());
        drop(all);
        let none = reserve(None, 1 << 40).await;
        drop(none);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_bounded_wait_that_runs_out_reserves_nothing_and_one_with_room_reserves() {
        let budget = MemoryBudget::new(4 << 20);
        let held = budget.reserve(3 << 20).await;
        let late = budget
            .reserve_within(2 << 20, std::time::Duration::from_millis(30))
            .await;
        assert!(late.is_none(), "2 MiB do not fit beside 3 of 4");
        assert_eq!(
            budget.in_use(),
            3 << 20,
            "the wait that ran out holds nothing"
        );
        drop(held);
        let room = budget
            .reserve_within(2 << 20, std::time::Duration::from_millis(30))
            .await;
        assert!(room.is_some());
        assert_eq!(budget.in_use(), 2 << 20);
    }
}
