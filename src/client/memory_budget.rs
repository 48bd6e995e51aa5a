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
//! the rows a read fetches reserve their bytes, and each row carries its
//! share ([`held_by`]) to every reader holding it until the last of them
//! drops it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::codec::EncodingConfig;

/// The budget's unit: reservations are rounded up to whole pages (a row of
/// a segment at n = 1000 is about 200 KiB, and each carries its own).
const UNIT: u64 = 4 << 10;

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
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryReservation {
    /// Bytes reserved (whole units).
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Takes `bytes` (rounded up to whole units) out of this reservation
    /// into one of its own; `None` when it holds fewer.
    pub fn split_off(&mut self, bytes: u64) -> Option<MemoryReservation> {
        let units = bytes.div_ceil(UNIT);
        match &mut self.permit {
            None => Some(MemoryReservation::default()),
            Some(permit) if (permit.num_permits() as u64) < units => None,
            Some(permit) if permit.num_permits() as u64 == units => Some(MemoryReservation {
                permit: self.permit.take(),
            }),
            Some(permit) => Some(MemoryReservation {
                permit: Some(permit.split(units as usize)?),
            }),
        }
    }
}

/// `bytes` carrying `share`: every slice and clone of the result keeps
/// it, and the reservation is given back once every holder of the share
/// is dropped.
pub fn held_by(bytes: Bytes, share: Arc<MemoryReservation>) -> Bytes {
    Bytes::from_owner(Held {
        bytes,
        _share: share,
    })
}

/// Bytes and the share of a reservation they carry.
struct Held {
    bytes: Bytes,
    _share: Arc<MemoryReservation>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one unit, 4 KiB).
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

    /// Bytes no reservation can take right now: those reserved, and those
    /// the waiter first in line has collected toward its reservation
    /// (given back if it stops waiting). What a new request waits for.
    pub fn in_use(&self) -> u64 {
        (u64::from(self.capacity_units) - self.units.available_permits() as u64) * UNIT
    }

    /// Waits until `bytes` (rounded up to whole units; a request above the whole
    /// budget takes the whole budget) are free, and reserves them.
    pub async fn reserve(&self, bytes: u64) -> MemoryReservation {
        let permit = self
            .units
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        MemoryReservation {
            permit: Some(permit),
        }
    }

    /// `bytes` rounded up to what a reservation of them takes (whole units).
    pub fn rounded(bytes: u64) -> u64 {
        bytes.div_ceil(UNIT) * UNIT
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
    async fn a_reservation_splits_into_shares_that_each_give_back_their_own_bytes() {
        let budget = MemoryBudget::new(1 << 20);
        let mut whole = budget.reserve(100 << 10).await;
        assert_eq!(whole.bytes(), 100 << 10);
        let share = whole.split_off(10_000).unwrap();
        assert_eq!(share.bytes(), 12 << 10, "rounded up to whole pages");
        assert_eq!(whole.bytes(), 88 << 10);
        assert!(whole.split_off(89 << 10).is_none(), "more than it holds");
        let rest = whole.split_off(88 << 10).unwrap();
        assert_eq!(whole.bytes(), 0);
        drop(share);
        assert_eq!(budget.in_use(), 88 << 10);
        drop(rest);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn rows_carrying_a_share_give_it_back_when_the_last_of_them_is_dropped() {
        let budget = MemoryBudget::new(1 << 20);
        let share = Arc::new(budget.reserve(8 << 10).await);
        let row = held_by(Bytes::from(vec![7u8; 100]), share);
        let (head, tail) = (row.slice(..10), row.slice(90..));
        drop(row);
        drop(head);
        assert_eq!(budget.in_use(), 8 << 10, "a slice is still held");
        assert_eq!(&tail[..], &[7u8; 10]);
        drop(tail);
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
